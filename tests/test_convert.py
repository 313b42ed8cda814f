"""The converter: strict checks, file formats, round trips, the CLI, and safety."""

import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, VHEAT_CASES, load_case, nchw_to_nhwc

import vheat_jax
from vheat_jax.arch import ArchitectureMismatchError, arch_from_state_dict
from vheat_jax.convert import split_checkpoint
from vheat_jax.keymap import KeyMismatchError, torch_to_flax
from vheat_jax.torch_io import load_pth

MARKER = "/tmp/vheat_fixture_pwned_marker"


def official_state_dict(path, key="model"):
    return load_pth(path)[key]


@pytest.mark.parametrize("case", VHEAT_CASES)
def test_torch_jax_torch_round_trip_is_identical(vheat_fixtures, case, tmp_path):
    torch = pytest.importorskip("torch")
    source = official_state_dict(vheat_fixtures / f"{case}.pth")
    arch, params = vheat_jax.params_from_torch(vheat_fixtures / f"{case}.pth")
    vheat_jax.export_torch(params, arch, tmp_path / "back.pth")
    exported = torch.load(tmp_path / "back.pth", weights_only=True)["model"]
    # Same keys and shapes as the official model's state_dict(): strict load_state_dict accepts it.
    assert set(exported) == set(source)
    for key, tensor in exported.items():
        assert tensor.dtype == torch.float32
        np.testing.assert_array_equal(tensor.numpy(), source[key], err_msg=key)


@pytest.mark.parametrize("case", VHEAT_CASES)
def test_dense_round_trip(vheat_fixtures, case, tmp_path):
    meta, _ = load_case(case)
    source = official_state_dict(vheat_fixtures / f"{case}_dense.pth", "state_dict")
    arch, params = vheat_jax.params_from_torch(vheat_fixtures / f"{case}_dense.pth", post_norm=meta["post_norm"])
    vheat_jax.export_torch(params, arch, tmp_path / "dense.pth")
    exported = load_pth(tmp_path / "dense.pth")["state_dict"]
    assert set(exported) == set(source)
    for key in source:
        np.testing.assert_array_equal(exported[key], source[key], err_msg=key)


@pytest.mark.parametrize("fmt", ["orbax", "model.msgpack"])
def test_converted_files_reload_to_same_logits(vheat_fixtures, tmp_path, fmt):
    _, arrays = load_case("tiny_postnorm_ls")
    arch, params = vheat_jax.params_from_torch(vheat_fixtures / "tiny_postnorm_ls.pth")
    target = tmp_path / fmt
    (vheat_jax.save_orbax if fmt == "orbax" else vheat_jax.save_msgpack)(params, arch, target)
    loaded_arch, loaded = vheat_jax.load_any(target)
    assert loaded_arch == arch
    logits = loaded_arch.build().apply({"params": loaded}, jnp.asarray(nchw_to_nhwc(arrays["input"])))
    np.testing.assert_allclose(logits, arrays["logits"], atol=5e-5, rtol=0)


def test_config_and_weights_disagree_names_the_difference(vheat_fixtures):
    """A config asking other depths: one error listing missing keys and saying why."""
    state_dict = official_state_dict(vheat_fixtures / "tiny_postnorm_ls.pth")
    found = arch_from_state_dict(state_dict, post_norm=True)
    asked = found.replace(depths=(1, 1, 2, 1))
    with pytest.raises(KeyMismatchError) as err:
        torch_to_flax(state_dict, asked, found=found)
    message = str(err.value)
    assert "depths in checkpoint are 1-2-2-1, config asks 1-1-2-1" in message
    assert "unexpected" in message and "layers.1.1.op.dwconv.weight" in message
    assert "\n" not in message


