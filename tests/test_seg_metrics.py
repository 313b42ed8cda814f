"""mIoU / mAcc / aAcc against the definitions, with ignore pixels and reduce_zero_label."""

import numpy as np
import pytest

from vheat_jax.seg.metrics import IoUAccumulator, intersect_and_union, reduce_zero_label


def test_reduce_zero_label_matches_mmseg():
    raw = np.array([[0, 1, 2], [150, 254, 255]], np.uint8)
    np.testing.assert_array_equal(reduce_zero_label(raw), [[255, 0, 1], [149, 253, 255]])


def test_crafted_case_by_hand():
    # 3 classes. Raw ADE-style labels (0 = other) reduced, plus one ignore pixel.
    raw = np.array([[1, 1, 2, 0],
                    [2, 3, 3, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 2],
                     [1, 2, 0, 0]], np.int64)
    label = reduce_zero_label(raw)  # [[0, 0, 1, 255], [1, 2, 2, 255]]
    acc = IoUAccumulator(num_classes=3)
    acc.add(pred, label)
    # kept pixels: (0,0) 0->0, (0,1) 0->1, (0,2) 1->1, (1,0) 1->1, (1,1) 2->2, (1,2) 2->0
    np.testing.assert_array_equal(acc.areas, [[1, 2, 1],     # intersect
                                              [3, 3, 2],     # union = pred + label - intersect
                                              [2, 3, 1],     # pred histogram
                                              [2, 2, 2]])    # label histogram
    result = acc.compute()
    assert result["aAcc"] == pytest.approx(100 * 4 / 6)
    assert result["mIoU"] == pytest.approx(100 * np.mean([1 / 3, 2 / 3, 1 / 2]))
    assert result["mAcc"] == pytest.approx(100 * np.mean([1 / 2, 2 / 2, 1 / 2]))


def test_absent_class_is_left_out_of_the_means():
    label = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 0])
    acc = IoUAccumulator(num_classes=4)
    acc.add(pred, label)
    result = acc.compute()
    assert np.isnan(result["IoU"][2]) and np.isnan(result["IoU"][3])
    assert result["mIoU"] == pytest.approx(100 * np.mean([2 / 3, 1 / 2]))


def _by_confusion_matrix(preds, labels, num_classes, ignore):
    """The definitions, through a confusion matrix over all images."""
    confusion = np.zeros((num_classes, num_classes), np.int64)  # [label, pred]
    for pred, label in zip(preds, labels):
        keep = label != ignore
        np.add.at(confusion, (label[keep], pred[keep]), 1)
    tp = np.diag(confusion).astype(float)
    gt, predicted = confusion.sum(1), confusion.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = tp / (gt + predicted - tp), tp / gt
    return 100 * tp.sum() / gt.sum(), 100 * np.nanmean(iou), 100 * np.nanmean(acc), iou


def test_random_maps_against_confusion_matrix():
    rng = np.random.default_rng(0)
    num_classes, preds, labels = 7, [], []
    acc = IoUAccumulator(num_classes)
    for _ in range(5):
        shape = tuple(rng.integers(20, 60, 2))
        raw = rng.integers(0, num_classes + 1, shape).astype(np.uint8)  # 0 = "other", 1..7
        raw[rng.random(shape) < 0.1] = 255
        label = reduce_zero_label(raw)
        truth = np.where(label == 255, 0, label)
        pred = np.where(rng.random(shape) < 0.6, truth, rng.integers(0, num_classes - 1, shape))  # class 6 never predicted
        preds.append(pred)
        labels.append(label)
        acc.add(pred, label)
    a_acc, m_iou, m_acc, iou = _by_confusion_matrix(preds, labels, num_classes, 255)
    result = acc.compute()
    assert result["aAcc"] == pytest.approx(a_acc, rel=1e-12)
    assert result["mIoU"] == pytest.approx(m_iou, rel=1e-12)
    assert result["mAcc"] == pytest.approx(m_acc, rel=1e-12)
    np.testing.assert_allclose(result["IoU"], 100 * iou, rtol=1e-12)
    assert np.sum([intersect_and_union(p, l, num_classes)[3].sum() for p, l in zip(preds, labels)]) == \
        sum(int((l != 255).sum()) for l in labels)
