"""RoIAlign (mmcv / torchvision, ``aligned=True``, average pooling, adaptive sampling) in JAX.

Definition (torchvision ``roi_align`` CPU kernel = mmcv ``RoIAlign(pool_mode='avg')``),
per RoI on a feature map of size (H, W), output ``out x out``:

* corners scaled by ``1 / stride`` then shifted by -0.5; ``roi_h = y2 - y1``,
  ``bin_h = roi_h / out`` (no minimum size);
* per bin ``gy = ceil(roi_h / out)`` by ``gx = ceil(roi_w / out)`` samples at
  ``y = y1 + ph * bin_h + (iy + 0.5) * bin_h / gy`` (likewise x), averaged over
  ``max(gy * gx, 1)``;
* a sample with ``y < -1`` or ``y > H`` (or x likewise) contributes 0; otherwise
  ``y <= 0`` becomes 0, ``y_low = floor(y)``, and ``y_low >= H - 1`` samples the
  last row; bilinear weights ``(1 - ly, ly)``.

The bilinear weights of a sample are a product of a row factor and a column
factor, so the sum over a bin's sample grid is ``sum_r sum_c A[ph, r] B[pw, c] F[r, c]``
with per-bin row weights ``A`` (sum over the bin's y samples) and column weights
``B``. ``A`` and ``B`` are built by scattering the samples' 1-D weights (static
``GY``/``GX`` sample slots per bin, masked beyond ``gy``/``gx``), the RoI's support
rectangle (rows and columns touched by any sample, at most ``ceil(roi) + 2`` each) is
enumerated as ``max_window`` flat pixel slots, gathered, and contracted with
``A[ph, r] * B[pw, c]`` in one matmul. Everything has static shapes; the result
equals the kernel's up to float32 summation order, as long as the support fits in
``max_window`` pixels (always true with the bound :func:`level_window_bound`
computes for mmdet's level mapping, or with ``max_window = H * W``); RoIs whose
sample grid or support would not fit are reported in ``overflow``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

FINEST_SCALE = 56


def map_roi_levels(rois: jax.Array, num_levels: int, finest_scale: int = FINEST_SCALE) -> jax.Array:
    """mmdet ``SingleRoIExtractor.map_roi_levels``: ``floor(log2(sqrt(w h) / 56 + 1e-6))`` in [0, L-1]."""
    scale = jnp.sqrt((rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1]))
    levels = jnp.floor(jnp.log2(scale / jnp.float32(finest_scale) + jnp.float32(1e-6)))
    levels = jnp.where(jnp.isnan(levels), 0, levels)
    return jnp.clip(levels, 0, num_levels - 1).astype(jnp.int32)


def level_window_bound(shapes: Sequence[tuple[int, int]], strides: Sequence[int],
                       finest_scale: int = FINEST_SCALE) -> int:
    """The largest support (pixels) of a RoI that mmdet's level mapping sends to each level.

    A RoI goes to level l < L-1 only if ``sqrt(w h) < finest_scale * 2**(l+1)``, so
    its area on that level is below ``(finest_scale * 2**(l+1) / stride_l)**2``; its
    support is at most ``min(H, ceil(roi_h) + 2) x min(W, ceil(roi_w) + 2)``. The
    last level takes any size: its whole map.
    """
    bound = 0
    for level, ((height, width), stride) in enumerate(zip(shapes, strides)):
        if level == len(shapes) - 1:
            bound = max(bound, height * width)
            continue
        max_area = (finest_scale * 2 ** (level + 1) / stride) ** 2 * 1.001
        best = min(height, 3) * width  # ceil(roi_h) <= 1
        for rows in range(2, height + 1):  # rows = ceil(roi_h): roi_h > rows - 1
            cols = math.ceil(max_area / (rows - 1))
            best = max(best, min(height, rows + 2) * min(width, cols + 2))
        bound = max(bound, min(best, height * width))
    return bound


def _axis_weights(start, bin_size, grid, out: int, slots: int, size, length: int):
    """Per-bin 1-D weights ``(out, length)`` of one axis, plus the touched index range.

    ``start``/``bin_size`` float32 scalars, ``grid`` int32 samples per bin, ``size``
    the (dynamic) map extent along this axis, ``length`` the static array length.
    """
    bins = jnp.arange(out, dtype=jnp.float32)[:, None]
    steps = jnp.arange(slots, dtype=jnp.float32)[None, :] + jnp.float32(0.5)
    grid_f = jnp.maximum(grid, 1).astype(jnp.float32)
    pos = start + bins * bin_size + steps * bin_size / grid_f  # (out, slots), torchvision's order
    used = (jnp.arange(slots)[None, :] < grid) & ~((pos < -1.0) | (pos > size.astype(jnp.float32)))
    pos = jnp.where(pos <= 0, jnp.float32(0), pos)
    low = pos.astype(jnp.int32)  # trunc == floor for pos >= 0
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    pos = jnp.where(at_end, low.astype(jnp.float32), pos)
    frac = pos - low.astype(jnp.float32)
    w_low = jnp.where(used, jnp.float32(1) - frac, 0.0)
    w_high = jnp.where(used, frac, 0.0)
    rows = jnp.broadcast_to(jnp.arange(out)[:, None], low.shape)
    weights = jnp.zeros((out, length), jnp.float32)
    weights = weights.at[rows, jnp.clip(low, 0, length - 1)].add(w_low)
    weights = weights.at[rows, jnp.clip(high, 0, length - 1)].add(w_high)
    first = jnp.min(jnp.where(used, low, length))
    last = jnp.max(jnp.where(used, high, -1))
    return weights, first, last


def _dense_cost(shapes, output_size) -> int:
    return sum(output_size * h * w + output_size ** 2 * w for h, w in shapes)


def multilevel_roi_align(features: Sequence[jax.Array], strides: Sequence[int], rois: jax.Array,
                         levels: jax.Array, output_size: int, *, max_window: int | None = None,
                         max_grid: int | None = None, method: str = "auto",
                         chunk_size: int | None = None) -> tuple[jax.Array, jax.Array]:
    """RoIAlign of each RoI on its own level, for one image.

    ``features``: per level (H_l, W_l, C); ``rois``: (R, 4) in image pixels;
    ``levels``: (R,) int. Returns ``(roi_features (R, out, out, C), overflow (R,) bool)``.

    Two contractions of the same weights: ``"window"`` gathers each RoI's support
    (``max_window`` pixel slots; default every level's whole map, always exact) and
    contracts it with ``A[ph, r] B[pw, c]``; ``"dense"`` contracts every level's
    whole map with ``A`` and ``B`` (matmuls only, no gathers; cost grows with the
    map size). ``"auto"`` picks the cheaper one for these static shapes.
    ``max_grid``: static sample slots per bin and axis (default: enough for any RoI
    inside the maps, ``ceil((size + 1) / out)``; RoIs reaching far outside need more).
    """
    shapes = [tuple(f.shape[:2]) for f in features]
    channels = features[0].shape[-1]
    dtype = features[0].dtype
    max_h = max(h for h, _ in shapes)
    max_w = max(w for _, w in shapes)
    if max_window is None:
        max_window = max(h * w for h, w in shapes)
    max_window = int(min(max_window, max(h * w for h, w in shapes)))
    if method == "auto":
        method = "dense" if _dense_cost(shapes, output_size) <= output_size ** 2 * max_window else "window"
    slots_y = max_grid or math.ceil((max_h + 1) / output_size)
    slots_x = max_grid or math.ceil((max_w + 1) / output_size)
    rois = jax.lax.stop_gradient(rois.astype(jnp.float32))
    levels = levels.astype(jnp.int32)
    if rois.shape[0] == 0:
        return jnp.zeros((0, output_size, output_size, channels), dtype), jnp.zeros((0,), bool)

    def geometry(roi, scale):
        x1 = roi[0] * scale - jnp.float32(0.5)
        y1 = roi[1] * scale - jnp.float32(0.5)
        x2 = roi[2] * scale - jnp.float32(0.5)
        y2 = roi[3] * scale - jnp.float32(0.5)
        roi_w, roi_h = x2 - x1, y2 - y1
        grid_w = jnp.ceil(roi_w / jnp.float32(output_size)).astype(jnp.int32)
        grid_h = jnp.ceil(roi_h / jnp.float32(output_size)).astype(jnp.int32)
        bin_w = roi_w / jnp.float32(output_size)
        bin_h = roi_h / jnp.float32(output_size)
        count = jnp.maximum(grid_h * grid_w, 1).astype(jnp.float32)
        grid_overflow = (grid_h > slots_y) | (grid_w > slots_x)
        return x1, y1, bin_w, bin_h, grid_w, grid_h, count, grid_overflow

    if method == "dense":
        hp = jax.lax.Precision.HIGHEST
        out = jnp.zeros((rois.shape[0], output_size, output_size, channels), jnp.float32)
        overflow = jnp.zeros((rois.shape[0],), bool)
        for level, ((height, width), stride, feature) in enumerate(zip(shapes, strides, features)):
            def weights(roi, height=height, width=width, scale=np.float32(1.0 / stride)):
                x1, y1, bin_w, bin_h, grid_w, grid_h, count, grid_overflow = geometry(roi, scale)
                wy, _, _ = _axis_weights(y1, bin_h, grid_h, output_size, slots_y, jnp.int32(height), height)
                wx, _, _ = _axis_weights(x1, bin_w, grid_w, output_size, slots_x, jnp.int32(width), width)
                return wy / count, wx, grid_overflow
            wy, wx, grid_overflow = jax.vmap(weights)(rois)
            on_level = levels == level
            wy = jnp.where(on_level[:, None, None], wy, 0.0)
            rows = jnp.einsum("rph,hwc->rpwc", wy.astype(dtype), feature, precision=hp,
                              preferred_element_type=jnp.float32)
            out = out + jnp.einsum("rpwc,rqw->rpqc", rows, wx, precision=hp)
            overflow = overflow | (on_level & grid_overflow)
        return out.astype(dtype), overflow

    flat = jnp.concatenate([f.reshape(-1, channels) for f in features], axis=0)
    offsets = np.cumsum([0] + [h * w for h, w in shapes])[:-1]
    table_h = jnp.asarray([h for h, _ in shapes], jnp.int32)
    table_w = jnp.asarray([w for _, w in shapes], jnp.int32)
    table_offset = jnp.asarray(offsets, jnp.int32)
    table_scale = jnp.asarray([1.0 / s for s in strides], jnp.float32)

    def one(roi, level):
        height, width = table_h[level], table_w[level]
        x1, y1, bin_w, bin_h, grid_w, grid_h, count, grid_overflow = geometry(roi, table_scale[level])
        wy, y_lo, y_hi = _axis_weights(y1, bin_h, grid_h, output_size, slots_y, height, max_h)
        wx, x_lo, x_hi = _axis_weights(x1, bin_w, grid_w, output_size, slots_x, width, max_w)
        win_h = jnp.maximum(y_hi - y_lo + 1, 0)
        win_w = jnp.maximum(x_hi - x_lo + 1, 0)
        k = jnp.arange(max_window)
        row = y_lo + k // jnp.maximum(win_w, 1)
        col = x_lo + k % jnp.maximum(win_w, 1)
        inside = k < win_h * win_w
        row = jnp.where(inside, row, 0)
        col = jnp.where(inside, col, 0)
        pixels = flat[table_offset[level] + row * width + col]  # (K, C)
        weights = wy[:, None, row] * wx[None, :, col] * inside  # (out, out, K)
        pooled = jnp.einsum("pqk,kc->pqc", weights.astype(dtype), pixels,
                            preferred_element_type=jnp.float32) / count
        overflow = (win_h * win_w > max_window) | grid_overflow
        return pooled.astype(dtype), overflow

    if chunk_size is None:
        chunk_size = max(1, min(rois.shape[0], (8 << 20) // max(1, max_window * channels)))
    return jax.lax.map(lambda args: one(*args), (rois, levels), batch_size=chunk_size)


def roi_align(feature: jax.Array, rois: jax.Array, stride: int, output_size: int, *,
              max_window: int | None = None, max_grid: int | None = None,
              method: str = "auto") -> tuple[jax.Array, jax.Array]:
    """Single-level RoIAlign: ``feature`` (H, W, C), ``rois`` (R, 4) -> ((R, out, out, C), overflow (R,)).

    The dense method never overflows its window (it has none); its ``overflow`` reports the sample grid only.
    """
    return multilevel_roi_align([feature], [stride], rois, jnp.zeros(rois.shape[:1], jnp.int32),
                                output_size, max_window=max_window, max_grid=max_grid, method=method)
