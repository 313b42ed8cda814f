"""Training targets with static shapes: mmdet's ``MaxIoUAssigner``, ``RandomSampler`` and mask targets.

Ground truth comes padded: ``gt_boxes`` (G, 4), ``gt_labels`` (G,), ``gt_valid`` (G,).
Candidates (anchors or proposals) come with a ``valid`` mask; invalid candidates
take no part in the assignment (as mmdet's ``inside_flags``), invalid GT slots
neither.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vheat_jax.det.boxes import iou_matrix
from vheat_jax.det.model_config import AssignerConfig, SamplerConfig
from vheat_jax.det.roi_align import _axis_weights


def max_iou_assign(boxes: jax.Array, valid: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array,
                   cfg: AssignerConfig) -> tuple[jax.Array, jax.Array]:
    """mmdet ``MaxIoUAssigner.assign`` (``gt_max_assign_all=True``, no ignored boxes).

    Returns ``assigned`` (N,) int32: -1 ignore, 0 negative, i + 1 positive for GT i,
    and ``max_overlaps`` (N,).
    """
    overlaps = iou_matrix(gt_boxes, boxes)  # (G, N)
    overlaps = jnp.where(gt_valid[:, None], overlaps, 0.0)
    overlaps = jnp.where(valid[None, :], overlaps, -1.0)
    has_gt = jnp.any(gt_valid)
    max_overlaps = jnp.max(overlaps, axis=0)
    argmax = jnp.argmax(overlaps, axis=0)
    max_overlaps = jnp.where(has_gt, max_overlaps, jnp.where(valid, 0.0, -1.0))
    assigned = jnp.full(boxes.shape[:1], -1, jnp.int32)
    assigned = jnp.where((max_overlaps >= 0) & (max_overlaps < cfg.neg_iou_thr), 0, assigned)
    positive = (max_overlaps >= cfg.pos_iou_thr) & has_gt
    assigned = jnp.where(positive, argmax + 1, assigned)
    if cfg.match_low_quality:
        gt_max = jnp.max(overlaps, axis=1)  # (G,)
        eligible = gt_valid & (gt_max >= cfg.min_pos_iou)
        hits = eligible[:, None] & (overlaps == gt_max[:, None]) & valid[None, :]
        # mmdet loops over GTs in order, so the last GT that hits a box wins
        num_gt = gt_boxes.shape[0]
        last = num_gt - 1 - jnp.argmax(hits[::-1], axis=0)
        assigned = jnp.where(jnp.any(hits, axis=0), last + 1, assigned)
    return assigned, max_overlaps


def random_sample(key: jax.Array, assigned: jax.Array, cfg: SamplerConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """mmdet ``RandomSampler`` (``neg_pos_ub=-1``): at most ``num * pos_fraction`` random positives,
    then ``num - num_pos`` random negatives.

    Returns ``index`` (num,) into the candidates (positives first), ``is_pos`` (num,) and
    ``sampled`` (num,) validity. mmdet draws with ``randperm``; we rank by uniform keys, which
    is the same distribution (a uniformly random subset of the requested size).
    """
    num = cfg.num
    num_pos_expected = int(num * cfg.pos_fraction)
    pos = assigned > 0
    neg = assigned == 0
    key_pos, key_neg = jax.random.split(key)
    priority = jax.random.uniform(key_pos, assigned.shape)
    pos_score = jnp.where(pos, priority, -1.0)
    _, pos_index = jax.lax.top_k(pos_score, min(num_pos_expected, assigned.shape[0]))
    pos_taken = pos[pos_index]
    num_pos = jnp.sum(pos_taken)
    neg_score = jnp.where(neg, jax.random.uniform(key_neg, assigned.shape), -1.0)
    _, neg_index = jax.lax.top_k(neg_score, min(num, assigned.shape[0]))
    neg_rank = jnp.arange(neg_index.shape[0])
    neg_taken = neg[neg_index] & (neg_rank < num - num_pos)
    # positives first (compacted), then negatives
    pos_order = jnp.argsort(~pos_taken, stable=True)
    neg_order = jnp.argsort(~neg_taken, stable=True)
    pos_index, pos_taken = pos_index[pos_order], pos_taken[pos_order]
    neg_index, neg_taken = neg_index[neg_order], neg_taken[neg_order]
    slot = jnp.arange(num)
    from_pos = slot < num_pos
    neg_slot = jnp.clip(slot - num_pos, 0, neg_index.shape[0] - 1)
    pos_slot = jnp.clip(slot, 0, pos_index.shape[0] - 1)
    index = jnp.where(from_pos, pos_index[pos_slot], neg_index[neg_slot])
    sampled = jnp.where(from_pos, pos_taken[pos_slot], neg_taken[neg_slot])
    return index.astype(jnp.int32), from_pos & sampled, sampled


def mask_targets(rois: jax.Array, gt_index: jax.Array, gt_masks: jax.Array, size: int) -> jax.Array:
    """mmdet ``mask_target_single``: binarised RoIAlign (aligned, avg, adaptive grid, scale 1) of each
    RoI's assigned GT mask, RoIs clipped to the mask size first. (R, 4), (R,), (G, H, W) -> (R, S, S) float.
    """
    height, width = gt_masks.shape[1:]
    hi = jnp.asarray([width, height, width, height], jnp.float32)
    rois = jnp.clip(jax.lax.stop_gradient(rois), 0.0, hi)

    def one(args):
        roi, index = args
        x1, y1 = roi[0] - 0.5, roi[1] - 0.5
        roi_w, roi_h = roi[2] - roi[0], roi[3] - roi[1]
        grid_w = jnp.ceil(roi_w / size).astype(jnp.int32)
        grid_h = jnp.ceil(roi_h / size).astype(jnp.int32)
        slots_h = -(-(height + 1) // size)
        slots_w = -(-(width + 1) // size)
        wy, _, _ = _axis_weights(y1, roi_h / size, grid_h, size, slots_h, jnp.int32(height), height)
        wx, _, _ = _axis_weights(x1, roi_w / size, grid_w, size, slots_w, jnp.int32(width), width)
        mask = gt_masks[index].astype(jnp.float32)
        hp = jax.lax.Precision.HIGHEST
        pooled = jnp.matmul(jnp.matmul(wy, mask, precision=hp), wx.T, precision=hp)
        pooled = pooled / jnp.maximum(grid_h * grid_w, 1).astype(jnp.float32)
        return (pooled >= 0.5).astype(jnp.float32)

    return jax.lax.map(one, (rois, gt_index), batch_size=8)
