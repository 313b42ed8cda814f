"""Loaders refuse what would load wrong data: mistyped configs and weights, edited architectures, flipped bytes.

And the adversarial regression corpus plus a short fuzz run, under a memory cap
(``tests/fuzz_loaders.py``, in a subprocess so the cap does not reach other tests).
"""

import json
import os
import re
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
from flax import serialization
from conftest import ROOT

import vheat_jax
from vheat_jax.arch import Arch, ArchitectureMismatchError, arch_from_official_config
from vheat_jax.convert import params_from_torch
from vheat_jax.seg.convert import model_cfg_from_text, read_mmseg_checkpoint
from vheat_jax.torch_io import CheckpointError, load_pth, save_pth


@pytest.fixture(scope="module")
def official(vheat_fixtures):
    """The post-norm fixture's classification state dict, as plain arrays."""
    return load_pth(vheat_fixtures / "tiny_postnorm_ls.pth")["model"]


def official_config(**vheat):
    return {"MODEL": {"VHEAT": vheat}}


@pytest.mark.parametrize(("field", "value"), [
    ("POST_NORM", "False"), ("DEPTHS", 7), ("LAYER_SCALE", "abc"), ("EMBED_DIM", 96.0), ("DEPTHS", [1, "2"]),
])
def test_mistyped_official_config_values_are_refused_naming_the_field(official, tmp_path, field, value):
    save_pth({"model": official, "config": official_config(**{field: value})}, tmp_path / "c.pth")
    with pytest.raises(ArchitectureMismatchError, match=f"MODEL.VHEAT.{field} is"):
        params_from_torch(tmp_path / "c.pth")


def test_a_bool_post_norm_in_the_config_is_obeyed(official, tmp_path):
    save_pth({"model": official, "config": official_config(POST_NORM=False)}, tmp_path / "c.pth")
    arch, _ = params_from_torch(tmp_path / "c.pth")
    assert arch.post_norm is False


@pytest.mark.parametrize("dtype", [np.complex64, np.int64, np.bool_])
def test_weights_of_non_real_float_dtypes_are_refused(official, tmp_path, dtype):
    weights = dict(official)
    weights["classifier.3.weight"] = weights["classifier.3.weight"].astype(dtype)
    save_pth({"model": weights}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=rf"classifier.3.weight is a {np.dtype(dtype)} tensor"):
        params_from_torch(tmp_path / "w.pth")


def test_state_dict_keys_must_be_strings(official, tmp_path):
    save_pth({"model": {**official, 7: official["classifier.3.bias"]}}, tmp_path / "k.pth")
    with pytest.raises(CheckpointError, match="keys must be strings"):
        params_from_torch(tmp_path / "k.pth")


def test_mmseg_meta_that_is_not_a_dict_is_refused(tmp_path):
    save_pth({"meta": [1, 2], "state_dict": {"backbone.x": np.zeros(2, np.float32)}}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="'meta' is a list"):
        read_mmseg_checkpoint(tmp_path / "m.pth")


def test_deeply_nested_cfg_text_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="nests too deeply"):
        model_cfg_from_text("model = dict(x=" + "-" * 2000 + "1)")


def test_arch_json_fields_are_typed():
    good = Arch(dims=8, depths=(1, 1, 2, 1), post_norm=False, layer_scale=None, img_size=64, num_classes=10)
    assert Arch.from_json(good.to_json()) == good
    for edit in ({"post_norm": "false"}, {"depths": 7}, {"dims": -1}, {"unknown": 1}):
        with pytest.raises(ArchitectureMismatchError):
            Arch.from_json(json.dumps({**json.loads(good.to_json()), **edit}))
    with pytest.raises(ArchitectureMismatchError):
        arch_from_official_config({"MODEL": {"VHEAT": [1]}}, good)


@pytest.fixture(scope="module")
def converted(vheat_fixtures):
    return vheat_jax.params_from_torch(vheat_fixtures / "tiny_postnorm_ls.pth")


def test_an_edited_arch_json_that_drops_a_block_is_refused(converted, tmp_path):
    arch, params = converted
    vheat_jax.save_orbax(params, arch, tmp_path / "o")
    fewer = arch.replace(depths=tuple(max(1, d - 1) for d in arch.depths))
    assert fewer != arch
    (tmp_path / "o" / "vheat_arch.json").write_text(fewer.to_json())
    with pytest.raises(ArchitectureMismatchError, match="do not fit its declared architecture.*unexpected"):
        vheat_jax.load_any(tmp_path / "o")


