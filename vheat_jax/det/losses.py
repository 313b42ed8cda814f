"""Mask R-CNN training loss (mmdetection's ``MaskRCNN.loss``) with static shapes, under ``jit``.

Batch (all arrays padded to static shapes):

* ``image`` (B, Hp, Wp, 3) float32, normalised; ``img_hw`` (B, 2): resized size of each image;
* ``gt_boxes`` (B, G, 4) in the resized frame, ``gt_labels`` (B, G) int32 in [0, K),
  ``gt_valid`` (B, G) bool, ``gt_masks`` (B, G, Hp, Wp) uint8 (0/1);
* ``image_valid`` (B,) bool: padding images of a short last batch contribute nothing.

Normalisation follows mmdetection per GPU: each loss is a sum over a group of
``group_size`` consecutive images divided by that group's count (RPN: sampled
anchors; R-CNN: sampled RoIs; mask: positive RoIs x 28 x 28), and the total is
the mean over groups, which is what data-parallel mmdetection with
``group_size`` images per GPU optimises. It does not depend on how the batch is
split over devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vheat_jax.det import boxes as box_ops
from vheat_jax.det import detector, targets
from vheat_jax.det.model import MaskRCNN
from vheat_jax.det.model_config import MaskRCNNConfig

LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask")


def _rpn_image_loss(config: MaskRCNNConfig, anchors: np.ndarray, level_shapes, logits, deltas, img_hw,
                    gt_boxes, gt_labels, gt_valid, key):
    del gt_labels
    pad_hw = jnp.ceil(img_hw / 32.0) * 32.0  # the image's own pad_shape (mmdet valid_flags)
    valid = jnp.concatenate([
        box_ops.anchor_valid_flags(config.num_anchors, stride, h, w, pad_hw)
        for stride, (h, w) in zip(config.anchor_strides, level_shapes)])
    anchors = jnp.asarray(anchors)
    assigned, _ = targets.max_iou_assign(anchors, valid, gt_boxes, gt_valid, config.train.rpn_assigner)
    index, is_pos, sampled = targets.random_sample(key, assigned, config.train.rpn_sampler)
    logit = jnp.concatenate([x.reshape(-1) for x in logits])[index]
    delta = jnp.concatenate([x.reshape(-1, 4) for x in deltas])[index]
    cls = optax.sigmoid_binary_cross_entropy(logit, is_pos.astype(jnp.float32))
    gt = gt_boxes[jnp.maximum(assigned[index] - 1, 0)]
    target = jax.lax.stop_gradient(box_ops.encode(anchors[index], gt, config.rpn_stds))
    l1 = jnp.sum(jnp.abs(delta - jnp.where(is_pos[:, None], target, 0.0)), axis=-1)
    count = jnp.sum(sampled).astype(jnp.float32)
    return {"loss_rpn_cls": (jnp.sum(cls * sampled), count), "loss_rpn_bbox": (jnp.sum(l1 * is_pos), count)}


def _sample_rois(config: MaskRCNNConfig, proposals, proposal_valid, gt_boxes, gt_labels, gt_valid, key):
    assigned, _ = targets.max_iou_assign(proposals, proposal_valid, gt_boxes, gt_valid, config.train.rcnn_assigner)
    num_gt = gt_boxes.shape[0]
    if config.train.rcnn_sampler.add_gt_as_proposals:
        candidates = jnp.concatenate([gt_boxes, proposals])
        gt_self = jnp.where(gt_valid, jnp.arange(1, num_gt + 1), -1)
        assigned = jnp.concatenate([gt_self, assigned])
    else:
        candidates = proposals
    index, is_pos, sampled = targets.random_sample(key, assigned, config.train.rcnn_sampler)
    gt_index = jnp.maximum(assigned[index] - 1, 0)
    labels = jnp.where(is_pos, gt_labels[gt_index], config.num_classes)
    return candidates[index], labels, is_pos, sampled, gt_index


def _group_mean(sums: jax.Array, counts: jax.Array, group_size: int) -> jax.Array:
    batch = sums.shape[0]
    if batch % group_size:
        raise ValueError(f"batch {batch} is not a multiple of the loss group size {group_size}")
    sums = sums.reshape(-1, group_size).sum(1)
    counts = counts.reshape(-1, group_size).sum(1)
    return jnp.mean(sums / jnp.maximum(counts, 1.0))


def detection_loss(model: MaskRCNN, params, batch: dict[str, jax.Array], key: jax.Array, *,
                   group_size: int = 2, train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(total loss, {loss name: value, ...})`` for one batch; ``key`` drives drop path and the samplers."""
    config: MaskRCNNConfig = model.config
    images = batch["image"]
    batch_size = images.shape[0]
    drop_key, sample_key = jax.random.split(key)
    variables = {"params": params}
    _, feats = model.apply(variables, images, train, method=MaskRCNN.features, rngs={"dropout": drop_key})
    logits, deltas = model.apply(variables, feats, method=MaskRCNN.rpn)
    level_shapes = [tuple(f.shape[1:3]) for f in feats]
    anchors = np.concatenate(detector.level_anchors(config, level_shapes))
    image_keys = jax.vmap(lambda i: jax.random.fold_in(sample_key, i))(jnp.arange(batch_size))
    rpn_keys, roi_keys = jax.vmap(jax.random.split, out_axes=1)(image_keys)
    img_hw = batch["img_hw"].astype(jnp.float32)
    gt_boxes, gt_labels, gt_valid = batch["gt_boxes"], batch["gt_labels"], batch["gt_valid"]
    image_valid = batch["image_valid"]
    gt_valid = gt_valid & image_valid[:, None]

    rpn_terms = jax.vmap(lambda lg, dl, hw, gb, gl, gv, k: _rpn_image_loss(
        config, anchors, level_shapes, lg, dl, hw, gb, gl, gv, k))(
        logits, deltas, img_hw, gt_boxes, gt_labels, gt_valid, rpn_keys)
    rpn_terms = {name: (total * image_valid, count * image_valid) for name, (total, count) in rpn_terms.items()}

    # proposals (no gradient), as RPNHead.loss_and_predict with the rpn_proposal settings
    level_anchors = detector.level_anchors(config, level_shapes)
    cfg = config.train.rpn_proposal

    def proposals_one(lg, dl, hw):
        cands = detector.rpn_candidates(lg, dl, level_anchors, hw, cfg.nms_pre, config.rpn_stds)
        return detector.rpn_proposals(cands, cfg)

    proposals = jax.vmap(proposals_one)(jax.lax.stop_gradient(logits), jax.lax.stop_gradient(deltas), img_hw)
    rois, labels, is_pos, sampled, gt_index = jax.vmap(
        lambda p, pv, gb, gl, gv, k: _sample_rois(config, p, pv, gb, gl, gv, k))(
        proposals["boxes"], proposals["valid"], gt_boxes, gt_labels, gt_valid, roi_keys)
    sampled = sampled & image_valid[:, None]
    is_pos = is_pos & sampled

    roi_feats_input = feats[:len(config.roi_strides)]
    roi_feats, _ = detector.extract_rois(config, roi_feats_input, rois, config.roi_size)
    num_rois = rois.shape[1]
    cls_score, bbox_pred = model.apply(variables, roi_feats.reshape(batch_size * num_rois, *roi_feats.shape[2:]),
                                       method=MaskRCNN.box)
    cls_score = cls_score.reshape(batch_size, num_rois, -1)
    bbox_pred = bbox_pred.reshape(batch_size, num_rois, config.num_classes, 4)
    cls_loss = optax.softmax_cross_entropy_with_integer_labels(cls_score, labels)
    chosen = jnp.take_along_axis(bbox_pred, jnp.minimum(labels, config.num_classes - 1)[:, :, None, None],
                                 axis=2)[:, :, 0]
    gt_for_roi = jnp.take_along_axis(gt_boxes, gt_index[:, :, None], axis=1)
    box_target = jax.lax.stop_gradient(box_ops.encode(rois, gt_for_roi, config.rcnn_stds))
    box_l1 = jnp.sum(jnp.abs(chosen - jnp.where(is_pos[..., None], box_target, 0.0)), axis=-1)
    roi_count = jnp.sum(sampled, axis=1).astype(jnp.float32)

    # masks on the positive RoIs (positives come first in the sampled list)
    num_pos_slots = int(config.train.rcnn_sampler.num * config.train.rcnn_sampler.pos_fraction)
    pos_rois, pos_valid = rois[:, :num_pos_slots], is_pos[:, :num_pos_slots]
    pos_labels, pos_gt = labels[:, :num_pos_slots], gt_index[:, :num_pos_slots]
    mask_feats, _ = detector.extract_rois(config, roi_feats_input, pos_rois, config.mask_roi_size)
    mask_logits = model.apply(variables, mask_feats.reshape(batch_size * num_pos_slots, *mask_feats.shape[2:]),
                              method=MaskRCNN.mask)
    mask_logits = mask_logits.reshape(batch_size, num_pos_slots, *mask_logits.shape[1:])
    mask_logits = jnp.take_along_axis(
        mask_logits, jnp.minimum(pos_labels, config.num_classes - 1)[:, :, None, None, None], axis=-1)[..., 0]
    mask_size = config.train.mask_size
    mask_target = jax.vmap(lambda r, g, m: targets.mask_targets(r, g, m, mask_size))(
        pos_rois, pos_gt, batch["gt_masks"])
    mask_bce = optax.sigmoid_binary_cross_entropy(mask_logits, mask_target).sum((2, 3))

    terms = {
        "loss_rpn_cls": rpn_terms["loss_rpn_cls"],
        "loss_rpn_bbox": rpn_terms["loss_rpn_bbox"],
        "loss_cls": (jnp.sum(cls_loss * sampled, axis=1), roi_count),
        "loss_bbox": (jnp.sum(box_l1 * is_pos, axis=1), roi_count),
        "loss_mask": (jnp.sum(mask_bce * pos_valid, axis=1),
                      jnp.sum(pos_valid, axis=1).astype(jnp.float32) * mask_size * mask_size),
    }
    losses = {name: _group_mean(*terms[name], group_size) for name in LOSS_NAMES}
    total = sum(losses.values())
    aux = dict(losses)
    aux["num_pos_rois"] = jnp.sum(is_pos).astype(jnp.float32) / batch_size
    aux["num_proposals"] = jnp.sum(proposals["valid"]).astype(jnp.float32) / batch_size
    return total, aux
