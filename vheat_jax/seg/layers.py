"""mmcv's building blocks in Flax: ``BatchNorm2d`` with torch semantics and ``ConvModule``.

BatchNorm in training normalises with the statistics of the whole batch it is
given. Under ``jit`` with the batch sharded over a device mesh, ``jnp.mean`` over
the batch axis is a global reduction (XLA inserts the all-reduce), so this is
mmseg's ``SyncBN`` over the global batch; ``tests/test_seg_batchnorm.py`` checks it
on 8 devices. Running statistics follow torch exactly: momentum 0.1 and the
*unbiased* batch variance for ``running_var`` (Flax's own BatchNorm uses the
biased one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # torch's convention: running = (1 - m) * running + m * batch


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm2d`` on NHWC: params ``scale``/``bias``, ``batch_stats`` ``mean``/``var``."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        xf = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axes)
            var = jnp.mean(jnp.square(xf - mean), axes)  # two-pass: no E[x^2] - E[x]^2 cancellation
            if not self.is_initializing():
                count = x.size // channels
                running_mean.value = (1 - BN_MOMENTUM) * running_mean.value + BN_MOMENTUM * mean
                running_var.value = ((1 - BN_MOMENTUM) * running_var.value
                                     + BN_MOMENTUM * var * (count / max(count - 1, 1)))
        else:
            mean, var = running_mean.value, running_var.value
        multiplier = scale * jax.lax.rsqrt(var + BN_EPS)
        return ((xf - mean) * multiplier + bias).astype(self.dtype)


class ConvModule(nn.Module):
    """mmcv ``ConvModule``: Conv2d without bias (stride 1, 'same' padding) -> BatchNorm -> ReLU.

    Weights are initialised as mmcv does: Kaiming normal (fan_out, ReLU gain), BN 1 / 0.
    """

    features: int
    kernel_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        pad = self.kernel_size // 2
        x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), padding=((pad, pad), (pad, pad)),
                    use_bias=False, dtype=self.dtype,
                    kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"), name="conv")(x)
        return nn.relu(BatchNorm(dtype=self.dtype, name="bn")(x, train))
