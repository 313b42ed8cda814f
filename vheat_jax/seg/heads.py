"""mmseg's ``UPerHead`` and ``FCNHead`` in Flax (NHWC), numerically equal to mmsegmentation 1.2.

Parameter names follow the torch modules (``psp_modules_{k}``, ``lateral_convs_{i}``,
``fpn_convs_{i}``, ``bottleneck``, ``fpn_bottleneck``, ``convs_{i}``, ``conv_seg``), so the
checkpoint key map (:mod:`vheat_jax.seg.convert`) is a renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from vheat_jax.seg.layers import ConvModule
from vheat_jax.seg.resample import adaptive_avg_pool, resize_bilinear


def classify(x: jax.Array, num_classes: int, dropout_ratio: float, dtype, train: bool) -> jax.Array:
    """mmseg's ``cls_seg``: ``Dropout2d`` (whole channels, training only) then the 1x1 ``conv_seg``.

    Called from a head's compact ``__call__``, so ``conv_seg`` is that head's child.
    """
    if dropout_ratio > 0:
        x = nn.Dropout(dropout_ratio, broadcast_dims=(1, 2))(x, deterministic=not train)
    logits = nn.Conv(num_classes, (1, 1), dtype=dtype, kernel_init=nn.initializers.normal(0.01),
                     name="conv_seg")(x)
    return logits.astype(jnp.float32)


class UPerHead(nn.Module):
    """UperNet decode head on four feature maps (strides 4, 8, 16, 32): logits at stride 4.

    1. PPM on the last map: for each scale, adaptive average pooling (PyTorch bins),
       1x1 ConvModule, bilinear resize back; concatenated with the map; 3x3 ``bottleneck``.
    2. Lateral 1x1 ConvModules on the other maps, top-down cumulative sum of bilinear
       upsamplings, 3x3 ``fpn_convs`` (none on the top level).
    3. Everything resized to stride 4, concatenated, 3x3 ``fpn_bottleneck``, classifier.
    """

    num_classes: int
    channels: int
    pool_scales: Sequence[int] = (1, 2, 3, 6)
    dropout_ratio: float = 0.1
    dtype: jnp.dtype = jnp.float32

    def _pyramid_pooling(self, x: jax.Array, train: bool) -> jax.Array:
        outs = [x]
        for k, scale in enumerate(self.pool_scales):
            pooled = ConvModule(self.channels, 1, self.dtype, name=f"psp_modules_{k}")(
                adaptive_avg_pool(x, scale), train)
            outs.append(resize_bilinear(pooled, x.shape[1:3]))
        return ConvModule(self.channels, 3, self.dtype, name="bottleneck")(jnp.concatenate(outs, -1), train)

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], train: bool = False) -> jax.Array:
        laterals = [ConvModule(self.channels, 1, self.dtype, name=f"lateral_convs_{i}")(f, train)
                    for i, f in enumerate(features[:-1])]
        laterals.append(self._pyramid_pooling(features[-1], train))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], laterals[i - 1].shape[1:3])
        outs = [ConvModule(self.channels, 3, self.dtype, name=f"fpn_convs_{i}")(lateral, train)
                for i, lateral in enumerate(laterals[:-1])]
        outs.append(laterals[-1])
        outs = [outs[0]] + [resize_bilinear(out, outs[0].shape[1:3]) for out in outs[1:]]
        x = ConvModule(self.channels, 3, self.dtype, name="fpn_bottleneck")(jnp.concatenate(outs, -1), train)
        return classify(x, self.num_classes, self.dropout_ratio, self.dtype, train)


class FCNHead(nn.Module):
    """mmseg's ``FCNHead`` with ``concat_input=False``: ``num_convs`` ConvModules then the classifier."""

    num_classes: int
    channels: int
    num_convs: int = 1
    kernel_size: int = 3
    dropout_ratio: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i in range(self.num_convs):
            x = ConvModule(self.channels, self.kernel_size, self.dtype, name=f"convs_{i}")(x, train)
        return classify(x, self.num_classes, self.dropout_ratio, self.dtype, train)
