"""A checkpoint's kind is told from its pickle's keys: ``load_pth(tensors=False)`` reads no tensor bytes, so
init_from and predict.py read a checkpoint's tensors once, not once to classify it and again to load it."""

import numpy as np
import pytest
from conftest import FIXTURES, VHEAT_FIXTURES

from vheat_jax import torch_io
from vheat_jax.convert import checkpoint_kind
from vheat_jax.torch_io import CheckpointError, load_pth, save_pth

KINDS = {
    FIXTURES / "upernet_mmseg" / "upernet_tiny.pth": "segmentation",
    FIXTURES / "maskrcnn_mmdet" / "maskrcnn_tiny.pth": "detection",
    VHEAT_FIXTURES / "tiny_prenorm.pth": "classification",
    VHEAT_FIXTURES / "tiny_postnorm_ls_dense.pth": "classification",
}


def tensor_layout(tree, prefix: str = "") -> dict:
    """``{path: (shape, dtype)}`` of every array in a loaded checkpoint."""
    if isinstance(tree, np.ndarray):
        return {prefix: (tree.shape, tree.dtype)}
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in tensor_layout(value, f"{prefix}/{key}").items()}
    return {}


@pytest.fixture
def storage_reads(monkeypatch):
    """Counts the storage records read from any archive."""
    reads = []
    read_storage = torch_io._Archive._read_storage

    def counting(archive, key):
        reads.append(key)
        return read_storage(archive, key)

    monkeypatch.setattr(torch_io._Archive, "_read_storage", counting)
    return reads


@pytest.mark.parametrize("path", list(KINDS), ids=lambda p: p.name)
def test_the_kind_comes_from_the_keys_alone(path, storage_reads):
    assert checkpoint_kind(path) == KINDS[path]
    assert storage_reads == []
    layout = load_pth(path, tensors=False)
    assert storage_reads == []
    full = load_pth(path)
    assert len(storage_reads) == len(set(storage_reads)) > 0  # the loader reads each storage once

    assert tensor_layout(layout) == tensor_layout(full) != {}


def test_a_layout_load_leaves_the_tensor_bytes_unread(tmp_path):
    """A storage record with a flipped byte: the full load refuses it (zip CRC); the layout load never reads it."""
    weight = np.full((4, 8), 1.2345, np.float32)
    path = tmp_path / "seg.pth"
    save_pth({"meta": {}, "state_dict": {"decode_head.conv_seg.weight": weight}}, path)
    data = bytearray(path.read_bytes())
    at = data.find(weight.tobytes())
    assert at > 0
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError):
        load_pth(path)
    layout = load_pth(path, tensors=False)["state_dict"]["decode_head.conv_seg.weight"]
    assert layout.shape == (4, 8) and layout.dtype == np.float32 and not layout.flags.writeable
    assert checkpoint_kind(path) == "segmentation"