def test_misshaped_and_missing_keys_are_listed(vheat_fixtures):
    state_dict = dict(official_state_dict(vheat_fixtures / "tiny_prenorm.pth"))
    arch = arch_from_state_dict(state_dict, post_norm=False)
    state_dict["classifier.3.weight"] = state_dict["classifier.3.weight"][:, :7]
    del state_dict["layers.0.0.op.to_k.0.bias"]
    state_dict["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(KeyMismatchError) as err:
        torch_to_flax(state_dict, arch)
    message = str(err.value)
    assert "missing 1 key(s): layers.0.0.op.to_k.0.bias" in message
    assert "unexpected 1 key(s): extra.weight" in message
    assert "classifier.3.weight is (10, 7) but should be (10, 128)" in message


def test_checkpoint_config_contradicting_weights_is_refused(vheat_fixtures):
    ckpt = load_pth(vheat_fixtures / "tiny_prenorm.pth")
    ckpt["config"]["MODEL"]["VHEAT"]["DEPTHS"] = [2, 2, 6, 2]
    state_dict, config = split_checkpoint(ckpt, ema=False, path="x.pth")
    found = arch_from_state_dict(state_dict)
    with pytest.raises(ArchitectureMismatchError, match="depths in checkpoint weights are 1-1-2-1, "
                                                         "checkpoint config asks 2-2-6-2"):
        vheat_jax.arch.arch_from_official_config(config, found)


def test_ema_from_a_dense_checkpoint_is_a_clear_error(vheat_fixtures):
    with pytest.raises(vheat_jax.CheckpointError, match="EMA"):
        vheat_jax.load_torch_checkpoint(vheat_fixtures / "tiny_prenorm_dense.pth", ema=True)


def test_malicious_checkpoint_is_refused_and_runs_nothing(vheat_fixtures):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    with pytest.raises(vheat_jax.UnsafeCheckpointError, match="posix.system"):
        vheat_jax.load_torch_checkpoint(vheat_fixtures / "malicious.pth")
    assert not os.path.exists(MARKER)


def test_corrupt_checkpoint_is_a_one_line_error(vheat_fixtures, tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes((vheat_fixtures / "tiny_prenorm.pth").read_bytes()[:50_000])
    with pytest.raises(vheat_jax.CheckpointError) as err:
        vheat_jax.load_torch_checkpoint(broken)
    assert "\n" not in str(err.value)


def run_cli(*args, env_extra=None):
    """Runs convert_torch.py in a fresh interpreter that fails if torch gets imported."""
    guard = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = ['convert_torch.py', *sys.argv[1:]]; "
             "runpy.run_path('convert_torch.py', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", guard, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu", **(env_extra or {})})


def test_cli_converts_without_torch_and_adapts_size(vheat_fixtures, tmp_path):
    """Converter CLI with torch made unimportable: .pth -> .pth with the official zero-pad recipe."""
    meta, arrays = load_case("tiny_prenorm")
    out = tmp_path / "padded.pth"
    result = run_cli(vheat_fixtures / "tiny_prenorm.pth", out, "--img-size", meta["pad_to"])
    assert result.returncode == 0, result.stderr
    exported = load_pth(out)["model"]
    for i in range(4):
        np.testing.assert_array_equal(exported[f"freq_embed.{i}"], arrays[f"padded_freq_embed{i}"])


def test_cli_inference_form_and_errors(vheat_fixtures, tmp_path):
    _, arrays = load_case("tiny_prenorm")
    out = tmp_path / "infer.msgpack"
    result = run_cli(vheat_fixtures / "tiny_prenorm.pth", out, "--inference-form", "--ema")
    assert result.returncode == 0, result.stderr
    arch, params = vheat_jax.load_any(out)
    assert arch.infer_mode and "freq_embed_0" not in params
    logits = arch.build().apply({"params": params}, jnp.asarray(nchw_to_nhwc(arrays["input"])))
    assert np.isfinite(logits).all()

    refused = run_cli(vheat_fixtures / "malicious.pth", tmp_path / "x")
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "posix.system" in refused.stderr
    assert not os.path.exists(MARKER)


def test_export_of_inference_form_matches_official_infer_keys(vheat_fixtures, tmp_path):
    """Inference form exports k_exp per block and drops to_k / freq_embed, as infer_init() does."""
    arch, params = vheat_jax.params_from_torch(vheat_fixtures / "tiny_prenorm.pth")
    infer_arch, infer_params = vheat_jax.to_inference_form(params, arch)
    vheat_jax.export_torch(infer_params, infer_arch, tmp_path / "infer.pth")
    exported = load_pth(tmp_path / "infer.pth")["model"]
    source = official_state_dict(vheat_fixtures / "tiny_prenorm.pth")
    expected = {k for k in source if ".to_k." not in k and not k.startswith("freq_embed.")}
    expected |= {f"layers.{i}.{j}.op.k_exp" for i, d in enumerate(arch.depths) for j in range(d)}
    assert set(exported) == expected
    assert exported["layers.0.0.op.k_exp"].shape == (16, 16, 16)
    again_arch, again = vheat_jax.params_from_torch(tmp_path / "infer.pth", post_norm=False)
    assert again_arch.infer_mode
    jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, infer_params))


