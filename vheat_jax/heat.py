"""The Heat Conduction Operator (HCO) of vHeat, as DCT-basis einsums.

The operator solves the 2-D heat equation with Neumann boundaries on the feature
map: a 2-D DCT-II of the features, a per-frequency, per-channel decay
``exp(-(w_n^2 + w_m^2)) ** k`` with ``k = relu(Linear(freq_embed))``, then the
inverse DCT. The DCT is a dense (N, N) basis contracted along H and then W, so
the cost is O(H*W*(H+W)*C) = O(N^1.5 C) for N = H*W tokens.

Numerics follow the official PyTorch ``Heat2D`` exactly (basis, decay map and
``pow`` order), because the fixtures in ``tests/fixtures/vheat_torch`` are the
spec.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vheat_jax import hco_fused, ops
from vheat_jax.dct import dct_basis, decay_map

# Every LayerNorm outside the stem uses torch's default eps. ops.LayerNorm computes
# the variance as E[(x - mean)^2] (flax's fast E[x^2] - E[x]^2 loses precision that
# the parity tolerance cannot afford) and has a one-pass backward.
LayerNorm = functools.partial(ops.LayerNorm, epsilon=1e-5)


def decay_from_k(k: jax.Array) -> jax.Array:
    """The decay ``exp(-(w_n^2 + w_m^2)) ** k`` for exponents ``k`` of shape (H, W, C).

    Computed as torch does (``pow`` of the decay map, not ``exp(-w * k)``), for
    the training form and for precomputing the inference form's ``k_exp``.
    """
    height, width, _ = k.shape
    return jnp.power(jnp.asarray(decay_map(height, width))[:, :, None], k)


def _bases(height: int, width: int, dtype) -> tuple[jax.Array, jax.Array]:
    return jnp.asarray(dct_basis(height), dtype), jnp.asarray(dct_basis(width), dtype)


def dct_2d(x: jax.Array) -> jax.Array:
    """2-D DCT-II over the H, W axes of an NHWC array."""
    basis_h, basis_w = _bases(x.shape[1], x.shape[2], x.dtype)
    x = jnp.einsum("nh,bhwc->bnwc", basis_h, x)
    return jnp.einsum("mw,bnwc->bnmc", basis_w, x)


def idct_2d(x: jax.Array) -> jax.Array:
    """Inverse of :func:`dct_2d` (the transposed bases)."""
    basis_h, basis_w = _bases(x.shape[1], x.shape[2], x.dtype)
    x = jnp.einsum("nh,bnmc->bhmc", basis_h, x)
    return jnp.einsum("mw,bhmc->bhwc", basis_w, x)


def _diffuse_einsum(x: jax.Array, decay: jax.Array) -> jax.Array:
    """Reference form: separable DCT along H then W, NHWC throughout."""
    return idct_2d(dct_2d(x) * decay)


def _diffuse_channel_major(x: jax.Array, decay: jax.Array) -> jax.Array:
    """Separable DCT on a (B, C, H, W) view, so both contractions are plain matmuls over the last axes."""
    basis_h, basis_w = _bases(x.shape[1], x.shape[2], x.dtype)
    spectrum = jnp.einsum("nh,bhwc,mw->bcnm", basis_h, x, basis_w) * decay.transpose(2, 0, 1)
    return jnp.einsum("nh,bcnm,mw->bhwc", basis_h, spectrum, basis_w)


def _diffuse_kron(x: jax.Array, decay: jax.Array) -> jax.Array:
    """One (HW, HW) Kronecker basis: a single matmul each way; wins when HW is small."""
    batch, height, width, channels = x.shape
    basis = jnp.asarray(np.kron(dct_basis(height), dct_basis(width)), x.dtype)
    spectrum = jnp.einsum("kp,bpc->bkc", basis, x.reshape(batch, height * width, channels))
    spectrum = spectrum * decay.reshape(height * width, channels)
    return jnp.einsum("kp,bkc->bpc", basis, spectrum).reshape(x.shape)


def _diffuse_fft(x: jax.Array, decay: jax.Array) -> jax.Array:
    """DCT through XLA's FFT (``jax.scipy.fft.dctn``, orthonormal type II)."""
    spectrum = jax.scipy.fft.dctn(x, type=2, axes=(1, 2), norm="ortho") * decay
    return jax.scipy.fft.idctn(spectrum, type=2, axes=(1, 2), norm="ortho")


