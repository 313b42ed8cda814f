"""COCO box and mask mAP through pycocotools, on results written as COCO expects (mmdet ``CocoMetric``)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from vheat_jax.det import masks as mask_ops
from vheat_jax.det import preprocess

STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def detections_to_coco(image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                       masks: np.ndarray | None, cat_ids: list[int]) -> list[dict]:
    """COCO result entries: ``bbox`` as [x, y, w, h], ``segmentation`` as RLE (counts as str)."""
    from pycocotools import mask as mask_utils

    out = []
    for i in range(len(scores)):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        entry = {"image_id": int(image_id), "category_id": int(cat_ids[int(labels[i])]),
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[i])}
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(masks[i].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            entry["segmentation"] = rle
        out.append(entry)
    return out


def coco_evaluate(annotation_file: str | Path, results: list[dict], iou_types=("bbox", "segm"),
                  image_ids: Iterable[int] | None = None, verbose: bool = False) -> dict[str, float]:
    """``{"bbox_mAP": ..., "bbox_mAP_50": ..., "segm_mAP": ...}`` (fractions, as mmdet reports them)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    metrics: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        gt = COCO(str(annotation_file))
        for iou_type in iou_types:
            entries = [r for r in results if iou_type == "bbox" or "segmentation" in r]
            if not entries:
                metrics.update({f"{iou_type}_{name}": 0.0 for name in STAT_NAMES})
                continue
            dt = gt.loadRes(json.loads(json.dumps(entries)))
            evaluator = COCOeval(gt, dt, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = list(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            metrics.update({f"{iou_type}_{name}": float(evaluator.stats[i]) for i, name in enumerate(STAT_NAMES)})
    if verbose:
        print(captured.getvalue())
    return metrics


def predict_coco_results(predict: Callable, source, indices: Iterable[int], *, scale=preprocess.TEST_SCALE,
                         mask_thr: float = 0.5, with_masks: bool = True) -> list[dict]:
    """COCO result entries of ``predict(images (1, Hp, Wp, 3), img_hw (1, 2)) -> batched outputs`` on the
    images ``indices`` of a :class:`~vheat_jax.det.data.CocoSource`."""
    results = []
    for index in indices:
        record = source.records[index]
        padded, meta = preprocess.preprocess(source.load_image(index), scale)
        out = predict(padded[None], np.asarray([meta.img_shape], np.float32))
        keep = np.asarray(out["valid"][0])
        boxes = mask_ops.rescale_boxes(np.asarray(out["boxes"][0][keep]), meta.scale_factor)
        pasted = (mask_ops.paste_masks_numpy(np.asarray(out["mask_probs"][0][keep]), boxes, meta.ori_shape, mask_thr)
                  if with_masks else None)
        results += detections_to_coco(record.image_id, boxes, np.asarray(out["scores"][0][keep]),
                                      np.asarray(out["labels"][0][keep]), pasted, source.cat_ids)
    return results


def run_coco_eval(predict: Callable, source, *, scale=preprocess.TEST_SCALE, mask_thr: float = 0.5,
                  max_images: int | None = None, with_masks: bool = True) -> tuple[dict[str, float], list[dict]]:
    """:func:`predict_coco_results` on the first ``max_images`` images (default all), scored by pycocotools."""
    count = len(source) if max_images is None else min(max_images, len(source))
    results = predict_coco_results(predict, source, range(count), scale=scale, mask_thr=mask_thr,
                                   with_masks=with_masks)
    image_ids = [source.records[i].image_id for i in range(count)]
    iou_types = ("bbox", "segm") if with_masks else ("bbox",)
    return coco_evaluate(source.annotation_file, results, iou_types, image_ids=image_ids), results
