"""The heat operator on small maps as one fused Pallas kernel (the ``"fused_kron"`` HCO form).

For a map of ``H*W`` tokens the operator is ``y = K^T diag(decay) K x`` per image and channel,
with ``K = kron(DCT_H, DCT_W)`` of shape (HW, HW). Written as XLA ops, the DCT, the decay and the
inverse DCT are separate passes over activation-sized arrays; here one program per (image,
channel block) reads its ``x`` tile once, forms the spectrum a chunk of frequencies at a time,
scales it, and accumulates ``K^T`` of it, writing ``y`` once. The Kronecker basis costs
``2 * (HW)^2`` multiply-adds per channel each way, which is why the form is for small maps only
(at most :data:`MAX_TOKENS` tokens: vHeat's last two stages at 224 px).

The operator is symmetric (``K`` orthogonal, ``decay`` diagonal), so the input gradient is the
same kernel applied to the output gradient; the backward kernel also writes each image's
``(K x) * (K g)``, whose sum over images is the decay's gradient.

On a GPU it lowers through Pallas' Triton backend, which wants power-of-two tiles: tokens are
zero-padded to a power of two (the padded basis rows and columns are zero, so padding adds
nothing), channels are tiled by a power of two dividing ``C``. Elsewhere it runs in Pallas'
interpret mode: a correctness check (CI compares it with the einsum form), not a fast path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pallas_triton

from vheat_jax.dct import dct_basis

MAX_TOKENS = 256
"""Largest ``H*W`` the form takes: the padded (256, 256) basis is read in (64, 256) chunks."""
_CHUNK = 64
_MAX_CHANNEL_TILE = 32


def supports(height: int, width: int) -> bool:
    return height * width <= MAX_TOKENS


def _padded_tokens(tokens: int) -> int:
    return max(16, pl.next_power_of_2(tokens))  # Triton's dot wants every side >= 16


def _channel_tile(channels: int) -> int:
    return min(_MAX_CHANNEL_TILE, channels & -channels)  # largest power of two dividing C, capped


@functools.lru_cache(maxsize=None)
def _kron_basis(height: int, width: int) -> np.ndarray:
    tokens = height * width
    padded = _padded_tokens(tokens)
    basis = np.zeros((padded, padded), np.float32)
    basis[:tokens, :tokens] = np.kron(dct_basis(height), dct_basis(width))
    return basis


def _spectrum_chunks(basis_ref, index):
    """Rows ``[64 i, 64 i + 64)`` of the basis (a chunk of frequencies) and their slice."""
    rows = pl.ds(index * _CHUNK, _CHUNK) if basis_ref.shape[0] > _CHUNK else slice(None)
    return rows, basis_ref[rows, :]


def _dot(a, b, contract_a: int = 1):
    """``a @ b`` (or ``a^T @ b`` with ``contract_a=0``), float32 accumulation."""
    return jax.lax.dot_general(a, b, (((contract_a,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _forward_kernel(basis_ref, decay_ref, x_ref, out_ref):
    x = x_ref[...]

    def add_chunk(i, acc):
        rows, basis = _spectrum_chunks(basis_ref, i)
        scaled = (_dot(basis, x).astype(x.dtype) * decay_ref[rows, :]).astype(x.dtype)
        return acc + _dot(basis, scaled, contract_a=0)

    chunks = max(1, basis_ref.shape[0] // _CHUNK)
    acc = jax.lax.fori_loop(0, chunks, add_chunk, jnp.zeros(x.shape, jnp.float32))
    out_ref[...] = acc.astype(out_ref.dtype)


def _backward_kernel(basis_ref, decay_ref, x_ref, grad_ref, grad_x_ref, spectra_ref):
    x, grad = x_ref[...], grad_ref[...]

    def add_chunk(i, acc):
        rows, basis = _spectrum_chunks(basis_ref, i)
        grad_spectrum = _dot(basis, grad).astype(grad.dtype)
        spectra_ref[rows, :] = _dot(basis, x) * grad_spectrum.astype(jnp.float32)
        scaled = (grad_spectrum * decay_ref[rows, :]).astype(grad.dtype)
        return acc + _dot(basis, scaled, contract_a=0)

    chunks = max(1, basis_ref.shape[0] // _CHUNK)
    acc = jax.lax.fori_loop(0, chunks, add_chunk, jnp.zeros(grad.shape, jnp.float32))
    grad_x_ref[...] = acc.astype(grad_x_ref.dtype)


def _specs(padded: int, channel_tile: int, activations: int):
    basis = pl.BlockSpec((padded, padded), lambda b, j: (0, 0))
    decay = pl.BlockSpec((padded, channel_tile), lambda b, j: (0, j))
    tile = pl.BlockSpec((pl.squeezed, padded, channel_tile), lambda b, j: (b, 0, j))
    return [basis, decay] + [tile] * activations, tile


def _pad_tokens(a: jax.Array, padded: int, axis: int) -> jax.Array:
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, padded - a.shape[axis])
    return jnp.pad(a, widths)


def _call(kernel, outputs, basis, decay, *activations, interpret: bool):
    batch, padded, channels = activations[0].shape
    tile = _channel_tile(channels)
    in_specs, out_spec = _specs(padded, tile, len(activations))
    return pl.pallas_call(
        kernel, out_shape=outputs, grid=(batch, channels // tile), in_specs=in_specs,
        out_specs=[out_spec] * len(outputs) if isinstance(outputs, list) else out_spec, interpret=interpret,
        compiler_params=None if interpret else pallas_triton.CompilerParams(num_warps=4),  # Triton, not Mosaic GPU
    )(basis, decay, *activations)


def _flatten(x: jax.Array, decay: jax.Array):
    """NHWC ``x`` -> (B, P, C) and (H, W, C) ``decay`` -> (P, C), zero-padded to P tokens; the basis."""
    batch, height, width, channels = x.shape
    basis = jnp.asarray(_kron_basis(height, width), x.dtype)
    padded = basis.shape[0]
    x = _pad_tokens(x.reshape(batch, height * width, channels), padded, axis=1)
    decay = _pad_tokens(decay.reshape(height * width, channels).astype(x.dtype), padded, axis=0)
    return x, decay, basis


def _interpret() -> bool:
    return jax.default_backend() != "gpu"


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def fused_kron_diffuse(x: jax.Array, decay: jax.Array, interpret: bool | None = None) -> jax.Array:
    """IDCT(DCT(x) * decay) over H, W of NHWC ``x`` (H*W <= MAX_TOKENS), ``decay`` (H, W, C).

    ``interpret`` None: the Triton kernel on a GPU, Pallas' interpreter elsewhere.
    """
    return _forward(x, decay, interpret)[0]


def _forward(x, decay, interpret):
    batch, height, width, channels = x.shape
    if not supports(height, width):
        raise ValueError(f"the fused_kron HCO form takes maps of at most {MAX_TOKENS} tokens, got "
                         f"{height}x{width}; use hco_form='auto' or another form for this input size")
    flat_x, flat_decay, basis = _flatten(x, decay)
    out = _call(_forward_kernel, jax.ShapeDtypeStruct(flat_x.shape, x.dtype), basis, flat_decay, flat_x,
                interpret=_interpret() if interpret is None else interpret)
    y = out[:, :height * width].reshape(x.shape)
    return y, (x, decay)


def _backward(interpret, residuals, grad):
    x, decay = residuals
    batch, height, width, channels = x.shape
    flat_x, flat_decay, basis = _flatten(x, decay)
    flat_grad = _flatten(grad.astype(x.dtype), decay)[0]
    outputs = [jax.ShapeDtypeStruct(flat_x.shape, x.dtype), jax.ShapeDtypeStruct(flat_x.shape, jnp.float32)]
    grad_x, spectra = _call(_backward_kernel, outputs, basis, flat_decay, flat_x, flat_grad,
                            interpret=_interpret() if interpret is None else interpret)
    tokens = height * width
    grad_decay = jnp.sum(spectra[:, :tokens], axis=0).reshape(decay.shape)
    return grad_x[:, :tokens].reshape(x.shape), grad_decay.astype(decay.dtype)


fused_kron_diffuse.defvjp(_forward, _backward)
