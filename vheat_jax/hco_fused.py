"""The heat operator as one fused Pallas kernel per direction (the ``fused_kron`` and ``fused_separable`` forms).

Written as XLA ops, the DCT, the decay and the inverse DCT are separate passes over activation-sized
arrays (memory-bound on a GPU). Here one program per (image, channel tile) reads its tile of ``x``
once, transforms it, scales it by the decay, transforms back and writes ``y`` once. Two layouts:

* ``kron``: ``y = K^T (decay * (K x))`` with ``K = kron(DCT_H, DCT_W)`` of shape (HW, HW) on the tile
  seen as (HW, C_tile), the spectrum formed 64 frequencies at a time. Its arithmetic grows as
  (HW)^2, so it takes maps of at most :data:`MAX_KRON_TOKENS` tokens (vHeat's last two stages).
* ``separable``: the two 1-D DCTs, each a 2-D matmul on a reshaped (H, W, C_tile) tile, with one
  transpose in registers between them; any map size, for the large early stages.

The operator is symmetric (orthogonal bases, a diagonal decay), so the input gradient is the same
transform applied to the output gradient; the backward kernel also writes each image's
``DCT(x) * DCT(g)``, whose sum over images is the decay's gradient.

On a GPU they lower through Pallas' Triton backend, which wants power-of-two tiles, each side of a
dot at least 16: maps are zero-padded (the padded basis rows and columns are zero, so padding adds
nothing) and channels tiled by a power of two dividing ``C``. Elsewhere they run in Pallas'
interpret mode: a correctness check (CI compares them with the einsum form), not a fast path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.custom_partitioning import custom_partitioning
from jax.experimental.pallas import triton as pallas_triton
from jax.sharding import NamedSharding, PartitionSpec

from vheat_jax.dct import dct_basis

MAX_KRON_TOKENS = 256
"""Largest ``H*W`` the Kronecker layout takes: its padded (256, 256) basis is read in (64, 256) chunks."""
_CHUNK = 64
_KRON_CHANNEL_TILE = 32
# A separable program holds its whole (H, W, C_tile) tile and its float32 copies in registers: 16384 elements
# compile without spills (8 warps); the channel tile's bytes must reach 16 (8 bf16: narrower tiles are an
# illegal shared-memory layout for Triton's dot operands), so a 64x64 map takes 64x64x8 and spills a little
# (bench/triton_compile.py has the registers and spills per stage).
_SEPARABLE_TILE_ELEMENTS = 16384
_MIN_SEPARABLE_CHANNEL_TILE = 8
NUM_WARPS = {"kron": 4, "separable": 8}


def supports(layout: str, height: int, width: int) -> bool:
    return layout == "separable" or height * width <= MAX_KRON_TOKENS


def _padded(n: int) -> int:
    return max(16, pl.next_power_of_2(n))  # Triton's dot wants every side >= 16


def _largest_power_of_two_dividing(n: int) -> int:
    return n & -n


def _zero_padded(basis: np.ndarray) -> np.ndarray:
    """A square basis in the top-left corner of a zero (P, P) matrix, P its padded side."""
    side = _padded(basis.shape[0])
    padded = np.zeros((side, side), np.float32)
    padded[:basis.shape[0], :basis.shape[1]] = basis
    return padded


@functools.lru_cache(maxsize=None)
def _padded_basis(n: int) -> np.ndarray:
    return _zero_padded(dct_basis(n))


@functools.lru_cache(maxsize=None)
def _padded_kron_basis(height: int, width: int) -> np.ndarray:
    return _zero_padded(np.kron(dct_basis(height), dct_basis(width)))


def _dot(a, b, contract_a: int = 1):
    """``a @ b`` (or ``a^T @ b`` with ``contract_a=0``), float32 accumulation."""
    return jax.lax.dot_general(a, b, (((contract_a,), (0,)), ((), ())), preferred_element_type=jnp.float32)


# ---------------------------------------------------------------------------------- Kronecker layout


def _frequency_chunk(basis_ref, index):
    """Rows ``[64 i, 64 i + 64)`` of the basis (a chunk of frequencies) and their slice."""
    rows = pl.ds(index * _CHUNK, _CHUNK) if basis_ref.shape[0] > _CHUNK else slice(None)
    return rows, basis_ref[rows, :]


def _kron_forward_kernel(basis_ref, decay_ref, x_ref, out_ref):
    x = x_ref[...]

    def add_chunk(i, acc):
        rows, basis = _frequency_chunk(basis_ref, i)
        scaled = (_dot(basis, x).astype(x.dtype) * decay_ref[rows, :]).astype(x.dtype)
        return acc + _dot(basis, scaled, contract_a=0)

    chunks = max(1, basis_ref.shape[0] // _CHUNK)
    out_ref[...] = jax.lax.fori_loop(0, chunks, add_chunk, jnp.zeros(x.shape, jnp.float32)).astype(out_ref.dtype)


def _kron_backward_kernel(basis_ref, decay_ref, x_ref, grad_ref, grad_x_ref, spectra_ref):
    x, grad = x_ref[...], grad_ref[...]

    def add_chunk(i, acc):
        rows, basis = _frequency_chunk(basis_ref, i)
        grad_spectrum = _dot(basis, grad).astype(grad.dtype)
        spectra_ref[rows, :] = _dot(basis, x) * grad_spectrum.astype(jnp.float32)
        scaled = (grad_spectrum * decay_ref[rows, :]).astype(grad.dtype)
        return acc + _dot(basis, scaled, contract_a=0)

    chunks = max(1, basis_ref.shape[0] // _CHUNK)
    acc = jax.lax.fori_loop(0, chunks, add_chunk, jnp.zeros(grad.shape, jnp.float32))
    grad_x_ref[...] = acc.astype(grad_x_ref.dtype)


# ---------------------------------------------------------------------------------- separable layout


def _to_spectrum(tile, basis_h, basis_w):
    """DCT over H then W of a (H, W, C) tile: float32, laid out (m, (n, c)) as a (W, H*C) matrix."""
    height, width, channels = tile.shape
    along_h = _dot(basis_h, tile.reshape(height, width * channels)).astype(tile.dtype)  # (n, (w, c))
    along_h = along_h.reshape(height, width, channels).transpose(1, 0, 2).reshape(width, height * channels)
    return _dot(basis_w, along_h)


def _from_spectrum(spectrum, basis_h, basis_w, shape):
    """Inverse of :func:`_to_spectrum` for a (W, H*C) spectrum of the input's dtype: float32 (H, W, C)."""
    height, width, channels = shape
    along_w = _dot(basis_w, spectrum, contract_a=0).astype(spectrum.dtype)  # (w, (n, c))
    along_w = along_w.reshape(width, height, channels).transpose(1, 0, 2).reshape(height, width * channels)
    return _dot(basis_h, along_w, contract_a=0).reshape(shape)


