"""Boxes back to the original image and mask pasting (mmdet ``FCNMaskHead._do_paste_mask``).

A detection's M x M probability map is sampled at every original-image pixel
centre with ``grid_sample(bilinear, align_corners=False, padding zeros)`` at
``g = ((p + 0.5) - x1) / (x2 - x1) * 2 - 1`` (the box in original pixels, infinite
values replaced by 0 as mmdet does), then ``>= mask_thr_binary``. The sampling grid
is separable (x depends on the column only, y on the row only) and so are
bilinear weights with zero padding, so the paste is ``Wy @ P @ Wx^T`` with
one-hot-pair weight matrices: exact bilinear values, computed as two small
matmuls per detection. :func:`paste_masks` is the JAX version (static output
shape, under ``jit``); :func:`paste_masks_numpy` restricts each detection to its
box's region (mmdet's ``skip_empty``) for fast evaluation on the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rescale_boxes(boxes, scale_factor):
    """Resized frame -> original frame: divide by (w_scale, h_scale, w_scale, h_scale) in float32."""
    sf = np.asarray(scale_factor, np.float32)
    return boxes / jnp.asarray(np.concatenate([sf, sf])) if isinstance(boxes, jax.Array) else \
        (np.asarray(boxes, np.float32) / np.concatenate([sf, sf]).astype(np.float32))


def _axis_matrix(lo, hi, pixels, size: int, xp):
    """(N, P, size) bilinear weights of ``grid_sample`` along one axis at pixel centres ``pixels``."""
    g = ((pixels[None, :] + xp.float32(0.5)) - lo[:, None]) / (hi - lo)[:, None] * xp.float32(2) - xp.float32(1)
    g = xp.where(xp.isinf(g), xp.float32(0), g)
    src = (g + xp.float32(1)) * xp.float32(size / 2) - xp.float32(0.5)  # torch's vectorised unnormalize
    low = xp.floor(src)
    frac = src - low
    cells = xp.arange(size, dtype=xp.float32)
    return (xp.where(cells == low[..., None], (xp.float32(1) - frac)[..., None], xp.float32(0))
            + xp.where(cells == (low + 1)[..., None], frac[..., None], xp.float32(0)))


def paste_masks(probs: jax.Array, boxes: jax.Array, out_shape: tuple[int, int],
                threshold: float | None = 0.5) -> jax.Array:
    """(N, M, M) probabilities, (N, 4) boxes in original pixels -> (N, H, W) bool (float if threshold None)."""
    height, width = out_shape
    size = probs.shape[-1]
    wy = _axis_matrix(boxes[:, 1], boxes[:, 3], jnp.arange(height, dtype=jnp.float32), size, jnp)
    wx = _axis_matrix(boxes[:, 0], boxes[:, 2], jnp.arange(width, dtype=jnp.float32), size, jnp)
    hp = jax.lax.Precision.HIGHEST
    pasted = jnp.einsum("nyr,nrc,nxc->nyx", wy, probs.astype(jnp.float32), wx, precision=hp)
    return pasted if threshold is None else pasted >= jnp.float32(threshold)


def paste_masks_numpy(probs: np.ndarray, boxes: np.ndarray, out_shape: tuple[int, int],
                      threshold: float = 0.5) -> np.ndarray:
    """NumPy paste, each detection only within its box widened by one pixel (mmdet's ``skip_empty``)."""
    height, width = out_shape
    probs = np.asarray(probs, np.float32)
    boxes = np.asarray(boxes, np.float32)
    out = np.zeros((len(boxes), height, width), bool)
    size = probs.shape[-1]
    for n, (box, prob) in enumerate(zip(boxes, probs)):
        x0 = int(max(np.floor(box[0]) - 1, 0))
        y0 = int(max(np.floor(box[1]) - 1, 0))
        x1 = int(min(np.ceil(box[2]) + 1, width))
        y1 = int(min(np.ceil(box[3]) + 1, height))
        if x1 <= x0 or y1 <= y0:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            wy = _axis_matrix(box[None, 1], box[None, 3], np.arange(y0, y1, dtype=np.float32), size, np)[0]
            wx = _axis_matrix(box[None, 0], box[None, 2], np.arange(x0, x1, dtype=np.float32), size, np)[0]
        out[n, y0:y1, x0:x1] = (wy @ prob @ wx.T) >= np.float32(threshold)
    return out