def test_wrapped_state_dict_keys_are_unwrapped(vheat_fixtures, tmp_path):
    """A state dict saved from a DDP/EMA wrapper (keys under 'module.') loads like the plain one."""
    from vheat_jax.torch_io import save_pth

    state_dict = official_state_dict(vheat_fixtures / "tiny_prenorm.pth")
    save_pth({"model": {f"module.{k}": v for k, v in state_dict.items()}}, tmp_path / "wrapped.pth")
    arch, params = vheat_jax.params_from_torch(tmp_path / "wrapped.pth", post_norm=False)
    _, reference = vheat_jax.params_from_torch(vheat_fixtures / "tiny_prenorm.pth")
    jax.tree.map(np.testing.assert_array_equal, params, reference)


@pytest.mark.parametrize("dense", [False, True], ids=["classification", "backbone"])
def test_exports_keep_their_pre_post_norm_choice(vheat_fixtures, tmp_path, caplog, dense):
    """Pre-norm without layer scale is what the weights-only guess says; post-norm is the choice the file must
    carry. Read back with no hint: the choice comes back, and no 'assuming' warning is logged."""
    name = "tiny_prenorm_dense.pth" if dense else "tiny_prenorm.pth"
    arch, params = vheat_jax.params_from_torch(vheat_fixtures / name, post_norm=False)
    for post_norm in (True, False):
        chosen = arch.replace(post_norm=post_norm)
        vheat_jax.export_torch(params, chosen, tmp_path / "back.pth")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            again, _ = vheat_jax.params_from_torch(tmp_path / "back.pth")
        assert again == chosen
        assert not [r for r in caplog.records if "pre- or post-norm" in r.getMessage()]


@pytest.mark.parametrize("case", VHEAT_CASES)
def test_pth_to_safetensors_to_flax_gives_the_official_logits(vheat_fixtures, tmp_path, case):
    """Through the CLI with torch unimportable: no pickle on the way out either."""
    _, arrays = load_case(case)
    out = tmp_path / "w.safetensors"
    result = run_cli(vheat_fixtures / f"{case}.pth", out)
    assert result.returncode == 0, result.stderr
    arch, params = vheat_jax.load_any(out)
    assert arch == vheat_jax.params_from_torch(vheat_fixtures / f"{case}.pth")[0]
    logits = arch.build().apply({"params": params}, jnp.asarray(nchw_to_nhwc(arrays["input"])))
    np.testing.assert_allclose(logits, arrays["logits"], atol=5e-5, rtol=0)


@pytest.mark.parametrize("name, key", [("tiny_postnorm_ls.pth", "model"), ("tiny_prenorm_dense.pth", "state_dict")])
def test_flax_to_safetensors_to_pth_is_the_official_state_dict(vheat_fixtures, tmp_path, name, key):
    """What strict load_state_dict checks: the same keys, shapes and values as the official file; torch's own
    safetensors reader agrees."""
    from safetensors.torch import load_file

    arch, params = vheat_jax.params_from_torch(vheat_fixtures / name, post_norm=name.startswith("tiny_postnorm"))
    vheat_jax.save_safetensors(params, arch, tmp_path / "w.safetensors")
    assert run_cli(tmp_path / "w.safetensors", tmp_path / "back.pth").returncode == 0
    official = official_state_dict(vheat_fixtures / name, key)
    back = load_pth(tmp_path / "back.pth")[key]
    in_torch = load_file(tmp_path / "w.safetensors")
    prefix = "backbone." if key == "state_dict" else ""
    assert set(back) == set(official) == {prefix + k for k in in_torch}
    for k, value in official.items():
        np.testing.assert_array_equal(back[k], value, err_msg=k)
        np.testing.assert_array_equal(in_torch[k[len(prefix):]].numpy(), value, err_msg=k)


def test_a_safetensors_file_that_lies_about_its_header_is_one_line(tmp_path, vheat_fixtures):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    result = run_cli(bad, tmp_path / "out.msgpack")
    assert result.returncode == 2 and "header is missing or longer than the file" in result.stderr
    assert result.stderr.strip().count("\n") == 0
