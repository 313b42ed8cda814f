"""Elementwise-heavy layers of vHeat with hand-written gradients.

Each function computes exactly what the straightforward JAX expression computes
(same operations in the same order, so fixture parity is unchanged); what
differs is the backward pass. Autodiff of these expressions produces many
passes over activation-sized arrays (nine pads for the shifted-add depthwise
convolution, erfc and its derivative for GELU, a chain of broadcasts and
reductions for LayerNorm); the rules below do the same math in one or two
passes, which is what the training step on a memory-bound backend needs.
``tests/test_ops.py`` checks each rule against autodiff of the plain expression.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import linen as nn

# --------------------------------------------------------------------------- GELU

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@jax.custom_jvp
def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, written as torch writes it: ``x * 0.5 * (1 + erf(x / sqrt(2)))``."""
    return x * 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    cdf = 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)
    return x * cdf, (cdf + x * pdf) * dx


# ------------------------------------------------------------- depthwise 3x3 conv


def _taps(x: jax.Array):
    """The nine 3x3 taps of NHWC ``x`` with zero padding 1: ``(dy, dx, pad(x)[dy:dy+H, dx:dx+W])``."""
    _, height, width, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for dy in range(3):
        for dx in range(3):
            yield dy, dx, padded[:, dy:dy + height, dx:dx + width, :]


def _shifted_sum(x: jax.Array, kernel: jax.Array, start: jax.Array | None = None) -> jax.Array:
    """``start`` (if given) plus, tap by tap, ``tap * kernel[dy, dx]``; kernel (3, 3, C)."""
    out = start
    for dy, dx, tap in _taps(x):
        term = tap * kernel[dy, dx]
        out = term if out is None else out + term
    return out


@jax.custom_vjp
def depthwise_conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Depthwise 3x3 convolution, stride 1, zero padding 1: NHWC ``x``, ``kernel`` (3, 3, C), ``bias`` (C,)."""
    return _shifted_sum(x, kernel, start=bias)


def _dwconv_fwd(x, kernel, bias):
    return depthwise_conv3x3(x, kernel, bias), (x, kernel)


def _dwconv_bwd(residuals, grad):
    x, kernel = residuals
    # The input gradient is the same convolution with the kernel rotated by 180 degrees.
    grad_x = _shifted_sum(grad, kernel[::-1, ::-1])
    grad_kernel = jnp.stack([jnp.sum(tap * grad, axis=(0, 1, 2)) for _, _, tap in _taps(x)]).reshape(kernel.shape)
    grad_bias = jnp.sum(grad, axis=(0, 1, 2))
    return grad_x.astype(x.dtype), grad_kernel.astype(kernel.dtype), grad_bias.astype(kernel.dtype)


depthwise_conv3x3.defvjp(_dwconv_fwd, _dwconv_bwd)


# ----------------------------------------------------------------------- LayerNorm


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """LayerNorm over the last axis, float32 statistics, as ``flax.linen.LayerNorm(use_fast_variance=False)``."""
    return _layer_norm_fwd(x, scale, bias, epsilon)[0]


def _layer_norm_fwd(x, scale, bias, epsilon):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(centered), axis=-1, keepdims=True) + epsilon)
    out = centered * (rstd * scale) + bias
    return out, (centered * rstd, rstd, scale)


def _layer_norm_bwd(epsilon, residuals, grad):
    del epsilon
    normalized, rstd, scale = residuals
    reduce_axes = tuple(range(grad.ndim - 1))
    grad_scale = jnp.sum(grad * normalized, axis=reduce_axes)
    grad_bias = jnp.sum(grad, axis=reduce_axes)
    grad_normalized = grad * scale
    grad_x = rstd * (grad_normalized - jnp.mean(grad_normalized, axis=-1, keepdims=True)
                     - normalized * jnp.mean(grad_normalized * normalized, axis=-1, keepdims=True))
    return grad_x, grad_scale, grad_bias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """Drop-in for ``nn.LayerNorm`` on the last axis (params ``scale``, ``bias``) with :func:`layer_norm`.

    Statistics and the normalisation are computed in at least float32; the
    result has ``dtype``, or when None the promoted type of input and params,
    as in flax.
    """

    epsilon: float = 1e-5
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        compute = jnp.promote_types(jnp.float32, x.dtype)
        out = layer_norm(x.astype(compute), scale.astype(compute), bias.astype(compute), self.epsilon)
        return out.astype(self.dtype or jnp.promote_types(x.dtype, self.param_dtype))
