"""mmseg's ``IoUMetric``: per-class intersection / union histograms, then aAcc, mIoU, mAcc.

Per image (``intersect_and_union``): pixels whose label is ``ignore_index`` are
dropped; of the rest, ``area_intersect`` counts per class the pixels where
prediction == label, ``area_pred`` the predictions, ``area_label`` the labels
(values outside ``[0, num_classes)`` are not counted in that histogram, as
``torch.histc(min=0, max=num_classes - 1)`` does), ``area_union = area_pred +
area_label - area_intersect``. Histograms are summed over the data set (and over
processes), then

* ``aAcc = sum(intersect) / sum(label)``,
* ``IoU = intersect / union`` and ``Acc = intersect / label`` per class,
* ``mIoU`` / ``mAcc``: their means over the classes where they are defined (NaN
  entries, i.e. 0 / 0, skipped as ``np.nanmean`` does),

all reported in percent. mmseg sums the histograms in float32; here they are int64
(exact; mmseg's float32 sums drift by at most ~1e-4 relative on ADE20K's 2,000 images).
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """ADE20K's convention, as mmseg's ``LoadAnnotations(reduce_zero_label=True)`` does it in uint8:
    0 ("other") -> 255, every other label minus 1, and 255 stays 255."""
    out = label.astype(np.uint8)  # a copy
    out[out == 0] = 255
    out = out - np.uint8(1)
    out[out == 254] = 255
    return out


def _histogram(values: np.ndarray, num_classes: int) -> np.ndarray:
    values = values[(values >= 0) & (values < num_classes)]
    return np.bincount(values.astype(np.int64), minlength=num_classes).astype(np.int64)


def intersect_and_union(pred: np.ndarray, label: np.ndarray, num_classes: int,
                        ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(4, num_classes) int64: area_intersect, area_union, area_pred, area_label of one image."""
    keep = label != ignore_index
    pred, label = pred[keep].astype(np.int64), label[keep].astype(np.int64)
    intersect = _histogram(pred[pred == label], num_classes)
    area_pred = _histogram(pred, num_classes)
    area_label = _histogram(label, num_classes)
    return np.stack([intersect, area_pred + area_label - intersect, area_pred, area_label])


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def metrics_from_histograms(areas: np.ndarray) -> dict[str, float | np.ndarray]:
    """aAcc, mIoU, mAcc (percent) and per-class IoU / Acc (percent, NaN where undefined)."""
    intersect, union, _, label = (areas[i].astype(np.float64) for i in range(4))
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = 100 * intersect / union
        acc = 100 * intersect / label
        a_acc = 100 * intersect.sum() / label.sum()
    return {"aAcc": float(a_acc), "mIoU": _nanmean(iou), "mAcc": _nanmean(acc), "IoU": iou, "Acc": acc}


class IoUAccumulator:
    """Sums :func:`intersect_and_union` over images; :meth:`merged_across_processes` sums over hosts."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.areas = np.zeros((4, num_classes), np.int64)

    def add(self, pred: np.ndarray, label: np.ndarray) -> None:
        if pred.shape != label.shape:
            raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
        self.areas += intersect_and_union(pred, label, self.num_classes, self.ignore_index)

    def merged_across_processes(self) -> np.ndarray:
        """The histograms summed over every JAX process (identity with one process)."""
        import jax
        from jax.experimental import multihost_utils

        if jax.process_count() == 1:
            return self.areas
        return np.asarray(multihost_utils.process_allgather(self.areas)).sum(0)

    def compute(self) -> dict[str, float | np.ndarray]:
        return metrics_from_histograms(self.merged_across_processes())
