"""mmdetection checkpoint conversion: strict checks, export, identical round trip."""

import logging

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from vheat_jax.det import checkpoint
from vheat_jax.keymap import KeyMismatchError
from vheat_jax.torch_io import load_pth

PTH = FIXTURES / "maskrcnn_mmdet" / "maskrcnn_tiny.pth"


@pytest.fixture(scope="module")
def loaded():
    return checkpoint.read_mmdet_checkpoint(PTH)


def test_round_trip_identical(loaded, tmp_path):
    config, arch, params, meta = loaded
    original = load_pth(PTH)["state_dict"]
    out = tmp_path / "back.pth"
    checkpoint.export_mmdet(params, config, arch, out, classes=checkpoint.class_names(meta))
    back = load_pth(out)
    assert list(back["meta"]["dataset_meta"]["classes"]) == ["class0", "class1", "class2"]
    state = back["state_dict"]
    assert set(state) == set(original)
    for key, value in original.items():
        assert state[key].dtype == value.dtype and state[key].shape == value.shape, key
        np.testing.assert_array_equal(state[key], value, err_msg=key)
    # torch's safe loader accepts what we write, with the same tensors
    theirs = torch.load(out, weights_only=True)["state_dict"]
    assert theirs["roi_head.mask_head.upsample.weight"].shape == (32, 32, 2, 2)
    np.testing.assert_array_equal(theirs["roi_head.bbox_head.fc_cls.weight"].numpy(),
                                  original["roi_head.bbox_head.fc_cls.weight"])
    # and reading it back gives the same parameters
    _, _, again, _ = checkpoint.read_mmdet_checkpoint(out, post_norm=arch.post_norm)
    flat = lambda tree: {k: np.asarray(v) for k, v in __import__("flax").traverse_util.flatten_dict(tree).items()}
    a, b = flat(params), flat(again)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_layouts(loaded):
    config, arch, params, _ = loaded
    original = load_pth(PTH)["state_dict"]
    deconv = original["roi_head.mask_head.upsample.weight"]  # (in, out, kh, kw)
    np.testing.assert_array_equal(params["mask_head"]["upsample"]["kernel"], deconv.transpose(2, 3, 0, 1))
    np.testing.assert_array_equal(params["bbox_head"]["shared_fc_0"]["kernel"],
                                  original["roi_head.bbox_head.shared_fcs.0.weight"].T)
    np.testing.assert_array_equal(params["neck"]["fpn_1"]["kernel"],
                                  original["neck.fpn_convs.1.conv.weight"].transpose(2, 3, 1, 0))


def test_strict_errors(loaded):
    config, arch, _, _ = loaded
    original = dict(load_pth(PTH)["state_dict"])
    broken = dict(original)
    del broken["roi_head.mask_head.conv_logits.bias"]
    broken["roi_head.mask_head.extra.weight"] = np.zeros(3, np.float32)
    broken["neck.fpn_convs.0.conv.weight"] = np.zeros((32, 32, 1, 1), np.float32)
    with pytest.raises(KeyMismatchError) as err:
        checkpoint.mmdet_to_flax(broken, config, arch)
    message = str(err.value)
    assert "missing 1 key(s): roi_head.mask_head.conv_logits.bias" in message
    assert "unexpected 1 key(s): roi_head.mask_head.extra.weight" in message
    assert "neck.fpn_convs.0.conv.weight is (32, 32, 1, 1) but should be (32, 32, 3, 3)" in message
    # the backbone goes through the backbone's own strict map
    broken = dict(original)
    del broken["backbone.outnorm0.weight"]
    with pytest.raises(KeyMismatchError, match="backbone.outnorm0.weight"):
        checkpoint.mmdet_to_flax(broken, config, arch)
    # a config that disagrees with the weights
    with pytest.raises(KeyMismatchError, match="fc_cls"):
        checkpoint.mmdet_to_flax(original, config.replace(num_classes=80), arch)


def test_an_export_reads_back_with_its_pre_post_norm_choice(loaded, tmp_path, caplog):
    config, arch, params, meta = loaded
    for post_norm in (True, False):
        out = tmp_path / f"{post_norm}.pth"
        checkpoint.export_mmdet(params, config, arch.replace(post_norm=post_norm), out)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            _, again, _, _ = checkpoint.read_mmdet_checkpoint(out)
        assert again.post_norm is post_norm
        assert not [r for r in caplog.records if "pre- or post-norm" in r.getMessage()]
