"""mmseg checkpoint conversion: strict keys and shapes, num_batches_tracked, export and round trip."""

import jax
import numpy as np
import pytest
from conftest import FIXTURES

from vheat_jax.arch import ArchitectureMismatchError
from vheat_jax.keymap import KeyMismatchError
from vheat_jax.seg.convert import (
    export_mmseg,
    key_table,
    model_cfg_from_text,
    read_mmseg_checkpoint,
    variables_from_state_dict,
)
from vheat_jax.torch_io import load_pth, save_pth

CHECKPOINT = FIXTURES / "upernet_mmseg" / "upernet_tiny.pth"


@pytest.fixture(scope="module")
def original():
    return load_pth(CHECKPOINT)


@pytest.fixture(scope="module")
def checkpoint():
    return read_mmseg_checkpoint(CHECKPOINT)


def assert_same_state_dict(actual, expected):
    assert list(actual) == list(expected) or set(actual) == set(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def test_every_key_is_mapped(checkpoint, original):
    table = key_table(checkpoint.config)
    state = original["state_dict"]
    counters = {k for k in state if k.endswith("num_batches_tracked")}
    assert set(table) == set(state) - counters
    assert len(counters) == 13 and set(checkpoint.num_batches_tracked.values()) == {160_000}
    assert table["decode_head.psp_modules.3.1.bn.running_var"][0] == (
        "batch_stats", "decode_head", "psp_modules_3", "bn", "var")
    assert table["auxiliary_head.conv_seg.weight"][0] == ("params", "auxiliary_head", "conv_seg", "kernel")


def test_round_trip_is_identical(tmp_path, checkpoint, original):
    path = tmp_path / "back.pth"
    export_mmseg(path, checkpoint.config, checkpoint.variables, meta=checkpoint.meta,
                 num_batches_tracked=checkpoint.num_batches_tracked)
    written = load_pth(path)
    assert set(written) == {"meta", "state_dict"}
    assert written["meta"] == original["meta"]
    assert_same_state_dict(written["state_dict"], original["state_dict"])


def test_export_is_self_describing_and_loads_in_torch(tmp_path, checkpoint):
    torch = pytest.importorskip("torch")
    path = tmp_path / "fresh.pth"
    counters = {k: 7 for k in checkpoint.num_batches_tracked}
    export_mmseg(path, checkpoint.config, checkpoint.variables, num_batches_tracked=counters,
                 test_cfg=checkpoint.test_cfg)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert state["decode_head.bottleneck.bn.num_batches_tracked"].dtype == torch.int64
    assert int(state["decode_head.bottleneck.bn.num_batches_tracked"]) == 7
    again = read_mmseg_checkpoint(path)  # config (post_norm, pool scales, test_cfg) from the written meta["cfg"]
    assert again.config == checkpoint.config and again.test_cfg == checkpoint.test_cfg
    for a, b in zip(jax.tree.leaves(again.variables), jax.tree.leaves(checkpoint.variables)):
        np.testing.assert_array_equal(a, b)
    export_mmseg(path, checkpoint.config, checkpoint.variables)  # without counters: int64 zeros
    assert int(torch.load(path, weights_only=True)["state_dict"]["auxiliary_head.convs.0.bn.num_batches_tracked"]) == 0


def test_mismatches_are_reported_together(checkpoint, original):
    state = dict(original["state_dict"])
    del state["decode_head.fpn_convs.1.bn.running_mean"]
    state["decode_head.conv_cat.weight"] = np.zeros((1,), np.float32)
    state["auxiliary_head.convs.0.conv.weight"] = np.zeros((16, 64, 1, 1), np.float32)
    with pytest.raises(KeyMismatchError) as err:
        variables_from_state_dict(state, checkpoint.config)
    message = str(err.value)
    assert "missing 1 key(s): decode_head.fpn_convs.1.bn.running_mean" in message
    assert "unexpected 1 key(s): decode_head.conv_cat.weight" in message
    assert "auxiliary_head.convs.0.conv.weight is (16, 64, 1, 1) but should be (16, 64, 3, 3)" in message


def test_weights_and_config_disagree(tmp_path, original):
    # One block fewer in stage 2 (the downsampling moves to index 1), config text unchanged.
    state = {k: v for k, v in original["state_dict"].items() if not k.startswith("backbone.layers.2.1.")}
    state.update({k.replace("layers.2.2.", "layers.2.1."): v for k, v in state.items() if "layers.2.2." in k})
    state = {k: v for k, v in state.items() if "layers.2.2." not in k}
    save_pth({"meta": original["meta"], "state_dict": state}, tmp_path / "short.pth")
    with pytest.raises(ArchitectureMismatchError, match="depths in checkpoint weights are 1-1-1-1, its meta"):
        read_mmseg_checkpoint(tmp_path / "short.pth")
    save_pth({"state_dict": state}, tmp_path / "bare.pth")  # without a config the weights decide
    assert read_mmseg_checkpoint(tmp_path / "bare.pth", post_norm=False).config.backbone.depths == (1, 1, 1, 1)


def test_config_text_is_parsed_without_evaluation(original):
    text = original["meta"]["cfg"] + "\nx = __import__('os').system('false')\n"
    model = model_cfg_from_text(text)
    assert model["backbone"]["post_norm"] is False and model["decode_head"]["pool_scales"] == (1, 2, 3, 6)
    assert model_cfg_from_text("model = dict(a=open('f'), b=1)") == {"b": 1}
