"""Parity with mmdetection 3.3.0's Mask R-CNN on the official vHeat backbone
(tests/fixtures/maskrcnn_mmdet), at the tolerances its README suggests."""

import json

import jax
import numpy as np
import pytest
from conftest import FIXTURES

from vheat_jax.det import boxes as box_ops
from vheat_jax.det import checkpoint, detector, masks, preprocess
from vheat_jax.det.model import MaskRCNN

DET_FIXTURES = FIXTURES / "maskrcnn_mmdet"
CASES = ("case0", "case1")


def nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def match_rows(ours, ref, tol, ours_scores=None, ref_scores=None, score_tol=1e-5):
    """One-to-one matching of rows by box (largest coordinate difference below ``tol``; scores within
    ``score_tol`` when given, which separates identical boxes): ``perm`` with ``ours[perm] ~ ref``."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    cost = np.abs(ref[:, None, :] - ours[None, :, :]).max(-1) / tol
    if ref_scores is not None:
        score_cost = np.abs(np.asarray(ref_scores, np.float64)[:, None] - np.asarray(ours_scores)[None, :])
        cost = np.maximum(cost, score_cost / score_tol)
    perm = np.full(len(ref), -1)
    used = np.zeros(len(ours), bool)
    for flat in np.argsort(cost, axis=None, kind="stable"):  # greedy by cost: duplicates are interchangeable
        i, j = divmod(flat, len(ours))
        if cost[i, j] >= 1:
            break
        if perm[i] < 0 and not used[j]:
            perm[i], used[j] = j, True
    assert (perm >= 0).all(), f"{(perm < 0).sum()} reference rows have no match within tolerance"
    return perm


_PREDICT = {}


def _shared_predict(config, arch):
    """One jitted forward pass (with intermediates) per module: each case's shape compiles once."""
    if "fn" not in _PREDICT:
        model = MaskRCNN(config, arch)
        _PREDICT["fn"] = jax.jit(lambda p, x, hw: detector.predict(model, {"params": p}, x, hw, intermediates=True))
    return _PREDICT["fn"]


@pytest.fixture(scope="module")
def detector_run():
    if not DET_FIXTURES.exists():
        pytest.fail(f"golden fixtures missing at {DET_FIXTURES}")
    config, arch, params, meta = checkpoint.read_mmdet_checkpoint(DET_FIXTURES / "maskrcnn_tiny.pth")
    fn = _shared_predict(config, arch)
    runs = {}
    for case in CASES:
        arrays = dict(np.load(DET_FIXTURES / f"{case}.npz"))
        out = fn(params, arrays["input"].transpose(0, 2, 3, 1), arrays["img_shape"][None].astype(np.float32))
        runs[case] = (arrays, jax.device_get(out))
    return config, meta, runs


def test_checkpoint_metadata(detector_run):
    config, meta, _ = detector_run
    spec = json.loads((DET_FIXTURES / "maskrcnn_tiny.json").read_text())
    assert checkpoint.class_names(meta) == tuple(spec["class_names"])
    cfg = spec["model_cfg"]
    assert config.num_classes == cfg["roi_head"]["bbox_head"]["num_classes"]
    assert config.fpn_channels == cfg["neck"]["out_channels"]
    assert config.fc_channels == cfg["roi_head"]["bbox_head"]["fc_out_channels"]
    assert config.rpn_test.nms_pre == cfg["test_cfg"]["rpn"]["nms_pre"]
    assert config.rcnn_test.score_thr == cfg["test_cfg"]["rcnn"]["score_thr"]
    for stride, expected in zip(spec["anchors"]["strides"], spec["anchors"]["base_anchors"]):
        np.testing.assert_array_equal(box_ops.base_anchors(stride[0]), np.asarray(expected, np.float32))


