"""A ViT-style global-attention baseline in Flax for bench/scaling.py (DeiT-S shape).

DeiT-S (patch 16, width 384, depth 12, 6 heads, MLP 4x) costs 4.6 GMACs at 224,
like vHeat-T, so the two can be compared at equal cost at 224 and then scaled.
Only its cost is measured; it is never trained here.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn


class EncoderBlock(nn.Module):
    width: int
    heads: int
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype)(y, y)
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x)
        y = nn.Dense(4 * self.width, dtype=self.dtype)(y)
        return x + nn.Dense(self.width, dtype=self.dtype)(nn.gelu(y, approximate=False))


class ViT(nn.Module):
    """Plain ViT: patch embedding, learned position embedding at the input's token grid, CLS token."""

    width: int = 384
    depth: int = 12
    heads: int = 6
    patch: int = 16
    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        x = nn.Conv(self.width, (self.patch, self.patch), strides=(self.patch, self.patch), dtype=self.dtype)(images)
        batch, height, width, _ = x.shape
        x = x.reshape(batch, height * width, self.width)
        x = x + self.param("pos_embed", nn.initializers.normal(0.02), (1, height * width, self.width)).astype(x.dtype)
        cls = jnp.broadcast_to(self.param("cls", nn.initializers.zeros, (1, 1, self.width)).astype(x.dtype),
                               (batch, 1, self.width))
        x = jnp.concatenate([cls, x], axis=1)
        for _ in range(self.depth):
            x = EncoderBlock(self.width, self.heads, self.dtype)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x[:, 0]))
