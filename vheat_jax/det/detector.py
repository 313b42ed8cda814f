"""Mask R-CNN inference with static shapes: proposals, RoI heads, NMS, masks - all under ``jit``.

:func:`predict` follows mmdetection's ``MaskRCNN.predict`` (``RPNHead.predict_by_feat``,
``StandardRoIHead.predict_bbox`` / ``predict_mask``, ``multiclass_nms``) step by step
for a batch of images padded to one shape, each with its own resized size
``img_hw``. Variable-length sets are padded arrays with validity masks:

* RPN: per level the ``nms_pre`` best anchors (levels with fewer anchors are kept
  whole, in anchor order), decoded and clipped, zero-size boxes invalid, one NMS
  over all levels with the level-offset trick, the first ``max_per_img`` kept:
  ``proposals`` (B, max_per_img, 4) + ``proposal_valid``.
* R-CNN: (proposal, class) candidates above ``score_thr`` (at most
  ``candidate_capacity``, the highest scores), class-offset NMS, the first
  ``max_per_img``: ``boxes`` (B, 100, 4) in the resized-image frame, ``scores``,
  ``labels``, ``valid``.
* Masks: the label's channel of the mask head, sigmoid: ``mask_probs`` (B, 100, 28, 28).

Rescaling to the original image and mask pasting are in :mod:`vheat_jax.det.masks`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vheat_jax.det import boxes as box_ops
from vheat_jax.det.model import MaskRCNN
from vheat_jax.det.model_config import MaskRCNNConfig, RCNNTestConfig, RPNTestConfig
from vheat_jax.det.nms import batched_nms
from vheat_jax.det.roi_align import level_window_bound, map_roi_levels, multilevel_roi_align


def level_anchors(config: MaskRCNNConfig, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Anchors (H*W*A, 4) of every level for feature shapes ``shapes``."""
    return [box_ops.grid_anchors(box_ops.base_anchors(s, config.anchor_ratios, config.anchor_scales), s, h, w)
            for s, (h, w) in zip(config.anchor_strides, shapes)]


def rpn_candidates(logits: Sequence[jax.Array], deltas: Sequence[jax.Array], anchors: Sequence[np.ndarray],
                   img_hw: jax.Array, nms_pre: int, stds: Sequence[float]) -> dict[str, jax.Array]:
    """One image: per level (H, W, A) logits and (H, W, 4A) deltas -> the decoded, clipped candidates."""
    all_scores, all_deltas, all_anchors, all_levels = [], [], [], []
    for level, (logit, delta, anchor) in enumerate(zip(logits, deltas, anchors)):
        scores = jax.nn.sigmoid(logit.reshape(-1))
        delta = delta.reshape(-1, 4)
        anchor = jnp.asarray(anchor)
        if 0 < nms_pre < scores.shape[0]:
            scores, index = jax.lax.top_k(scores, nms_pre)
            delta, anchor = delta[index], anchor[index]
        all_scores.append(scores)
        all_deltas.append(delta)
        all_anchors.append(anchor)
        all_levels.append(jnp.full(scores.shape, level, jnp.int32))
    scores = jnp.concatenate(all_scores)
    boxes = box_ops.decode(jnp.concatenate(all_anchors), jnp.concatenate(all_deltas), stds, img_hw)
    return {"boxes": boxes, "scores": scores, "levels": jnp.concatenate(all_levels)}


def rpn_proposals(candidates: dict[str, jax.Array], cfg: RPNTestConfig) -> dict[str, jax.Array]:
    """Size filter, per-level NMS (offset trick), the ``max_per_img`` best."""
    boxes, scores = candidates["boxes"], candidates["scores"]
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    valid = (w > cfg.min_bbox_size) & (h > cfg.min_bbox_size)
    index, keep = batched_nms(boxes, scores, candidates["levels"], valid, cfg.iou_threshold, cfg.max_per_img)
    return {"boxes": jnp.where(keep[:, None], boxes[index], 0.0), "scores": jnp.where(keep, scores[index], 0.0),
            "valid": keep}


def roi_levels_and_window(config: MaskRCNNConfig, features: Sequence[jax.Array], rois: jax.Array):
    shapes = [tuple(f.shape[-3:-1]) for f in features]
    levels = map_roi_levels(rois, len(features), config.finest_scale)
    return levels, level_window_bound(shapes, config.roi_strides, config.finest_scale)


def extract_rois(config: MaskRCNNConfig, features: Sequence[jax.Array], rois: jax.Array,
                 output_size: int) -> tuple[jax.Array, jax.Array]:
    """mmdet ``SingleRoIExtractor`` for a batch: features (B, H_l, W_l, C), rois (B, R, 4).

    Returns RoI features (B, R, S, S, C) and an overflow flag (B, R).
    """
    levels, window = roi_levels_and_window(config, features, rois)
    fn = functools.partial(multilevel_roi_align, strides=config.roi_strides, output_size=output_size,
                           max_window=window)
    return jax.vmap(lambda f, r, lv: fn(f, rois=r, levels=lv))(list(features), rois, levels)


