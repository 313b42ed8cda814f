"""vheat_jax.torch_io: reading and writing .pth files without torch, checked against torch itself."""

import json
import os
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

from conftest import VHEAT_FIXTURES
from vheat_jax.torch_io import CheckpointError, OpaqueObject, UnsafeCheckpointError, load_pth, save_pth

FIXTURES = VHEAT_FIXTURES
TRUSTED = ["tiny_prenorm.pth", "tiny_prenorm_dense.pth"]
PWNED_MARKER = Path("/tmp/vheat_fixture_pwned_marker")

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int64, np.int32, np.int16, np.int8,
          np.uint8, np.bool_, np.complex64, np.complex128]


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """torch -> numpy, including the dtypes numpy lacks (through ml_dtypes, bit for bit)."""
    exotic = {torch.bfloat16: (torch.int16, ml_dtypes.bfloat16),
              torch.float8_e4m3fn: (torch.uint8, ml_dtypes.float8_e4m3fn),
              torch.float8_e5m2: (torch.uint8, ml_dtypes.float8_e5m2)}
    tensor = tensor.detach().contiguous()
    if tensor.dtype in exotic:
        carrier, dtype = exotic[tensor.dtype]
        return tensor.view(carrier).numpy().view(dtype)
    return tensor.numpy()


def assert_same_array(ours, expected: np.ndarray, where: str) -> None:
    assert isinstance(ours, np.ndarray), where
    assert ours.dtype == expected.dtype and ours.shape == expected.shape, (where, ours.dtype, expected.dtype)
    assert ours.tobytes() == np.ascontiguousarray(expected).tobytes(), where


def assert_same_tree(ours, expected, where: str = "") -> int:
    """Recursive equality, tensors and arrays bit for bit; returns the number of tensors.

    ``expected`` is what torch.load (or the caller) gave; ``ours`` may hold tensors too (torch.load of our files).
    """
    if isinstance(ours, torch.Tensor):
        ours = to_numpy(ours)
    if isinstance(expected, torch.Tensor):
        assert_same_array(ours, to_numpy(expected), where)
        return 1
    if isinstance(expected, np.ndarray):
        assert_same_array(ours, expected, where)
        return 1
    if isinstance(expected, dict):
        assert isinstance(ours, dict), where
        assert list(ours) == list(expected), where
        return sum(assert_same_tree(ours[k], v, f"{where}/{k}") for k, v in expected.items())
    if isinstance(expected, (list, tuple)):
        assert type(ours) is type(expected) and len(ours) == len(expected), where
        return sum(assert_same_tree(a, b, f"{where}[{i}]") for i, (a, b) in enumerate(zip(ours, expected)))
    assert type(ours) is type(expected) and ours == expected, (where, ours, expected)
    return 0


def data_offsets(path: Path) -> dict[str, int]:
    """Where each record's data starts, from the zip's local headers."""
    raw = path.read_bytes()
    offsets = {}
    for info in zipfile.ZipFile(path).infolist():
        name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
        offsets[info.filename] = info.header_offset + 30 + name_len + extra_len
    return offsets


