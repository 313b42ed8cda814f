"""PyTorch-identical bilinear resizing and adaptive average pooling, as small (out, in) matrices.

Both are linear along each spatial axis, so each is written down once per
(input size, output size) as a numpy matrix and applied with ``einsum`` at
HIGHEST precision (TPU/GPU matmuls would otherwise take bfloat16 passes).
Shapes are static under ``jit``, so the matrices are compile-time constants.

* :func:`bilinear_matrix` - ``F.interpolate(mode="bilinear", align_corners=False)``
  without antialiasing (also when shrinking), as mmseg's ``resize`` calls it. For large
  maps at inference, :func:`resize_hwc_with_taps` applies the same resize as two-tap
  gathers (:func:`bilinear_taps`).
* :func:`adaptive_pool_matrix` - ``nn.AdaptiveAvgPool2d``, whose bins overlap
  when the output size does not divide the input size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST


@functools.cache
def bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch's 1-D bilinear resize as two taps per output: ``(i0, i1, w0, w1)``, ``y[o] = w0 x[i0] + w1 x[i1]``.

    Output ``o`` reads ``src = max((o + 0.5) * in / out - 0.5, 0)``, ``i0 = floor(src)``,
    ``i1 = min(i0 + 1, in - 1)``, ``w1 = src - i0``, ``w0 = 1 - w1``. The coordinate is
    rounded to float32 once, as torch's float32 kernel computes it.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in={in_size}, out={out_size}")
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = np.maximum((scale * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32), np.float32(0))
    i0 = np.floor(src).astype(np.int32)
    w1 = src - i0.astype(np.float32)
    return i0, np.minimum(i0 + 1, in_size - 1), np.float32(1) - w1, w1


@functools.cache
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The (out_size, in_size) matrix of :func:`bilinear_taps`; equal sizes give exactly the identity."""
    i0, i1, w0, w1 = bilinear_taps(in_size, out_size)
    m = np.zeros((out_size, in_size), np.float32)
    np.add.at(m, (np.arange(out_size), i0), w0)
    np.add.at(m, (np.arange(out_size), i1), w1)
    return m


def resize_hwc_with_taps(x: jax.Array, rows, cols) -> jax.Array:
    """Bilinear resize of an (H, W, C) array given :func:`bilinear_taps` for each axis (arrays may be traced).

    Two gathers per axis instead of a matmul: for large maps (whole-image logits) this is
    O(output) rather than O(output x input) work.
    """
    (r0, r1, a0, a1), (c0, c1, b0, b1) = rows, cols
    x = x[r0] * a0[:, None, None] + x[r1] * a1[:, None, None]
    return x[:, c0] * b0[None, :, None] + x[:, c1] * b1[None, :, None]


@functools.cache
def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Matrix P (out_size, in_size): row ``i`` averages ``[floor(i*n/s), ceil((i+1)*n/s))``.

    This is ``nn.AdaptiveAvgPool2d`` along one axis; bins overlap when ``s`` does
    not divide ``n`` and repeat when ``s > n``.
    """
    p = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil
        p[i, start:end] = 1.0 / (end - start)
    return p.astype(np.float32)


def apply_hw(x: jax.Array, mh, mw) -> jax.Array:
    """``mh`` along H and ``mw`` along W of an NHWC array (matrices may be traced arrays)."""
    x = jnp.einsum("oh,nhwc->nowc", jnp.asarray(mh, x.dtype), x, precision=HIGHEST)
    return jnp.einsum("pw,nowc->nopc", jnp.asarray(mw, x.dtype), x, precision=HIGHEST)


def resize_bilinear(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """NHWC bilinear resize equal to ``F.interpolate(mode="bilinear", align_corners=False)``."""
    h, w = x.shape[1:3]
    if (h, w) == tuple(out_hw):
        return x
    return apply_hw(x, bilinear_matrix(h, out_hw[0]), bilinear_matrix(w, out_hw[1]))


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """NHWC ``nn.AdaptiveAvgPool2d(size)``."""
    h, w = x.shape[1:3]
    return apply_hw(x, adaptive_pool_matrix(h, size), adaptive_pool_matrix(w, size))

