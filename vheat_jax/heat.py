"""The Heat Conduction Operator (HCO) of vHeat, as DCT-basis einsums.

The operator solves the 2-D heat equation with Neumann boundaries on the feature
map: a 2-D DCT-II of the features, a per-frequency, per-channel decay
``exp(-(w_n^2 + w_m^2)) ** k`` with ``k = relu(Linear(freq_embed))``, then the
inverse DCT. The DCT is a dense (N, N) basis contracted along H and then W, so
the cost is O(H*W*(H+W)*C) = O(N^1.5 C) for N = H*W tokens.

Numerics follow the official PyTorch ``Heat2D`` exactly (basis, decay map and
``pow`` order), because the fixtures in ``shared/fixtures/vheat_torch`` are the
spec.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# Every LayerNorm outside the stem uses torch's default eps; flax's fast variance
# (E[x^2] - E[x]^2) loses precision that the parity tolerance cannot afford.
LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-5, use_fast_variance=False)


@functools.lru_cache(maxsize=None)
def dct_basis(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis, shape (n_freq, n_pos): rows are frequencies.

    ``cos((x + 0.5) * k * pi / n) * sqrt(2 / n)`` with row 0 divided by sqrt(2).
    Its transpose is the inverse transform (the basis is orthogonal).
    """
    pos = (np.arange(n, dtype=np.float64) + 0.5) / n
    freq = np.arange(n, dtype=np.float64)[:, None]
    basis = np.cos(freq * pos * np.pi) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


@functools.lru_cache(maxsize=None)
def decay_map(height: int, width: int) -> np.ndarray:
    """``exp(-(w_n^2 + w_m^2))`` with ``w_n = n * pi / height``, shape (height, width)."""
    w_n = np.arange(height, dtype=np.float64) * np.pi / height
    w_m = np.arange(width, dtype=np.float64) * np.pi / width
    return np.exp(-(w_n[:, None] ** 2 + w_m[None, :] ** 2)).astype(np.float32)


def decay_from_k(k: jax.Array) -> jax.Array:
    """The decay ``exp(-(w_n^2 + w_m^2)) ** k`` for exponents ``k`` of shape (H, W, C).

    Computed as torch does (``pow`` of the decay map, not ``exp(-w * k)``), for
    the training form and for precomputing the inference form's ``k_exp``.
    """
    height, width, _ = k.shape
    return jnp.power(jnp.asarray(decay_map(height, width))[:, :, None], k)


def dct_2d(x: jax.Array) -> jax.Array:
    """2-D DCT-II over the H, W axes of an NHWC array."""
    _, height, width, _ = x.shape
    basis_h = jnp.asarray(dct_basis(height), x.dtype)
    basis_w = jnp.asarray(dct_basis(width), x.dtype)
    x = jnp.einsum("nh,bhwc->bnwc", basis_h, x)
    return jnp.einsum("mw,bnwc->bnmc", basis_w, x)


def idct_2d(x: jax.Array) -> jax.Array:
    """Inverse of :func:`dct_2d` (the transposed bases)."""
    _, n_h, n_w, _ = x.shape
    basis_h = jnp.asarray(dct_basis(n_h), x.dtype)
    basis_w = jnp.asarray(dct_basis(n_w), x.dtype)
    x = jnp.einsum("nh,bnmc->bhmc", basis_h, x)
    return jnp.einsum("mw,bhmc->bhwc", basis_w, x)


class HeatConduction(nn.Module):
    """The official ``Heat2D`` token mixer on NHWC features.

    Training form: decay computed from the stage's frequency embedding through
    this block's ``to_k`` Linear. Inference form (``infer_mode=True``): the decay
    is a stored constant ``k_exp`` of shape (res, res, C), as the official
    ``infer_init`` produces; ``to_k`` does not exist then.
    """

    dim: int
    res: int
    infer_mode: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, freq_embed: jax.Array | None) -> jax.Array:
        _, height, width, channels = x.shape
        dense = functools.partial(nn.Dense, dtype=self.dtype)
        x = nn.Conv(
            channels, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=channels,
            dtype=self.dtype, name="dwconv",
        )(x)
        x, z = jnp.split(dense(2 * self.dim, name="linear")(x), 2, axis=-1)

        if self.infer_mode:
            decay = self.param("k_exp", nn.initializers.ones, (self.res, self.res, self.dim))
            if decay.shape[:2] != (height, width):
                raise ValueError(
                    f"inference-form block was built for {self.res}x{self.res} features but got "
                    f"{height}x{width}; rebuild the inference form for this input size with "
                    "vheat_jax.to_inference_form(..., img_size=...)"
                )
        else:
            to_k = dense(self.dim, name="to_k")
            if freq_embed.shape[:2] != (height, width):
                raise ValueError(f"frequency embedding {freq_embed.shape[:2]} != features {(height, width)}")
            decay = decay_from_k(jax.nn.relu(to_k(freq_embed)))

        x = idct_2d(dct_2d(x) * decay.astype(x.dtype))
        x = LayerNorm(dtype=self.dtype, name="out_norm")(x)
        x = x * nn.silu(z)
        return dense(self.dim, name="out_linear")(x)