HCO_FORMS = {
    "einsum": _diffuse_einsum,
    "channel_major": _diffuse_channel_major,
    "kron": _diffuse_kron,
    "fft": _diffuse_fft,
    # One Pallas kernel each way (Triton on a GPU, the interpreter elsewhere); kron: maps of <= 256 tokens.
    "fused_kron": lambda x, decay: hco_fused.fused_diffuse(x, decay, "kron"),
    "fused_separable": lambda x, decay: hco_fused.fused_diffuse(x, decay, "separable"),
}
# Largest token count at which the Kronecker form is used by "auto": bench/hco.py's CPU timings.
# The TPU compiler's cost model picks the same forms on v4 and v5e (bench/tpu_cost.py,
# docs/tpu_cost.md): per op the Kronecker form at most ties above 7x7 (at 28x28 its matrices
# make it compute-bound), and up to 28x28 inside a train step it moves more bytes per image.
KRON_MAX_TOKENS = 64


def select_form(height: int, width: int) -> str:
    """The form ``"auto"`` uses for an (height, width) map, from bench/hco.py's measurements."""
    return "kron" if height * width <= KRON_MAX_TOKENS else "channel_major"


def forms_for(height: int, width: int) -> list[str]:
    """The forms that take an (height, width) map: all but ``fused_kron`` above its token limit."""
    return [form for form in HCO_FORMS if form != "fused_kron" or hco_fused.supports("kron", height, width)]


def stage_forms(hco_form: str, num_stages: int) -> list[str]:
    """One form per stage from ``hco_form``: a form for every stage, or one per stage, comma-separated
    (``"channel_major,channel_major,fused_kron,fused_kron"``), to choose per map size where ``auto`` would not."""
    forms = [form.strip() for form in hco_form.split(",")]
    if len(forms) == 1:
        forms *= num_stages
    unknown = sorted({form for form in forms if form != "auto" and form not in HCO_FORMS})
    if len(forms) != num_stages or unknown:
        raise ValueError(f"hco_form = {hco_form!r}: give 'auto', one of {sorted(HCO_FORMS)}, or {num_stages} of "
                         "them separated by commas (one per stage)")
    return forms


def heat_diffuse(x: jax.Array, decay: jax.Array, form: str = "auto") -> jax.Array:
    """IDCT(DCT(x) * decay) over H, W of an NHWC array; ``decay`` is (H, W, C).

    All forms compute the same linear map (equal within float32 rounding); they
    differ in how the contraction is laid out, and the fastest depends on shape.
    """
    if form == "auto":
        form = select_form(x.shape[1], x.shape[2])
    if form not in HCO_FORMS:
        raise ValueError(f"unknown HCO form {form!r}; choose 'auto' or one of {sorted(HCO_FORMS)}")
    return HCO_FORMS[form](x, decay.astype(x.dtype))


class DepthwiseConv3x3(nn.Module):
    """Depthwise 3x3 convolution, stride 1, zero padding 1, as nine shifted multiply-adds.

    Same parameters as ``nn.Conv(C, (3, 3), feature_group_count=C)`` (kernel
    (3, 3, 1, C), bias (C,)). XLA:CPU runs grouped convolutions some 30x slower
    than this elementwise form (measured at 56x56x96: 63 ms vs 1.9 ms for a batch
    of 8), and on GPU/TPU the nine products fuse into one kernel. The backward
    is written by hand (``ops.depthwise_conv3x3``): autodiff would pad the
    gradient once per tap.
    """

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 1, channels))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return ops.depthwise_conv3x3(x, kernel[:, :, 0], bias)


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
    hco_form: str = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, freq_embed: jax.Array | None) -> jax.Array:
        _, height, width, _ = x.shape
        dense = functools.partial(nn.Dense, dtype=self.dtype)
        x = DepthwiseConv3x3(self.dtype, name="dwconv")(x)
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

        x = heat_diffuse(x, decay, self.hco_form)
        x = LayerNorm(dtype=self.dtype, name="out_norm")(x)
        x = x * nn.silu(z)
        return dense(self.dim, name="out_linear")(x)
