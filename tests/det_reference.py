"""Straightforward NumPy implementations of the definitions (loops over boxes and samples), used by the det tests
(no tests here)."""

import math

import numpy as np


def nms_reference(boxes, scores, iou_threshold):
    """torchvision ``nms`` CPU kernel, literally: indices kept, in descending score order."""
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # Python's sort is stable
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(scores), bool)
    keep = []
    for a, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[a + 1:]:
            if suppressed[j]:
                continue
            w = max(np.float32(0), min(x2[i], x2[j]) - max(x1[i], x1[j]))
            h = max(np.float32(0), min(y2[i], y2[j]) - max(y1[i], y1[j]))
            inter = np.float32(w * h)
            with np.errstate(invalid="ignore", divide="ignore"):
                ovr = inter / np.float32(areas[i] + areas[j] - inter)
            if ovr > iou_threshold:
                suppressed[j] = True
    return np.asarray(keep, np.int64)


def batched_nms_reference(boxes, scores, groups, iou_threshold):
    """mmcv ``batched_nms`` with the coordinate-offset trick."""
    boxes = np.asarray(boxes, np.float32)
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    offsets = np.asarray(groups, np.float32) * (boxes.max() + np.float32(1))
    return nms_reference(boxes + offsets[:, None], scores, iou_threshold)


def _bilinear(feature, y, x):
    height, width = feature.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[2:], np.float64)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * feature[y_low, x_low] + hy * lx * feature[y_low, x_high]
            + ly * hx * feature[y_high, x_low] + ly * lx * feature[y_high, x_high])


def roi_align_reference(feature, rois, stride, output_size):
    """torchvision ``roi_align(aligned=True, sampling_ratio=0)`` on one (H, W, C) map, in float64 loops."""
    feature = np.asarray(feature, np.float64)
    out = np.zeros((len(rois), output_size, output_size, feature.shape[-1]))
    for n, roi in enumerate(np.asarray(rois, np.float64)):
        x1, y1, x2, y2 = roi / stride - 0.5
        roi_w, roi_h = x2 - x1, y2 - y1
        bin_w, bin_h = roi_w / output_size, roi_h / output_size
        grid_h, grid_w = math.ceil(roi_h / output_size), math.ceil(roi_w / output_size)
        count = max(grid_h * grid_w, 1)
        for ph in range(output_size):
            for pw in range(output_size):
                total = 0.0
                for iy in range(grid_h):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total = total + _bilinear(feature, y, x)
                out[n, ph, pw] = total / count
    return out


def paste_mask_reference(prob, box, height, width):
    """``grid_sample(align_corners=False, zeros)`` of a (M, M) map at every pixel centre, float64."""
    size = prob.shape[0]
    x0, y0, x1, y1 = np.asarray(box, np.float64)
    gx = ((np.arange(width) + 0.5) - x0) / (x1 - x0) * 2 - 1
    gy = ((np.arange(height) + 0.5) - y0) / (y1 - y0) * 2 - 1
    ix = ((gx + 1) * size - 1) / 2
    iy = ((gy + 1) * size - 1) / 2
    out = np.zeros((height, width))
    x_lo = np.floor(ix).astype(int)
    y_lo = np.floor(iy).astype(int)
    for dy in (0, 1):
        for dx in (0, 1):
            yy = y_lo[:, None] + dy
            xx = x_lo[None, :] + dx
            wy = (1 - np.abs(iy[:, None] - yy))
            wx = (1 - np.abs(ix[None, :] - xx))
            ok = (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
            out += np.where(ok, wy * wx * prob[np.clip(yy, 0, size - 1), np.clip(xx, 0, size - 1)], 0)
    return out


def max_iou_assign_reference(boxes, gt_boxes, pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality=True):
    """mmdet ``MaxIoUAssigner.assign`` (gt_max_assign_all=True), literally, on valid boxes and GTs only."""
    boxes = np.asarray(boxes, np.float64)
    gt_boxes = np.asarray(gt_boxes, np.float64)
    assigned = np.full(len(boxes), -1)
    if len(gt_boxes) == 0:
        assigned[:] = 0
        return assigned
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(gt_boxes[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(gt_boxes[:, None, 2:], boxes[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    overlaps = inter / np.maximum(area(gt_boxes)[:, None] + area(boxes)[None, :] - inter, 1e-6)
    max_overlaps, argmax = overlaps.max(0), overlaps.argmax(0)
    gt_max = overlaps.max(1)
    assigned[(max_overlaps >= 0) & (max_overlaps < neg_iou_thr)] = 0
    pos = max_overlaps >= pos_iou_thr
    assigned[pos] = argmax[pos] + 1
    if match_low_quality:
        for i in range(len(gt_boxes)):
            if gt_max[i] >= min_pos_iou:
                assigned[overlaps[i] == gt_max[i]] = i + 1
    return assigned