def zip_with_pickle(path: Path, data_pkl: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
    return path


# ---------------------------------------------------------------------------------------------
# the official fixtures


@pytest.mark.parametrize("name", TRUSTED)
def test_fixture_equals_torch_load(name):
    ours = load_pth(FIXTURES / name)
    expected = torch.load(FIXTURES / name, weights_only=False, map_location="cpu")  # trusted fixture
    assert assert_same_tree(ours, expected) > 50


def test_fixture_config_and_scalars():
    ckpt = load_pth(FIXTURES / "tiny_prenorm.pth")
    spec = json.loads((FIXTURES / "tiny_prenorm.json").read_text())
    config = ckpt["config"]
    assert isinstance(config, OpaqueObject) and isinstance(config["MODEL"]["VHEAT"], OpaqueObject)
    assert (config.module, config.qualname) == ("yacs.config", "CfgNode")
    assert config["MODEL"]["VHEAT"]["DEPTHS"] == spec["depths"]
    assert config["MODEL"]["VHEAT"]["EMBED_DIM"] == spec["dims"]
    assert config.state["__immutable__"] is False and config.state["__deprecated_keys__"] == set()
    assert isinstance(ckpt["epoch"], int) and isinstance(ckpt["max_accuracy"], float)
    assert ckpt["model"]["patch_embed.conv1.weight"].dtype == np.float32


# ---------------------------------------------------------------------------------------------
# refusing code


def test_malicious_fixture_is_refused_without_running_it():
    PWNED_MARKER.unlink(missing_ok=True)
    with pytest.raises(UnsafeCheckpointError, match=r"(posix|os)\.system"):
        load_pth(FIXTURES / "malicious.pth")
    assert not PWNED_MARKER.exists()


@pytest.mark.parametrize("data_pkl, name", [
    (b"\x80\x02cyacs.config\nload_cfg\nX\x01\x00\x00\x00a\x85R.", "yacs.config.load_cfg"),  # unknown, called
    (b"\x80\x02c__builtin__\neval\nX\x01\x00\x00\x00a\x85R.", "builtins.eval"),
    (b"\x80\x04\x8c\x02os\x8c\x06system\x93.", "os.system"),  # protocol 4 STACK_GLOBAL, not even called
    (b"(S'echo'\nisubprocess\ncall\n.", "subprocess.call"),  # protocol 0 INST
    # getattr on something real (here an allowed container type) could reach code
    (b"\x80\x02c__builtin__\ngetattr\nccollections\nOrderedDict\nX\x03\x00\x00\x00pop\x86R.",
     "builtins.getattr"),
])
def test_code_calling_pickles_are_refused(tmp_path, data_pkl, name):
    with pytest.raises(UnsafeCheckpointError, match=name.replace(".", r"\.")):
        load_pth(zip_with_pickle(tmp_path / "bad.pth", data_pkl))


@pytest.mark.parametrize("name", ["upernet_mmseg/upernet_tiny.pth", "maskrcnn_mmdet/maskrcnn_tiny.pth"])
def test_mmengine_checkpoints_load_with_inert_message_hub(name):
    """mmengine pickles HistoryBuffer objects and getattr(HistoryBuffer, 'min'); both stay inert."""
    ckpt = load_pth(FIXTURES.parent / name)
    assert all(isinstance(v, np.ndarray) for v in ckpt["state_dict"].values())
    buffers = ckpt["message_hub"]["log_scalars"]
    assert buffers and all(isinstance(b, OpaqueObject) and b.qualname == "HistoryBuffer" for b in buffers.values())


def test_unknown_classes_become_inert(tmp_path):
    # NEWOBJ of an unknown dict subclass with items and BUILD state, then a protocol-0 copyreg object
    data_pkl = (b"\x80\x02]q\x00(cmy.mod\nNode\n)\x81(X\x01\x00\x00\x00kK\x01u}(X\x01\x00\x00\x00sK\x02ub"
                b"ccopy_reg\n_reconstructor\ncmy.mod\nThing\nc__builtin__\nobject\nN\x87Re.")
    node, thing = load_pth(zip_with_pickle(tmp_path / "opaque.pth", data_pkl))
    assert isinstance(node, OpaqueObject) and node == {"k": 1} and node.state == {"s": 2}
    assert (node.module, node.qualname) == ("my.mod", "Node")
    assert isinstance(thing, OpaqueObject) and thing.qualname == "Thing"


# ---------------------------------------------------------------------------------------------
# unreadable files


def test_corrupt_files_raise_checkpoint_error(tmp_path):
    source = (FIXTURES / "tiny_prenorm_dense.pth").read_bytes()
    cases = {
        "truncated.pth": (source[: len(source) // 2], "truncated or corrupt"),
        "random.pth": (np.random.default_rng(0).bytes(4096), "not a PyTorch checkpoint"),
        "empty.pth": (b"", "empty"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=message) as info:
            load_pth(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)


def test_corrupt_storage_record_is_reported(tmp_path):
    raw = bytearray((FIXTURES / "tiny_prenorm_dense.pth").read_bytes())
    offset = data_offsets(FIXTURES / "tiny_prenorm_dense.pth")["tiny_prenorm_dense/data/0"]
    raw[offset] ^= 0xFF  # CRC mismatch
    (tmp_path / "flipped.pth").write_bytes(raw)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_pth(tmp_path / "flipped.pth")


def float_tensor_pickle(numel: int, size: int, stride: int) -> bytes:
    """``_rebuild_tensor_v2`` of a 1-D view (size, stride) of FloatStorage ``data/0`` declared with numel elements."""
    return (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
            b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK" + bytes([numel]) + b"tQK\x00K" + bytes([size])
            + b"\x85K" + bytes([stride]) + b"\x85\x89NtR.")


@pytest.mark.parametrize("data_pkl, storage_bytes, message", [
    (float_tensor_pickle(4, 3, 2), 16, "runs past the end of its storage"),  # would read out of bounds
    (float_tensor_pickle(8, 2, 1), 16, "fewer than its 8 FloatStorage elements need"),
    (float_tensor_pickle(4, 2, 1), None, "record archive/data/0 is missing"),
])
def test_malformed_tensors_are_refused(tmp_path, data_pkl, storage_bytes, message):
    path = zip_with_pickle(tmp_path / "bad.pth", data_pkl)
    if storage_bytes is not None:
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr("archive/data/0", bytes(storage_bytes))
    with pytest.raises(CheckpointError, match=message):
        load_pth(path)


def test_valid_hand_made_tensor(tmp_path):
    path = zip_with_pickle(tmp_path / "ok.pth", float_tensor_pickle(4, 2, 3))
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("archive/data/0", np.arange(4, dtype="<f4").tobytes())
    np.testing.assert_array_equal(load_pth(path), np.array([0.0, 3.0], np.float32))


def test_legacy_torch_file_is_explained(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy.*re-save it with torch >= 1.6"):
        load_pth(tmp_path / "legacy.pth")


# ---------------------------------------------------------------------------------------------
# writing, and reading what torch writes


def random_array(rng: np.random.Generator, dtype, shape) -> np.ndarray:
    if np.dtype(dtype) == np.bool_:
        values = rng.random(shape) > 0.5
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    elif np.issubdtype(dtype, np.complexfloating):
        values = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    else:
        values = rng.standard_normal(shape)
    return np.asarray(values, dtype=dtype)  # also for shape (), where numpy hands back scalars


def test_round_trip_through_torch(tmp_path):
    rng = np.random.default_rng(0)
    state = OrderedDict()
    for dtype in DTYPES:
        name = np.dtype(dtype).name
        state[f"{name}.matrix"] = random_array(rng, dtype, (3, 5))
        state[f"{name}.scalar"] = random_array(rng, dtype, ())
        state[f"{name}.transposed"] = random_array(rng, dtype, (4, 6)).T
        state[f"{name}.strided"] = random_array(rng, dtype, (5, 8, 3))[::2, 1::3]
    state["empty"] = np.zeros((0, 3), np.float32)
    obj = {"model": state, "epoch": 7, "lr": 1.5e-4, "name": "vheat", "tags": ["a", ("b", None)], "best": True,
           "big": 1 << 70, "neg": -(1 << 40), "nested": {"more": np.arange(4)}}
    path = tmp_path / "ours.pth"
    save_pth(obj, path)

    assert assert_same_tree(torch.load(path, weights_only=True), obj) == len(state) + 1
    assert assert_same_tree(load_pth(path), obj) == len(state) + 1
    assert type(load_pth(path)["model"]) is OrderedDict
    assert all(offset % 64 == 0 for offset in data_offsets(path).values())


def test_save_rejects_what_torch_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match="uint16"):
        save_pth({"w": np.zeros(2, np.uint16)}, tmp_path / "x.pth")
    with pytest.raises(TypeError, match="int64"):
        save_pth({"epoch": np.int64(3)}, tmp_path / "x.pth")


def test_reads_what_torch_writes(tmp_path):
    base = torch.randn(6, 4)
    state = OrderedDict([
        ("weight", base),
        ("row", base[2]),  # shares the storage of "weight", at an offset
        ("column", base[:, 1]),  # strided view
        ("half", torch.randn(3).to(torch.bfloat16)),
        ("param", torch.nn.Parameter(torch.ones(2))),
        ("count", torch.tensor(5)),
        ("u16", torch.arange(4).to(torch.uint16)),  # written with _rebuild_tensor_v3
        ("f8", torch.randn(3).to(torch.float8_e4m3fn)),
    ])
    extras = {"epoch": np.int64(3), "acc": np.float64(0.5), "hist": np.arange(3.0), "raw": b"xy", "ids": {1, 2}}
    torch.save({"state": state, **extras}, tmp_path / "theirs.pth")
    ours = load_pth(tmp_path / "theirs.pth")
    assert assert_same_tree(ours["state"], state) == len(state)
    assert ours["epoch"] == 3 and ours["epoch"].dtype == np.int64 and ours["acc"] == 0.5
    np.testing.assert_array_equal(ours["hist"], extras["hist"])
    assert ours["raw"] == b"xy" and ours["ids"] == {1, 2}


def test_loading_never_imports_torch(tmp_path):
    script = ("import sys, vheat_jax, vheat_jax.torch_io as t; "
              f"t.load_pth({str(FIXTURES / 'tiny_prenorm_dense.pth')!r}); "
              "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