def _flip(path, offset, count=1):
    data = bytearray(path.read_bytes())
    for i in range(count):
        data[offset + i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_msgpack_array_is_caught_by_its_checksum(converted, tmp_path):
    arch, params = converted
    path = tmp_path / "w.msgpack"
    vheat_jax.save_msgpack(params, arch, path)
    weight = np.asarray(params["head"]["kernel"])
    offset = path.read_bytes().find(weight.tobytes())
    assert offset > 0
    _flip(path, offset + weight.nbytes // 2)
    with pytest.raises(CheckpointError, match=r"checksums.*head/kernel"):
        vheat_jax.load_any(path)
    _, loaded = vheat_jax.load_any(path, verify=False)  # the flag that skips verification
    assert not np.array_equal(loaded["head"]["kernel"], weight)


def test_flipped_bytes_in_an_orbax_data_file_are_refused(converted, tmp_path):
    arch, params = converted
    vheat_jax.save_orbax(params, arch, tmp_path / "o")
    data_files = sorted((p for p in (tmp_path / "o" / "params").rglob("*") if p.is_file() and "/d/" in str(p)),
                        key=lambda p: p.stat().st_size)
    assert data_files, "Orbax wrote no OCDBT data file"
    biggest = data_files[-1]
    _flip(biggest, biggest.stat().st_size // 2, count=10)
    with pytest.raises(CheckpointError):
        vheat_jax.load_any(tmp_path / "o")


def test_adversarial_corpus_and_fuzz_run_under_a_memory_cap(vheat_fixtures, tmp_path):
    """Every case of issue 12 refused; 60 mutations of real files end in a load or a CheckpointError."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz_loaders.py"), "--examples", "60", "--workdir", str(tmp_path),
         "--seed-file", str(vheat_fixtures / "tiny_prenorm_dense.pth")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, report["failures"]
    assert set(report["corpus"].values()) == {"refused"}
    assert report["fuzz_outcomes"].get("refused", 0) > 0


def test_arch_fields_are_bounded_by_what_a_real_vheat_can_be():
    good = json.loads(Arch(dims=8, depths=(1, 1), post_norm=False, layer_scale=None, img_size=64,
                           num_classes=10).to_json())
    for edit, why in (({"depths": [1_000_000_000, 1, 1, 1]}, "depths"), ({"img_size": 10**9}, "img_size"),
                      ({"num_classes": 10**9}, "num_classes"), ({"dims": 1024, "depths": [64, 64, 64, 64]},
                                                                "parameters")):
        with pytest.raises(ArchitectureMismatchError, match=why):
            Arch.from_json(json.dumps({**good, **edit}))


def test_an_edited_architecture_is_caught_by_its_checksum(converted, tmp_path):
    """post_norm flipped: the arrays still fit, the outputs would not."""
    arch, params = converted
    vheat_jax.save_orbax(params, arch, tmp_path / "o")
    (tmp_path / "o" / "vheat_arch.json").write_text(arch.replace(post_norm=not arch.post_norm).to_json())
    with pytest.raises(CheckpointError, match="architecture .* does not match the checksum"):
        vheat_jax.load_any(tmp_path / "o")
    assert vheat_jax.load_any(tmp_path / "o", verify=False)[0].post_norm != arch.post_norm


def test_exports_without_checksums_are_refused_unless_verify_is_off(converted, tmp_path):
    arch, params = converted
    vheat_jax.save_orbax(params, arch, tmp_path / "o")
    (tmp_path / "o" / "vheat_checksums.json").unlink()
    path = tmp_path / "w.msgpack"
    vheat_jax.save_msgpack(params, arch, path)
    payload = serialization.msgpack_restore(path.read_bytes())
    del payload["checksums"]
    path.write_bytes(serialization.msgpack_serialize(payload))
    for export in (tmp_path / "o", path):
        with pytest.raises(CheckpointError, match="carries no checksums.*verify=False"):
            vheat_jax.load_any(export)
        assert vheat_jax.load_any(export, verify=False)[0] == arch


def test_a_pth_whose_zip_names_a_record_twice_is_refused(vheat_fixtures, tmp_path):
    """torch.load reads the first of two same-named records, zipfile the last: refuse rather than differ."""
    source = vheat_fixtures / "tiny_prenorm_dense.pth"
    twice = tmp_path / "twice.pth"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(twice, "w", zipfile.ZIP_STORED) as out:
        for name in original.namelist():
            out.writestr(name, original.read(name))
        record = next(name for name in original.namelist() if name.endswith("/data/0"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
            out.writestr(record, bytes(len(original.read(record))))
    with pytest.raises(CheckpointError, match="data/0 more than once"):
        load_pth(twice)


@pytest.mark.parametrize("pattern, replacement, field", [
    (r"dropout_ratio=0\.1", "dropout_ratio='x'", "decode_head.dropout_ratio = 'x'"),
    (r"pool_scales=\([^)]*\)", "pool_scales=('x',)", r"decode_head.pool_scales = \('x',\)")])
def test_mmseg_cfg_values_of_the_wrong_type_are_refused_naming_the_field(vheat_fixtures, tmp_path, pattern,
                                                                         replacement, field):
    checkpoint = load_pth(vheat_fixtures.parent / "upernet_mmseg" / "upernet_tiny.pth")
    text, count = re.subn(pattern, replacement, checkpoint["meta"]["cfg"])  # in every head that has it
    assert count >= 1
    save_pth({"meta": {"cfg": text}, "state_dict": checkpoint["state_dict"]}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=rf"model\.{field}; expected"):
        read_mmseg_checkpoint(tmp_path / "m.pth")
