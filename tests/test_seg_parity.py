"""Parity with mmsegmentation 1.2.2 (tests/fixtures/upernet_mmseg): every float array within 1e-4."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES, nchw_to_nhwc

from vheat_jax.seg.convert import read_mmseg_checkpoint
from vheat_jax.seg.inference import InferenceConfig, Segmenter, normalize_bgr, slide_windows

UPERNET = FIXTURES / "upernet_mmseg"
ATOL = 1e-4


@pytest.fixture(scope="module")
def case():
    if not UPERNET.exists():
        pytest.fail(f"golden fixtures missing at {UPERNET}")
    checkpoint = read_mmseg_checkpoint(UPERNET / "upernet_tiny.pth")
    return checkpoint, np.load(UPERNET / "upernet_tiny.npz"), json.loads((UPERNET / "upernet_tiny.json").read_text())


def assert_close(actual, expected_nchw):
    expected = nchw_to_nhwc(expected_nchw)
    assert np.shape(actual) == expected.shape
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=ATOL)


def test_config_read_from_checkpoint(case):
    checkpoint, _, meta = case
    config = checkpoint.config
    assert config.backbone.dims == 16 and config.backbone.depths == (1, 1, 2, 1)
    assert config.backbone.post_norm is False and config.backbone.img_size == 64
    assert (config.num_classes, config.channels, config.pool_scales) == (5, 32, (1, 2, 3, 6))
    assert (config.aux_channels, config.aux_in_index, config.aux_num_convs) == (16, 2, 1)
    assert checkpoint.test_cfg == {"mode": "slide", "crop_size": (64, 64), "stride": (43, 43)}
    assert checkpoint.meta["dataset_meta"]["classes"] == tuple(meta["model"]["classes"])


def test_features_and_head_logits(case):
    checkpoint, arrays, _ = case
    model, variables = checkpoint.model, checkpoint.variables
    inputs = jnp.asarray(nchw_to_nhwc(arrays["inputs_whole"]))
    features = jax.jit(functools.partial(model.apply, method="features"))(variables, inputs)
    for i, feature in enumerate(features):
        assert_close(feature, arrays[f"feats{i}"])
    heads = jax.jit(functools.partial(model.apply, method=lambda m, f: (m.decode_head(f), m.auxiliary_head(f[2]))))
    decode, aux = heads(variables, features)
    assert_close(decode, arrays["decode_logits_whole"])
    assert_close(aux, arrays["aux_logits_whole"])


def test_preprocessing(case):
    _, arrays, meta = case
    image = arrays["image"]
    np.testing.assert_array_equal(normalize_bgr(image), nchw_to_nhwc(arrays["slide_input"])[0])
    for k, (y, x) in enumerate(meta["whole_crops"]):
        np.testing.assert_array_equal(normalize_bgr(image[y:y + 96, x:x + 128]), nchw_to_nhwc(arrays["inputs_whole"])[k])


def test_whole_inference(case):
    checkpoint, arrays, _ = case
    segmenter = Segmenter(checkpoint.model, checkpoint.variables, InferenceConfig(mode="whole", scale=None))
    for k, image in enumerate(nchw_to_nhwc(arrays["inputs_whole"])):
        assert_close(segmenter.logits(image)[None], arrays["whole_logits"][k:k + 1])


def test_slide_inference(case):
    checkpoint, arrays, meta = case
    assert slide_windows((150, 200), (64, 64), (43, 43)) == [tuple(w) for w in meta["slide_windows_y1_y2_x1_x2"]]
    test_cfg = InferenceConfig(mode="slide", crop_size=(64, 64), stride=(43, 43), scale=None)
    segmenter = Segmenter(checkpoint.model, checkpoint.variables, test_cfg)
    inputs = nchw_to_nhwc(arrays["slide_input"])[0]
    logits = segmenter.logits(inputs)
    assert_close(logits[None], arrays["slide_logits"])

    expected = arrays["slide_pred"][0]
    top2 = np.sort(arrays["slide_logits"][0], axis=0)[-2:]
    decisive = top2[1] - top2[0] >= 2e-4
    assert decisive.sum() == 30_000 - meta["slide_pred_pixels_with_top2_margin_below_2e-4"]
    labels = segmenter.predict(inputs)
    assert labels.shape == expected.shape and labels.dtype == np.int32
    np.testing.assert_array_equal(labels[decisive], expected[decisive])
    np.testing.assert_array_equal(labels, np.argmax(logits, -1))