def _in_spectrum_layout(tile):
    """A (H, W, C) tile laid out as :func:`_to_spectrum`'s (W, H*C)."""
    height, width, channels = tile.shape
    return tile.transpose(1, 0, 2).reshape(width, height * channels)


def _separable_forward_kernel(basis_h_ref, basis_w_ref, decay_ref, x_ref, out_ref):
    x, basis_h, basis_w = x_ref[...], basis_h_ref[...], basis_w_ref[...]
    spectrum = _to_spectrum(x, basis_h, basis_w).astype(x.dtype)
    scaled = (spectrum * _in_spectrum_layout(decay_ref[...])).astype(x.dtype)
    out_ref[...] = _from_spectrum(scaled, basis_h, basis_w, x.shape).astype(out_ref.dtype)


def _separable_backward_kernel(basis_h_ref, basis_w_ref, decay_ref, x_ref, grad_ref, grad_x_ref, spectra_ref):
    x, grad, basis_h, basis_w = x_ref[...], grad_ref[...], basis_h_ref[...], basis_w_ref[...]
    height, width, channels = x.shape
    grad_spectrum = _to_spectrum(grad, basis_h, basis_w).astype(grad.dtype)
    product = _to_spectrum(x, basis_h, basis_w) * grad_spectrum.astype(jnp.float32)
    spectra_ref[...] = product.reshape(width, height, channels).transpose(1, 0, 2)
    scaled = (grad_spectrum * _in_spectrum_layout(decay_ref[...])).astype(grad.dtype)
    grad_x_ref[...] = _from_spectrum(scaled, basis_h, basis_w, x.shape).astype(grad_x_ref.dtype)