def rcnn_detections(proposals: jax.Array, proposal_valid: jax.Array, cls_score: jax.Array,
                    bbox_pred: jax.Array, img_hw: jax.Array, stds: Sequence[float],
                    cfg: RCNNTestConfig) -> dict[str, jax.Array]:
    """One image: ``BBoxHead.predict_by_feat`` + ``multiclass_nms`` (boxes stay in the resized frame)."""
    num_rois, num_classes = bbox_pred.shape[0], bbox_pred.shape[1] // 4
    probs = jax.nn.softmax(cls_score, axis=-1)
    decoded = box_ops.decode(jnp.repeat(proposals[:, None, :], num_classes, axis=1),
                             bbox_pred.reshape(num_rois, num_classes, 4), stds, img_hw)
    scores = probs[:, :num_classes].reshape(-1)  # proposal-major, as mmdet flattens
    boxes = decoded.reshape(-1, 4)
    labels = jnp.tile(jnp.arange(num_classes, dtype=jnp.int32), num_rois)
    valid = (scores > jnp.float32(cfg.score_thr)) & jnp.repeat(proposal_valid, num_classes)
    num_candidates = jnp.sum(valid)
    capacity = min(cfg.candidate_capacity, scores.shape[0])
    if capacity < scores.shape[0]:
        _, index = jax.lax.top_k(jnp.where(valid, scores, -jnp.inf), capacity)
        index = jnp.sort(index)  # keep mmdet's candidate order (stable ties in NMS)
        boxes, scores, labels, valid = boxes[index], scores[index], labels[index], valid[index]
    index, keep = batched_nms(boxes, scores, labels, valid, cfg.iou_threshold, cfg.max_per_img)
    return {
        "boxes": jnp.where(keep[:, None], boxes[index], 0.0),
        "scores": jnp.where(keep, scores[index], 0.0),
        "labels": jnp.where(keep, labels[index], 0),
        "valid": keep,
        "probs": probs,
        "decoded": decoded.reshape(num_rois, -1),
        # mmdet has no cap; more candidates than the capacity may change the result
        "candidate_overflow": num_candidates > capacity,
    }


def predict(model: MaskRCNN, variables, images: jax.Array, img_hw: jax.Array, *,
            intermediates: bool = False) -> dict[str, jax.Array]:
    """The whole test-time forward pass for a batch (B, Hp, Wp, 3) with per-image ``img_hw`` (B, 2).

    Returns ``boxes`` (B, N, 4) in the resized-image frame, ``scores``, ``labels``,
    ``valid`` (B, N), ``mask_probs`` (B, N, 28, 28) and ``overflow`` (B,) (a static
    capacity was exceeded: the result may differ from mmdetection). With
    ``intermediates``, also every intermediate array the fixtures record.
    """
    config: MaskRCNNConfig = model.config
    img_hw = jnp.asarray(img_hw, jnp.float32)
    backbone_feats, feats = model.apply(variables, images, method=MaskRCNN.features)
    logits, deltas = model.apply(variables, feats, method=MaskRCNN.rpn)
    anchors = level_anchors(config, [f.shape[1:3] for f in feats])

    def proposals_one(logit, delta, hw):
        cands = rpn_candidates(logit, delta, anchors, hw, config.rpn_test.nms_pre, config.rpn_stds)
        return cands, rpn_proposals(cands, config.rpn_test)

    candidates, proposals = jax.vmap(proposals_one)(logits, deltas, img_hw)
    roi_feats_input = feats[:len(config.roi_strides)]
    roi_feats, roi_overflow = extract_rois(config, roi_feats_input, proposals["boxes"], config.roi_size)
    batch, num_props = proposals["boxes"].shape[:2]
    cls_score, bbox_pred = model.apply(variables, roi_feats.reshape(batch * num_props, *roi_feats.shape[2:]),
                                       method=MaskRCNN.box)
    cls_score = cls_score.reshape(batch, num_props, -1)
    bbox_pred = bbox_pred.reshape(batch, num_props, -1)
    dets = jax.vmap(lambda p, v, c, b, hw: rcnn_detections(p, v, c, b, hw, config.rcnn_stds, config.rcnn_test))(
        proposals["boxes"], proposals["valid"], cls_score, bbox_pred, img_hw)
    mask_feats, mask_overflow = extract_rois(config, roi_feats_input, dets["boxes"], config.mask_roi_size)
    num_dets = dets["boxes"].shape[1]
    mask_logits = model.apply(variables, mask_feats.reshape(batch * num_dets, *mask_feats.shape[2:]),
                              method=MaskRCNN.mask)
    mask_logits = mask_logits.reshape(batch, num_dets, *mask_logits.shape[1:])
    chosen = jnp.take_along_axis(mask_logits, dets["labels"][:, :, None, None, None], axis=-1)[..., 0]
    overflow = (dets["candidate_overflow"] | jnp.any(roi_overflow & proposals["valid"], axis=1)
                | jnp.any(mask_overflow & dets["valid"], axis=1))
    out = {
        "boxes": dets["boxes"], "scores": dets["scores"], "labels": dets["labels"], "valid": dets["valid"],
        "mask_probs": jax.nn.sigmoid(chosen), "overflow": overflow,
    }
    if intermediates:
        out.update(
            backbone=backbone_feats, fpn=feats, rpn_logits=logits, rpn_deltas=deltas,
            rpn_candidates=candidates, proposals=proposals, roi_feats=roi_feats, cls_score=cls_score,
            bbox_pred=bbox_pred, class_probs=dets["probs"], decoded=dets["decoded"], mask_roi_feats=mask_feats,
            mask_logits=mask_logits,
        )
    return out
