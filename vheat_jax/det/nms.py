"""Greedy NMS in JAX with static shapes (torchvision / mmcv semantics), usable under ``jit`` and ``vmap``.

Definition (torchvision ``nms`` CPU kernel, which mmcv's ``nms`` equals): sort by
score, descending and stable (ties keep input order); walk the sorted list; a box
not yet suppressed is kept and suppresses every later box whose
``IoU = inter / (area_i + area_j - inter)`` (``area = (x2 - x1) * (y2 - y1)``, no
``+1``) exceeds the threshold (strictly).

Static shapes: inputs are padded arrays with a ``valid`` mask; the output is
``max_output`` indices in descending score order plus their count. The walk is a
``while_loop`` over kept boxes only (it jumps from one kept box to the next
unsuppressed one), and stops after ``max_output`` kept boxes: greedy NMS decides
each box from higher-scoring boxes only, so the first ``max_output`` kept boxes
are exactly those of the full run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sort_by_score(scores: jax.Array, valid: jax.Array) -> jax.Array:
    """Indices: valid entries by descending score (stable), then the invalid ones."""
    order = jnp.argsort(-scores, stable=True)
    return order[jnp.argsort(~valid[order], stable=True)]


def _nms_sorted(boxes: jax.Array, valid: jax.Array, iou_threshold: float, max_output: int):
    """NMS over boxes already in descending score order; returns (positions (max_output,), count)."""
    n = boxes.shape[0]
    positions = jnp.arange(n)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    threshold = jnp.float32(iou_threshold)

    def next_candidate(after, suppressed):
        candidate = valid & ~suppressed & (positions > after)
        return jnp.where(candidate.any(), jnp.argmax(candidate), n)

    def cond(state):
        current, count, _, _ = state
        return (current < n) & (count < max_output)

    def body(state):
        current, count, suppressed, keep = state
        box = boxes[current]
        w = jnp.maximum(jnp.float32(0), jnp.minimum(box[2], x2) - jnp.maximum(box[0], x1))
        h = jnp.maximum(jnp.float32(0), jnp.minimum(box[3], y2) - jnp.maximum(box[1], y1))
        inter = w * h
        iou = inter / (areas[current] + areas - inter)
        suppressed = suppressed | ((iou > threshold) & (positions > current))
        keep = keep.at[count].set(current)
        return next_candidate(current, suppressed), count + 1, suppressed, keep

    if n == 0:
        return jnp.zeros((max_output,), jnp.int32), jnp.zeros((), jnp.int32)
    suppressed = jnp.zeros((n,), bool)
    first = next_candidate(-1, suppressed)
    keep = jnp.zeros((max_output,), jnp.int32)
    _, count, _, keep = jax.lax.while_loop(cond, body, (first, jnp.zeros((), jnp.int32), suppressed, keep))
    return keep, count


def nms(boxes: jax.Array, scores: jax.Array, valid: jax.Array, iou_threshold: float,
        max_output: int) -> tuple[jax.Array, jax.Array]:
    """``(indices (max_output,) int32, keep (max_output,) bool)``: kept boxes in descending score order.

    ``indices`` point into the inputs; entries with ``keep == False`` are padding.
    """
    boxes = jax.lax.stop_gradient(boxes)
    scores = jax.lax.stop_gradient(scores)
    order = sort_by_score(scores, valid)
    positions, count = _nms_sorted(boxes[order], valid[order], iou_threshold, max_output)
    keep = jnp.arange(max_output) < count
    return jnp.where(keep, order[positions], 0).astype(jnp.int32), keep


def batched_nms(boxes: jax.Array, scores: jax.Array, groups: jax.Array, valid: jax.Array,
                iou_threshold: float, max_output: int) -> tuple[jax.Array, jax.Array]:
    """mmcv ``batched_nms`` (below its 10000-box split threshold): NMS within each group.

    Done as mmcv does it, by shifting each group's boxes by
    ``group * (max coordinate + 1)`` (the maximum over the valid boxes) and running
    one NMS, so that the float32 IoUs are those of mmcv, rounding included.
    """
    boxes = jax.lax.stop_gradient(boxes)
    max_coordinate = jnp.max(jnp.where(valid[:, None], boxes, -jnp.inf))
    offsets = groups.astype(jnp.float32) * (max_coordinate + jnp.float32(1))
    shifted = boxes + jnp.where(valid, offsets, 0.0)[:, None]
    return nms(shifted, scores, valid, iou_threshold, max_output)