@pytest.mark.parametrize("case", CASES)
def test_preprocessing(case):
    arrays = np.load(DET_FIXTURES / f"{case}.npz")
    image, resized = arrays["image"], arrays["resized"]
    spec = json.loads((DET_FIXTURES / "maskrcnn_tiny.json").read_text())
    scale = tuple(spec["test_pipeline"][1]["scale"])
    height, width = image.shape[:2]
    assert preprocess.rescale_size(width, height, scale) == (resized.shape[1], resized.shape[0])
    np.testing.assert_array_equal(preprocess.resize_bilinear_uint8(image, resized.shape[1], resized.shape[0]),
                                  resized)
    padded, meta = preprocess.preprocess(image, scale)
    assert meta.img_shape == tuple(arrays["img_shape"]) and meta.pad_shape == tuple(arrays["pad_shape"])
    assert meta.ori_shape == tuple(arrays["ori_shape"])
    np.testing.assert_array_equal(np.asarray(meta.scale_factor), arrays["scale_factor"])
    np.testing.assert_allclose(padded[None].transpose(0, 3, 1, 2), arrays["input"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_features(detector_run, case):
    arrays, out = detector_run[2][case]
    for i in range(4):
        np.testing.assert_allclose(nchw(out["backbone"][i]), arrays[f"feats_backbone{i}"], rtol=0, atol=1e-4)
    for i in range(5):
        np.testing.assert_allclose(nchw(out["fpn"][i]), arrays[f"feats_fpn{i}"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(nchw(out["rpn_logits"][i]), arrays[f"rpn_cls_logits{i}"], rtol=0, atol=5e-5)
        np.testing.assert_allclose(nchw(out["rpn_deltas"][i]), arrays[f"rpn_deltas{i}"], rtol=0, atol=5e-5)


@pytest.mark.parametrize("case", CASES)
def test_rpn(detector_run, case):
    arrays, out = detector_run[2][case]
    cands = {k: v[0] for k, v in out["rpn_candidates"].items()}
    ref_levels = arrays["rpn_pre_nms_levels"]
    np.testing.assert_array_equal(cands["levels"], ref_levels)
    for level in np.unique(ref_levels):
        sel = ref_levels == level
        perm = match_rows(cands["boxes"][sel], arrays["rpn_pre_nms_boxes"][sel], 2e-3,
                          cands["scores"][sel], arrays["rpn_pre_nms_scores"][sel])
        np.testing.assert_allclose(cands["scores"][sel][perm], arrays["rpn_pre_nms_scores"][sel], rtol=0, atol=1e-5)
    props = {k: v[0] for k, v in out["proposals"].items()}
    assert props["valid"].sum() == len(arrays["rpn_boxes"])
    perm = match_rows(props["boxes"], arrays["rpn_boxes"], 2e-3, props["scores"], arrays["rpn_scores"])
    np.testing.assert_allclose(props["scores"][perm], arrays["rpn_scores"], rtol=0, atol=1e-5)
    assert np.all(np.diff(props["scores"]) <= 0)
    # per-proposal R-CNN arrays, rows matched by proposal box
    np.testing.assert_allclose(out["cls_score"][0][perm], arrays["roi_cls_score"], rtol=0, atol=3e-4)
    np.testing.assert_allclose(out["bbox_pred"][0][perm], arrays["roi_bbox_pred"], rtol=0, atol=3e-4)
    np.testing.assert_allclose(out["class_probs"][0][perm], arrays["rcnn_class_probs"], rtol=0, atol=3e-5)
    np.testing.assert_allclose(out["decoded"][0][perm], arrays["rcnn_decoded_boxes"], rtol=0, atol=4e-3)
    np.testing.assert_allclose(nchw(out["roi_feats"][0][perm[:16]]), arrays["roi_feats_first16"], rtol=0, atol=4e-4)


@pytest.mark.parametrize("case", CASES)
def test_detections_and_masks(detector_run, case):
    config, _, runs = detector_run
    arrays, out = runs[case]
    n = len(arrays["det_scores"])
    valid = out["valid"][0]
    assert valid.sum() == n and valid[:n].all() and not out["overflow"][0]
    np.testing.assert_allclose(out["boxes"][0][:n], arrays["det_boxes_input"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(out["scores"][0][:n], arrays["det_scores"], rtol=0, atol=3e-5)
    np.testing.assert_array_equal(out["labels"][0][:n], arrays["det_labels"])
    first = len(arrays["mask_roi_feats_first8"])
    np.testing.assert_allclose(nchw(out["mask_roi_feats"][0][:first]), arrays["mask_roi_feats_first8"],
                               rtol=0, atol=4e-4)
    np.testing.assert_allclose(out["mask_logits"][0][:n].transpose(0, 3, 1, 2), arrays["mask_logits"],
                               rtol=0, atol=1.5e-3)
    boxes = masks.rescale_boxes(out["boxes"][0][:n], arrays["scale_factor"])
    np.testing.assert_allclose(boxes, arrays["det_boxes"], rtol=0, atol=1e-3)
    ref = arrays["det_masks"]
    probs = out["mask_probs"][0][:n]
    pasted_jax = np.asarray(masks.paste_masks(probs, boxes, ref.shape[1:], config.rcnn_test.mask_thr_binary))
    pasted_np = masks.paste_masks_numpy(probs, boxes, ref.shape[1:], config.rcnn_test.mask_thr_binary)
    for pasted in (pasted_jax, pasted_np):
        inter = (pasted & ref).sum((1, 2))
        union = (pasted | ref).sum((1, 2))
        iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
        assert iou.min() >= 0.99, iou.min()


def test_detector_api_end_to_end(detector_run):
    """Raw BGR images through Detector (preprocessing, batching by shape, rescale, paste) give the fixture's
    final boxes, scores, labels and masks. Uses the module's compiled forward pass (no extra compilation)."""
    from vheat_jax.det.api import Detector

    _, meta, runs = detector_run
    cfg, arch, params, _ = checkpoint.read_mmdet_checkpoint(DET_FIXTURES / "maskrcnn_tiny.pth")
    spec = json.loads((DET_FIXTURES / "maskrcnn_tiny.json").read_text())
    det = Detector(cfg, arch, params, classes=checkpoint.class_names(meta),
                   scale=tuple(spec["test_pipeline"][1]["scale"]))
    det._predict = _shared_predict(cfg, arch)
    results = det([runs[case][0]["image"] for case in CASES])
    for case, result in zip(CASES, results):
        arrays = runs[case][0]
        assert not result.overflow
        np.testing.assert_allclose(result.boxes, arrays["det_boxes"], rtol=0, atol=1e-3)
        np.testing.assert_allclose(result.scores, arrays["det_scores"], rtol=0, atol=3e-5)
        np.testing.assert_array_equal(result.labels, arrays["det_labels"])
        inter = (result.masks & arrays["det_masks"]).sum((1, 2))
        union = (result.masks | arrays["det_masks"]).sum((1, 2))
        assert np.where(union == 0, 1.0, inter / np.maximum(union, 1)).min() >= 0.99
