"""JAX NMS, RoIAlign and mask pasting against straightforward NumPy implementations of the definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from det_reference import batched_nms_reference, nms_reference, paste_mask_reference, roi_align_reference

from vheat_jax.det import boxes as box_ops
from vheat_jax.det import masks, nms, roi_align

PAD = 48


def random_boxes(rng, n, lo=-10.0, hi=60.0, max_size=30.0):
    xy = rng.uniform(lo, hi, (n, 2)).astype(np.float32)
    wh = rng.uniform(0, max_size, (n, 2)).astype(np.float32)
    return np.concatenate([xy, xy + wh], 1)


def padded(boxes, scores, groups=None):
    n = len(boxes)
    b = np.zeros((PAD, 4), np.float32)
    s = np.zeros((PAD,), np.float32)
    g = np.zeros((PAD,), np.int32)
    b[:n], s[:n] = boxes, scores
    if groups is not None:
        g[:n] = groups
    return b, s, g, np.arange(PAD) < n


_nms = jax.jit(nms.nms, static_argnums=(3, 4))
_batched = jax.jit(nms.batched_nms, static_argnums=(4, 5))


def kept(index, keep):
    return np.asarray(index)[np.asarray(keep)]


@pytest.mark.parametrize("seed", range(8))
def test_nms_random_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, PAD + 1))
    boxes = random_boxes(rng, n)
    scores = rng.choice(np.linspace(0.1, 1.0, 5), n).astype(np.float32)  # many exact ties
    boxes[: n // 4] = boxes[0]  # exact duplicate boxes
    b, s, _, v = padded(boxes, scores)
    for threshold in (0.3, 0.5, 0.7):
        np.testing.assert_array_equal(kept(*_nms(b, s, v, threshold, PAD)), nms_reference(boxes, scores, threshold))


def test_nms_edge_cases():
    # empty input, all invalid
    b, s, _, v = padded(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))
    assert not np.asarray(_nms(b, s, v, 0.5, 10)[1]).any()
    # zero-area boxes (IoU 0/0 = nan never suppresses), identical boxes, IoU exactly at the threshold
    boxes = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 20]],
                     np.float32)
    scores = np.array([0.9, 0.9, 0.8, 0.8, 0.7, 0.6], np.float32)
    b, s, _, v = padded(boxes, scores)
    for threshold in (0.5, 0.49):  # IoU([0,0,10,10], [0,0,10,5]) is exactly 0.5: suppressed only below it
        np.testing.assert_array_equal(kept(*_nms(b, s, v, threshold, PAD)), nms_reference(boxes, scores, threshold))
    # max_output cuts the kept list after the best ones
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, 40)
    scores = rng.uniform(size=40).astype(np.float32)
    b, s, _, v = padded(boxes, scores)
    np.testing.assert_array_equal(kept(*_nms(b, s, v, 0.5, 5)), nms_reference(boxes, scores, 0.5)[:5])


@pytest.mark.parametrize("seed", range(4))
def test_batched_nms_offset_trick(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, PAD + 1))
    boxes = random_boxes(rng, n, lo=0.0)
    scores = rng.choice(np.linspace(0.1, 1.0, 7), n).astype(np.float32)
    groups = rng.integers(0, 3, n)
    b, s, g, v = padded(boxes, scores, groups)
    got = kept(*_batched(b, s, g, v, 0.5, PAD))
    np.testing.assert_array_equal(got, batched_nms_reference(boxes, scores, groups, 0.5))
    # equals NMS per group, merged by score
    per_group = [i for k in np.unique(groups) for i in np.nonzero(groups == k)[0][
        nms_reference(boxes[groups == k], scores[groups == k], 0.5)]]
    assert sorted(per_group) == sorted(got.tolist())


_roi_align = jax.jit(roi_align.roi_align, static_argnums=(2, 3), static_argnames=("max_grid", "max_window", "method"))


@pytest.mark.parametrize("method", ["window", "dense"])
@pytest.mark.parametrize("output_size", [7, 14])
def test_roi_align_random_crossing_border(output_size, method):
    rng = np.random.default_rng(output_size)
    feature = rng.normal(size=(13, 17, 3)).astype(np.float32)
    stride = 4
    rois = random_boxes(rng, 30, lo=-20.0, hi=70.0, max_size=50.0)  # many cross the map's border
    extra = np.array([[0, 0, 0, 0], [10, 10, 5, 5], [-30, -30, -20, -20], [0, 0, 68, 52], [66, 50, 90, 80],
                      [3.3, 7.1, 3.3, 40.0], [0, 0, 68, 1.0]], np.float32)  # empty, negative, outside, whole, thin
    rois = np.concatenate([rois, extra])
    got, overflow = _roi_align(feature, rois, stride, output_size, max_grid=4, method=method)
    assert not np.asarray(overflow).any()
    np.testing.assert_allclose(np.asarray(got), roi_align_reference(feature, rois, stride, output_size),
                               rtol=0, atol=2e-5)
    # too few static slots are reported, not silently wrong
    if method == "window":
        _, overflow = _roi_align(feature, rois, stride, output_size, max_grid=4, max_window=20, method=method)
        assert np.asarray(overflow).any()
    _, overflow = _roi_align(feature, rois, stride, output_size, max_grid=1, method=method)
    assert np.asarray(overflow).any()


@pytest.mark.parametrize("method", ["window", "dense"])
def test_multilevel_roi_align_and_level_bound(method):
    rng = np.random.default_rng(3)
    shapes, strides = [(24, 20), (12, 10), (6, 5), (3, 3)], (4, 8, 16, 32)
    feats = [rng.normal(size=(h, w, 2)).astype(np.float32) for h, w in shapes]
    img_h, img_w = 96, 80
    rois = random_boxes(rng, 40, lo=0, hi=70, max_size=90)
    rois = np.minimum(rois, [img_w, img_h, img_w, img_h]).astype(np.float32)  # clipped, as proposals are
    rois = np.concatenate([rois, [[0, 0, 80, 3], [0, 0, 2, 96], [0, 0, 80, 96]]]).astype(np.float32)
    levels = roi_align.map_roi_levels(jnp.asarray(rois), 4)
    window = roi_align.level_window_bound(shapes, strides)
    got, overflow = jax.jit(lambda f, r, lv: roi_align.multilevel_roi_align(
        f, strides, r, lv, 7, max_window=window, method=method))(feats, rois, levels)
    assert not np.asarray(overflow).any()
    levels = np.asarray(levels)
    for i, roi in enumerate(rois):
        ref = roi_align_reference(feats[levels[i]], roi[None], strides[levels[i]], 7)[0]
        np.testing.assert_allclose(np.asarray(got[i]), ref, rtol=0, atol=2e-5)
    scale = np.sqrt((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]))
    expected = np.clip(np.floor(np.log2(scale / 56 + 1e-6)), 0, 3)
    np.testing.assert_array_equal(levels, expected)


def test_box_coder_round_trip_and_clamp():
    rng = np.random.default_rng(0)
    anchors = random_boxes(rng, 50, lo=0, hi=100, max_size=50) + np.float32([0, 0, 1, 1])
    gt = random_boxes(rng, 50, lo=0, hi=100, max_size=50) + np.float32([0, 0, 1, 1])
    stds = (0.1, 0.1, 0.2, 0.2)
    deltas = box_ops.encode(jnp.asarray(anchors), jnp.asarray(gt), stds)
    np.testing.assert_allclose(np.asarray(box_ops.decode(jnp.asarray(anchors), deltas, stds, None)), gt, atol=1e-3)
    big = box_ops.decode(jnp.asarray([[0.0, 0.0, 10.0, 10.0]]), jnp.asarray([[0.0, 0.0, 10.0, -10.0]]),
                         (1, 1, 1, 1), jnp.asarray([1000.0, 1000.0]))
    np.testing.assert_allclose(np.asarray(big)[0], [0, 5 - 5 * 0.016, 5 + 5 * 1000 / 16, 5 + 5 * 0.016], rtol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_paste_masks(seed):
    rng = np.random.default_rng(seed)
    probs = rng.uniform(size=(6, 28, 28)).astype(np.float32)
    boxes = random_boxes(rng, 6, lo=-10, hi=40, max_size=40)
    height, width = 37, 45
    soft = np.asarray(masks.paste_masks(jnp.asarray(probs), jnp.asarray(boxes), (height, width), threshold=None))
    for n in range(6):
        np.testing.assert_allclose(soft[n], paste_mask_reference(probs[n], boxes[n], height, width), atol=1e-5)
    hard = masks.paste_masks_numpy(probs, boxes, (height, width))
    near = np.abs(soft - 0.5) < 1e-5
    np.testing.assert_array_equal(hard[~near], (soft >= 0.5)[~near])