# ------------------------------------------------------------------------------ both: padding, calls, VJP


def _prepare(layout: str, decay: jax.Array, *activations: jax.Array):
    """The padded bases, ``decay`` and NHWC ``activations`` as the layout's kernels read them (zero-padded)."""
    batch, height, width, channels = activations[0].shape
    dtype = activations[0].dtype
    if layout == "kron":
        basis = _padded_kron_basis(height, width)
        pad = ((0, basis.shape[0] - height * width), (0, 0))
        flat = tuple(jnp.pad(a.reshape(batch, height * width, channels), ((0, 0), *pad)) for a in activations)
        return (jnp.asarray(basis, dtype),), jnp.pad(decay.astype(dtype).reshape(height * width, channels), pad), flat
    bases = (_padded_basis(height), _padded_basis(width))
    pad = ((0, bases[0].shape[0] - height), (0, bases[1].shape[0] - width), (0, 0))
    return (tuple(jnp.asarray(b, dtype) for b in bases), jnp.pad(decay.astype(dtype), pad),
            tuple(jnp.pad(a, ((0, 0), *pad)) for a in activations))


def _unpad(layout: str, padded: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The first ``H*W`` tokens (or the top-left H x W) of a padded array, as ``shape`` (leading dims kept)."""
    height, width = shape[-3:-1]
    if layout == "kron":
        return padded[..., :height * width, :].reshape(shape)
    return padded[..., :height, :width, :]


def _channel_tile(layout: str, padded_spatial: tuple[int, ...], channels: int) -> int:
    if layout == "kron":
        return min(_KRON_CHANNEL_TILE, _largest_power_of_two_dividing(channels))
    room = max(_MIN_SEPARABLE_CHANNEL_TILE, _SEPARABLE_TILE_ELEMENTS // int(np.prod(padded_spatial)))
    return min(room, _largest_power_of_two_dividing(channels))


def _call(layout: str, kernel, outputs, bases, decay, *activations, interpret: bool):
    batch, *spatial, channels = activations[0].shape
    tile = _channel_tile(layout, tuple(spatial), channels)
    narrowest = {"kron": 16, "separable": _MIN_SEPARABLE_CHANNEL_TILE}[layout]  # Triton's dot and layouts
    if not interpret and tile < narrowest:
        raise ValueError(f"the fused_{layout} HCO form on a GPU needs channels divisible by {narrowest} (got "
                         f"{channels}); give that stage another form in hco_form")
    zeros = (0,) * len(spatial)
    basis_specs = [pl.BlockSpec(b.shape, lambda i, j: (0, 0)) for b in bases]
    decay_spec = pl.BlockSpec((*spatial, tile), lambda i, j: (*zeros, j))
    tile_spec = pl.BlockSpec((pl.squeezed, *spatial, tile), lambda i, j: (i, *zeros, j))
    return pl.pallas_call(
        kernel, out_shape=outputs, grid=(batch, channels // tile),
        in_specs=[*basis_specs, decay_spec] + [tile_spec] * len(activations),
        out_specs=[tile_spec] * len(outputs) if isinstance(outputs, list) else tile_spec, interpret=interpret,
        # Triton's compiler parameters (rather than Mosaic GPU's) choose the Triton backend.
        compiler_params=None if interpret else pallas_triton.CompilerParams(num_warps=NUM_WARPS[layout]),
    )(*bases, decay, *activations)


_KERNELS = {"kron": (_kron_forward_kernel, _kron_backward_kernel),
            "separable": (_separable_forward_kernel, _separable_backward_kernel)}


def _batch_only(sharding: NamedSharding, ndim: int) -> NamedSharding:
    """An activation's sharding along its batch dimension, every other dimension whole."""
    batch = sharding.spec[0] if len(sharding.spec) else None
    return NamedSharding(sharding.mesh, PartitionSpec(batch, *[None] * (ndim - 1)))


@functools.lru_cache(maxsize=None)
def _split_over_batch(layout: str, backward: bool, interpret: bool):
    """The layout's forward (or backward) kernel as an op XLA splits over the batch: each device runs it on
    its own images. A Pallas kernel is a custom call the partitioner cannot see into; unsplit, every device
    would gather the whole batch and run all of it (tests/test_hco_fused.py checks the program gathers none)."""
    kernel = _KERNELS[layout][backward]

    def run(bases, decay, activations):
        like = jax.ShapeDtypeStruct(activations[0].shape, activations[0].dtype)
        outputs = [like, jax.ShapeDtypeStruct(like.shape, jnp.float32)] if backward else like
        return _call(layout, kernel, outputs, bases, decay, *activations, interpret=interpret)

    def result_shardings(activations):
        batch = _batch_only(activations[0].sharding, len(activations[0].shape))
        return (batch, batch) if backward else batch

    def partition(mesh, arg_shapes, result_shape):
        bases, _, activations = arg_shapes
        whole = NamedSharding(mesh, PartitionSpec())
        shardings = result_shardings(activations)
        batch = shardings[0] if backward else shardings
        return mesh, run, shardings, ((whole,) * len(bases), whole, (batch,) * len(activations))

    op = custom_partitioning(run)
    spatial = "p" if layout == "kron" else "h w"
    bases = ["k l"] if layout == "kron" else ["m n", "q r"]
    tiles = ", ".join([f"b {spatial} c"] * (2 if backward else 1))
    op.def_partition(partition, infer_sharding_from_operands=lambda mesh, shapes, result: result_shardings(shapes[2]),
                     sharding_rule=f"{', '.join(bases)}, {spatial} c, {tiles} -> {tiles}",
                     need_replication_factors=tuple(" ".join([*bases, spatial, "c"]).split()))
    return op


def _interpret(interpret: bool | None) -> bool:
    return jax.default_backend() != "gpu" if interpret is None else interpret


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def fused_diffuse(x: jax.Array, decay: jax.Array, layout: str, interpret: bool | None = None) -> jax.Array:
    """IDCT(DCT(x) * decay) over H, W of NHWC ``x``, ``decay`` (H, W, C), as one kernel of ``layout``
    ("kron": maps of at most MAX_KRON_TOKENS tokens; "separable": any map).

    ``interpret`` None: the Triton kernel on a GPU, Pallas' interpreter elsewhere.
    """
    return _forward(x, decay, layout, interpret)[0]


def _forward(x, decay, layout, interpret):
    if not supports(layout, *x.shape[1:3]):
        raise ValueError(f"the fused_kron HCO form takes maps of at most {MAX_KRON_TOKENS} tokens, got "
                         f"{x.shape[1]}x{x.shape[2]}; give that stage another form in hco_form "
                         "(one per stage, comma-separated), e.g. fused_separable")
    bases, padded_decay, activations = _prepare(layout, decay, x)
    out = _split_over_batch(layout, False, _interpret(interpret))(bases, padded_decay, activations)
    return _unpad(layout, out, x.shape), (x, decay)


def _backward(layout, interpret, residuals, grad):
    x, decay = residuals
    bases, padded_decay, activations = _prepare(layout, decay, x, grad.astype(x.dtype))
    grad_x, spectra = _split_over_batch(layout, True, _interpret(interpret))(bases, padded_decay, activations)
    grad_decay = _unpad(layout, jnp.sum(spectra, axis=0), decay.shape)
    return _unpad(layout, grad_x, x.shape), grad_decay.astype(decay.dtype)


fused_diffuse.defvjp(_forward, _backward)
