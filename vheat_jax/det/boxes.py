"""Boxes: anchors, the delta (x, y, w, h) coder, IoU; all (x1, y1, x2, y2), float32, no ``+1``.

Every formula follows mmdetection 3.x (``AnchorGenerator``, ``DeltaXYWHBBoxCoder``,
``BboxOverlaps2D``) operation by operation, so float32 results round the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

WH_RATIO_CLIP = 16 / 1000
MAX_LOG_RATIO = abs(math.log(WH_RATIO_CLIP))  # 4.1352: clamp of dw, dh before exp


def base_anchors(stride: int, ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 scales: Sequence[float] = (8.0,)) -> np.ndarray:
    """mmdet ``AnchorGenerator.gen_single_level_base_anchors`` (center offset 0), float32 (A, 4).

    Order: ratio-major, then scale (``ws = (w * w_ratios[:, None] * scales[None, :]).view(-1)``).
    """
    size = np.float32(stride)
    ratios = np.asarray(ratios, np.float32)
    scales = np.asarray(scales, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    ws = (size * w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (size * h_ratios[:, None] * scales[None, :]).reshape(-1)
    half = np.float32(0.5)
    return np.stack([-half * ws, -half * hs, half * ws, half * hs], axis=-1).astype(np.float32)


def grid_anchors(base: np.ndarray, stride: int, height: int, width: int) -> np.ndarray:
    """All anchors of one level, index ``(y * width + x) * A + a`` (float32, (H*W*A, 4))."""
    shift_x = np.arange(width, dtype=np.float32) * np.float32(stride)
    shift_y = np.arange(height, dtype=np.float32) * np.float32(stride)
    xx = np.tile(shift_x, height)
    yy = np.repeat(shift_y, width)
    shifts = np.stack([xx, yy, xx, yy], axis=-1)
    return (base[None, :, :] + shifts[:, None, :]).reshape(-1, 4).astype(np.float32)


def anchor_valid_flags(num_anchors: int, stride: int, height: int, width: int,
                       valid_hw: jax.Array) -> jax.Array:
    """mmdet ``valid_flags``: anchors whose location lies in ``ceil(pad_shape / stride)`` of the image."""
    valid_h = jnp.minimum(jnp.ceil(valid_hw[0] / stride).astype(jnp.int32), height)
    valid_w = jnp.minimum(jnp.ceil(valid_hw[1] / stride).astype(jnp.int32), width)
    ys = jnp.arange(height)[:, None]
    xs = jnp.arange(width)[None, :]
    flags = (ys < valid_h) & (xs < valid_w)
    return jnp.repeat(flags.reshape(-1), num_anchors)


def decode(rois: jax.Array, deltas: jax.Array, stds: Sequence[float], max_hw: jax.Array | None,
           means: Sequence[float] = (0.0, 0.0, 0.0, 0.0)) -> jax.Array:
    """mmdet ``delta2bbox`` (no center clamp): rois (..., 4), deltas (..., 4) -> boxes (..., 4).

    ``max_hw`` = (h, w) of the resized image: x clipped to [0, w], y to [0, h].
    """
    deltas = deltas * jnp.asarray(stds, jnp.float32) + jnp.asarray(means, jnp.float32)
    dxy, dwh = deltas[..., :2], deltas[..., 2:]
    pxy = (rois[..., :2] + rois[..., 2:]) * 0.5
    pwh = rois[..., 2:] - rois[..., :2]
    dxy_wh = pwh * dxy
    dwh = jnp.clip(dwh, -MAX_LOG_RATIO, MAX_LOG_RATIO)
    gxy = pxy + dxy_wh
    gwh = pwh * jnp.exp(dwh)
    boxes = jnp.concatenate([gxy - gwh * 0.5, gxy + gwh * 0.5], axis=-1)
    if max_hw is not None:
        max_hw = jnp.asarray(max_hw, jnp.float32)
        hi = jnp.stack([max_hw[1], max_hw[0], max_hw[1], max_hw[0]])
        boxes = jnp.clip(boxes, 0.0, hi)
    return boxes


def encode(proposals: jax.Array, gt: jax.Array, stds: Sequence[float],
           means: Sequence[float] = (0.0, 0.0, 0.0, 0.0)) -> jax.Array:
    """mmdet ``bbox2delta``: the deltas that decode ``proposals`` into ``gt``."""
    pxy = (proposals[..., :2] + proposals[..., 2:]) * 0.5
    pwh = proposals[..., 2:] - proposals[..., :2]
    gxy = (gt[..., :2] + gt[..., 2:]) * 0.5
    gwh = gt[..., 2:] - gt[..., :2]
    dxy = (gxy - pxy) / pwh
    dwh = jnp.log(gwh / pwh)
    deltas = jnp.concatenate([dxy, dwh], axis=-1)
    return (deltas - jnp.asarray(means, jnp.float32)) / jnp.asarray(stds, jnp.float32)


def area(boxes: jax.Array) -> jax.Array:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def iou_matrix(a: jax.Array, b: jax.Array, eps: float = 1e-6) -> jax.Array:
    """mmdet ``bbox_overlaps`` (mode iou, aligned False): (N, 4) x (M, 4) -> (N, M), union >= eps."""
    area_a, area_b = area(a), area(b)
    lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
    rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = jnp.clip(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = jnp.maximum(area_a[:, None] + area_b[None, :] - inter, eps)
    return inter / union
