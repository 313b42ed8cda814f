"""Resizing of frequency embeddings exactly as the official PyTorch vHeat does it.

The official dense-prediction backbone resizes each stage's frequency embedding
(H, W, C) to the feature size with ``F.interpolate(..., mode="bicubic",
align_corners=False)``. ``jax.image.resize(..., "bicubic")`` is a different
filter (Keys cubic with a = -0.5, and it antialiases when downsampling), so it
does not reproduce those numbers. (jax 0.10's ``"cubic-pytorch"`` method with
``antialias=False`` does, to ~1e-6, but depends on that jax version.) Here
torch's kernel is written down as one small (out, in) matrix per axis, so the
resize is two matmuls with numpy constants: usable from numpy (checkpoint
conversion) and from ``jax.jit`` with static shapes.

The classification-to-downstream recipe of the official repository
(``interpolate4downstream.py``) zero-pads instead; see ``zero_pad_freq_embed``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Cubic convolution coefficient used by PyTorch (and OpenCV); not Keys' -0.5.
_A = -0.75


def _cubic_near(x: np.ndarray) -> np.ndarray:
    """Kernel for |x| <= 1 (torch's ``cubic_convolution1``)."""
    return ((_A + 2) * x - (_A + 3)) * x * x + 1


def _cubic_far(x: np.ndarray) -> np.ndarray:
    """Kernel for 1 < |x| < 2 (torch's ``cubic_convolution2``)."""
    return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A


def torch_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Matrix M (out_size, in_size) with ``M @ v`` equal to torch's 1-D bicubic resize.

    Mirrors ``upsample_bicubic2d`` (aten/src/ATen/native/UpSample.h) with
    ``align_corners=False``, no antialiasing and no ``scale_factor``: the source
    coordinate is ``(dst + 0.5) * in / out - 0.5``, *not* clamped at 0 (torch
    clamps it only for linear modes), and the four taps ``floor(src) - 1 ..
    floor(src) + 2`` are clamped into the input, so out-of-range taps add their
    weight to the edge pixel.

    The coordinate is computed the way torch computes it for float32 tensors:
    scale ``float32(in) / float32(out)``, then ``scale * (dst + 0.5) - 0.5``
    rounded once to float32 (the fused multiply-add its AVX2/AVX512 kernels
    compile to). Doing it in float64 instead moves ``t`` by up to a float32 ulp
    of ``src`` and the weights by up to 9e-6; this way they agree with torch to
    8e-7 (torch's own float32 weight rounding). The weights are evaluated in
    float64 and returned as float32.

    Torch has no shortcut for ``in == out``: it runs the same kernel (a NaN or
    inf spreads to the neighbours), whose weights are then exactly
    (0, 1, 0, 0), so M is exactly the identity.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in={in_size}, out={out_size}")
    dst = np.arange(out_size)
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = (scale * (dst + 0.5) - 0.5).astype(np.float32)  # exact in float64, one rounding
    i0 = np.floor(src)
    t = (src - i0).astype(np.float64)  # float32 subtraction, as torch's lambda
    weights = (_cubic_far(t + 1), _cubic_near(t), _cubic_near(1 - t), _cubic_far(2 - t))
    m = np.zeros((out_size, in_size), np.float64)
    for offset, w in zip(range(-1, 3), weights):
        np.add.at(m, (dst, np.clip(i0.astype(np.int64) + offset, 0, in_size - 1)), w)
    return m.astype(np.float32)


def resize_bicubic_hw(x: Any, out_hw: tuple[int, int]) -> Any:
    """Resize (H, W, C) to (out_h, out_w, C) exactly like torch's bicubic interpolate.

    Equal to ``F.interpolate(x.permute(2, 0, 1)[None], size=out_hw,
    mode="bicubic", align_corners=False)[0].permute(1, 2, 0)``. A numpy input
    gives a numpy result; anything else (jax arrays, tracers) goes through
    ``jnp.einsum`` at HIGHEST precision, so TPU/GPU matmuls do not drop to
    bfloat16 passes and the result stays float32-exact.
    """
    h, w = x.shape[0], x.shape[1]
    mh = torch_bicubic_matrix(h, out_hw[0])
    mw = torch_bicubic_matrix(w, out_hw[1])
    if isinstance(x, np.ndarray):
        return np.einsum("oh,pw,hwc->opc", mh, mw, x)
    return jnp.einsum("oh,pw,hwc->opc", mh, mw, x, precision=jax.lax.Precision.HIGHEST)


def zero_pad_freq_embed(embed: Any, stage_index: int, from_size: int, to_size: int) -> Any:
    """Zero-pad a stage's (H, W, C) frequency embedding for a larger input size.

    The official recipe (``interpolate4downstream.py``) moves a classification
    checkpoint trained at ``from_size`` pixels to ``to_size`` by appending
    ``(to_size - from_size) // 2**(stage_index + 2)`` zero rows and columns at
    the end of H and W, i.e. at the high-frequency end of the DCT spectrum
    (stage i works at 1 / 2**(i + 2) of the image resolution). C is untouched.
    """
    if to_size < from_size:
        raise ValueError(
            f"zero-padding can only grow the embedding (from_size={from_size} > "
            f"to_size={to_size}); use the bicubic resize (resize_bicubic_hw) to shrink it"
        )
    pad = (to_size - from_size) // 2 ** (stage_index + 2)
    widths = ((0, pad), (0, pad), (0, 0))
    if isinstance(embed, np.ndarray):
        return np.pad(embed, widths)
    return jnp.pad(embed, widths)
