"""Official PyTorch vHeat checkpoints <-> Flax parameters, without torch.

Reads the classification checkpoints the official trainer writes
(``{"model", "model_ema", "optimizer", ..., "config": <yacs CfgNode>}``), the
dense-prediction checkpoints of mmdet/mmseg (``{"state_dict": {"backbone.*"}}``)
and bare state dicts, through :mod:`vheat_jax.torch_io` (no code execution).
Writes Orbax checkpoints, single ``.msgpack`` files and ``.pth`` files that the
official code loads with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import serialization, traverse_util

from vheat_jax.arch import (
    Arch,
    ArchitectureMismatchError,
    arch_from_official_config,
    arch_from_state_dict,
    official_config,
    official_post_norm,
)
from vheat_jax.keymap import flax_param_shapes, flax_to_torch, mismatch_report, table_mismatches, torch_to_flax
from vheat_jax.paths import as_path, check_regular_file, check_regular_tree, is_remote, read_small_file
from vheat_jax.torch_io import CheckpointError, load_pth, save_pth

log = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone."
ARCH_FILE = "vheat_arch.json"


WRAPPER_PREFIX = "module."  # DistributedDataParallel / EMA wrappers save keys under .module


WEIGHT_DTYPES = frozenset(np.dtype(d) for d in ("float16", "float32", "float64", ml_dtypes.bfloat16))
"""What a weight may be stored as; integer, bool and complex tensors are refused (complex would lose its
imaginary part, integers their meaning)."""

COUNTER_SUFFIX = ".num_batches_tracked"
"""BatchNorm's step counter: the one integer tensor a state dict legitimately holds."""


def require_tensors(state_dict: Any, source: str) -> dict[str, np.ndarray]:
    """``state_dict`` as a dict, after checking that it maps string names to real floating-point tensors."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{source}: expected a state dict, found {type(state_dict).__name__}")
    bad_keys = [k for k in state_dict if not isinstance(k, str)]
    if bad_keys:
        raise CheckpointError(f"{source}: state-dict keys must be strings, found {bad_keys[0]!r:.40} "
                              f"({type(bad_keys[0]).__name__})")
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, np.ndarray)]
    if not_tensors:
        raise CheckpointError(f"{source}: entries that are not tensors: {', '.join(not_tensors[:8])}")
    for key, value in state_dict.items():
        allowed = value.dtype.kind in "iu" if key.endswith(COUNTER_SUFFIX) else value.dtype in WEIGHT_DTYPES
        if not allowed:
            expected = "an integer" if key.endswith(COUNTER_SUFFIX) else "bfloat16, float16, float32 or float64"
            raise CheckpointError(f"{source}: {key} is a {value.dtype} tensor, expected {expected}")
    return dict(state_dict)


def read_mmengine_checkpoint(path: str | os.PathLike) -> tuple[Mapping, dict[str, np.ndarray]]:
    """``(checkpoint, state_dict)`` of an mmdet/mmseg ``.pth``: ``{"meta", "state_dict", ...}`` or a bare state dict."""
    ckpt = load_pth(path)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: expected a dict at the top level, found {type(ckpt).__name__}")
    return ckpt, require_tensors(ckpt.get("state_dict", ckpt), str(path))


def _numpy_state_dict(state_dict: Mapping[str, Any], source: str) -> dict[str, np.ndarray]:
    state_dict = require_tensors(state_dict, source)
    if state_dict and all(k.startswith(WRAPPER_PREFIX) for k in state_dict):
        return {k[len(WRAPPER_PREFIX):]: v for k, v in state_dict.items()}
    return state_dict


ARCH_META_KEY = "vheat_jax_arch"
"""Where our mmengine-layout exports (backbones, Mask R-CNN) keep their :class:`Arch`, in ``meta``."""


def post_norm_from_meta(ckpt: Mapping) -> bool | None:
    """The pre/post-norm choice an mmengine-layout file we exported carries in ``meta``; None otherwise."""
    meta = ckpt.get("meta")
    text = meta.get(ARCH_META_KEY) if isinstance(meta, Mapping) else None
    return Arch.from_json(text).post_norm if isinstance(text, str) else None


def split_checkpoint(ckpt: Any, *, ema: bool, path: str) -> tuple[dict[str, np.ndarray], Mapping | None]:
    """Finds the backbone state dict (and the official config, if any) in a loaded checkpoint."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: expected a dict at the top level, found {type(ckpt).__name__}")
    if "model" in ckpt:  # official classification trainer
        key = "model_ema" if ema else "model"
        if key not in ckpt:
            raise CheckpointError(f"{path}: has no {key!r} weights (keys: {', '.join(map(str, ckpt))}); "
                                  f"{'drop --ema' if ema else 'pick --ema'} to use what is there")
        return _numpy_state_dict(ckpt[key], f"{path}[{key!r}]"), ckpt.get("config")
    if ema:
        raise CheckpointError(f"{path}: EMA weights were asked for, but only classification checkpoints "
                              "of the official trainer carry them")
    if "state_dict" in ckpt:  # mmdet / mmseg
        state = ckpt["state_dict"]
        backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
        if not backbone:
            raise CheckpointError(f"{path}: 'state_dict' has no 'backbone.*' keys")
        others = sorted({k.split(".")[0] for k in state if not k.startswith(BACKBONE_PREFIX)})
        if others:
            log.info("%s: using backbone.* only; not part of the backbone: %s", path, ", ".join(others))
        said = post_norm_from_meta(ckpt)
        config = None if said is None else {"MODEL": {"VHEAT": {"POST_NORM": said}}}
        return _numpy_state_dict(backbone, f"{path}['state_dict']"), config
    return _numpy_state_dict(ckpt, path), None  # a bare state dict (what export_torch writes, or model.state_dict())


def params_from_torch(path: str | os.PathLike, *, ema: bool = False,
                      post_norm: bool | None = None) -> tuple[Arch, dict]:
    """Reads an official checkpoint into ``(arch, params)``, with strict key and shape checks."""
    ckpt = load_pth(path)
    state_dict, config = split_checkpoint(ckpt, ema=ema, path=str(path))
    return _params_from_state_dict(state_dict, config, post_norm)


def _params_from_state_dict(state_dict: dict[str, np.ndarray], config: Mapping | None,
                            post_norm: bool | None) -> tuple[Arch, dict]:
    """``(arch, params)`` of an official-layout state dict; ``config`` is the official config's fields, if any."""
    said = official_post_norm(config) if isinstance(config, Mapping) else None
    found = arch_from_state_dict(state_dict, post_norm=said if post_norm is None else post_norm)
    arch = found
    if isinstance(config, Mapping):
        arch = arch_from_official_config(config, found)
        if post_norm is not None:
            arch = arch.replace(post_norm=post_norm)
    return arch, torch_to_flax(state_dict, arch, found=found)


def params_from_safetensors(path: str | os.PathLike, *, post_norm: bool | None = None) -> tuple[Arch, dict]:
    """``(arch, params)`` from a ``.safetensors`` file holding the official state dict (what
    :func:`save_safetensors` writes, or a model zoo's): the same strict checks as a ``.pth``; the
    architecture in its metadata, where present, is checked against the weights and supplies pre/post-norm."""
    path = as_path(path)
    check_regular_file(path, "checkpoint")
    data = path.read_bytes()  # bounded by the file's size; local or gs://
    tensors, metadata = _parse_safetensors(data, str(path))
    text = metadata.get(ARCH_META_KEY)
    config = official_config(Arch.from_json(text)) if isinstance(text, str) else None
    return _params_from_state_dict(_numpy_state_dict(tensors, str(path)), config, post_norm)


def _parse_safetensors(data: bytes, source: str) -> tuple[dict[str, np.ndarray], dict]:
    """``(tensors, metadata)``; the header's length claim is checked against the file before it is read."""
    from safetensors import SafetensorError  # noqa: PLC0415 - only where safetensors files are used
    from safetensors.numpy import load  # noqa: PLC0415

    header_bytes = int.from_bytes(data[:8], "little")
    if len(data) < 8 or header_bytes > len(data) - 8:
        raise CheckpointError(f"{source} is not a safetensors file (its header is missing or longer than the file)")
    try:
        header = json.loads(data[8:8 + header_bytes])
        tensors = load(data)
    except (SafetensorError, ValueError, TypeError) as err:
        raise CheckpointError(f"{source} is not a readable safetensors file ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return tensors, metadata if isinstance(metadata, dict) else {}


def save_safetensors(params: Mapping, arch: Arch, path: str | os.PathLike) -> None:
    """The official state dict (the same keys and layouts as :func:`export_torch`'s ``model``, or a bare
    backbone's) as safetensors, with ``arch`` in its metadata; no pickle anywhere."""
    from safetensors.numpy import save  # noqa: PLC0415

    state_dict = {key: np.ascontiguousarray(value) for key, value in flax_to_torch(params, arch).items()}
    _write_atomically(save(state_dict, metadata={"format": "pt", ARCH_META_KEY: arch.to_json()}), path)


def export_torch(params: Mapping, arch: Arch, path: str | os.PathLike) -> None:
    """Writes ``params`` as the official state dict.

    Classification weights go under ``"model"`` (what the official ``main.py`` and
    the detection/segmentation ``load_pretrained`` read); backbone weights go under
    ``"state_dict"`` with the ``backbone.`` prefix, as mmdet/mmseg write them.
    Either loads into the official module with ``load_state_dict(strict=True)``.
    """
    state_dict = flax_to_torch(params, arch)
    if arch.dense:  # mmengine's layout; its loaders ignore meta keys they do not know
        payload = {"state_dict": OrderedDict((BACKBONE_PREFIX + k, v) for k, v in state_dict.items()),
                   "meta": {ARCH_META_KEY: arch.to_json()}}
    else:  # the official trainer's layout, with its config's architecture fields
        payload = {"model": state_dict, "config": official_config(arch)}
    save_pth(payload, path)


CHECKSUM_FILE = "vheat_checksums.json"


def array_checksums(params: Mapping) -> dict[str, int]:
    """CRC-32 of every array's bytes, by ``/``-joined parameter path: written at save time, checked at load."""
    return {"/".join(path): zlib.crc32(np.ascontiguousarray(value).reshape(-1).view(np.uint8))
            for path, value in traverse_util.flatten_dict(dict(params)).items()}


ARCH_CHECKSUM_KEY = "#arch"  # no parameter path starts with '#'


def arch_checksum(arch: Arch) -> int:
    """The CRC-32 of the architecture's JSON."""
    return zlib.crc32(arch.to_json().encode())


def checksums(params: Mapping, arch: Arch) -> dict[str, int]:
    """What an export stores beside its arrays: :func:`array_checksums` and :func:`arch_checksum`."""
    return {**array_checksums(params), ARCH_CHECKSUM_KEY: arch_checksum(arch)}


def verify_checksums(params: Mapping, arch: Arch, expected: Any, source: str) -> None:
    """Refuses ``params`` or ``arch`` that differ from what was written (a flipped bit, a truncated copy, an edit)."""
    if expected is None:
        raise CheckpointError(f"{source} carries no checksums, so its arrays and architecture cannot be verified; "
                              "export it again with convert_torch.py (or load it with verify=False)")
    if not isinstance(expected, Mapping):
        raise CheckpointError(f"{source}: its checksums are {type(expected).__name__}, not a mapping")
    expected = dict(expected)
    if expected.pop(ARCH_CHECKSUM_KEY, None) != arch_checksum(arch):
        raise CheckpointError(f"{source}: its architecture ({ARCH_FILE} / 'arch': {arch}) does not match the "
                              "checksum written with it; the file was edited or is corrupt: copy or convert it "
                              "again (verify=False loads it anyway)")
    found = array_checksums(params)
    corrupt = sorted(path for path in found if expected.get(path) != found[path])
    if corrupt or set(expected) != set(found):
        named = corrupt or sorted(set(expected) ^ set(found))
        raise CheckpointError(f"{source}: {len(named)} array(s) do not match the checksums written with them "
                              f"({', '.join(named[:6])}); the file is corrupt: copy or convert it again "
                              "(verify=False loads it anyway)")


def check_params(params: Any, arch: Arch, source: str) -> dict:
    """``params`` after checking they are exactly the arrays ``arch`` declares: every one used, every shape right."""
    if not isinstance(params, Mapping):
        raise CheckpointError(f"{source}: its params are {type(params).__name__}, not a tree of arrays")
    flat = {"/".join(map(str, path)): value for path, value in traverse_util.flatten_dict(dict(params)).items()}
    table = {"/".join(path): (shape,) for path, shape in flax_param_shapes(arch).items()}
    not_arrays = [key for key, value in flat.items() if not isinstance(value, (np.ndarray, jax.Array))]
    if not_arrays:
        raise CheckpointError(f"{source}: entries that are not arrays: {', '.join(not_arrays[:8])}")
    bad_dtype = [key for key, value in flat.items() if np.dtype(value.dtype) not in WEIGHT_DTYPES]
    if bad_dtype:
        raise CheckpointError(f"{source}: {bad_dtype[0]} is {flat[bad_dtype[0]].dtype}, expected a real "
                              "floating-point type")
    missing, unexpected, misshaped = table_mismatches(flat, table)
    if missing or unexpected or misshaped:
        raise ArchitectureMismatchError(mismatch_report(
            missing, unexpected, misshaped, subject=f"{source}: its arrays do not fit its declared architecture "
            f"({ARCH_FILE} / 'arch')"))
    return params


def save_msgpack(params: Mapping, arch: Arch, path: str | os.PathLike) -> None:
    """One self-describing file (Flax msgpack; no pickle): ``{"arch": json, "params": tree, "checksums"}``."""
    params = jax.tree.map(np.asarray, params)
    payload = serialization.msgpack_serialize(
        {"arch": arch.to_json(), "params": params, "checksums": checksums(params, arch)})
    _write_atomically(payload, path)


def _write_atomically(payload: bytes, path: str | os.PathLike) -> None:
    if is_remote(path):  # an object store replaces whole objects atomically
        as_path(path).write_bytes(payload)
        return
    tmp = Path(f"{path}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def save_orbax(params: Mapping, arch: Arch, directory: str | os.PathLike) -> None:
    """An Orbax checkpoint ``directory/params`` plus ``vheat_arch.json`` and the arrays' checksums."""
    import orbax.checkpoint as ocp

    params = jax.tree.map(np.asarray, params)
    directory = as_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "params", params, force=True)
    (directory / CHECKSUM_FILE).write_text(json.dumps(checksums(params, arch)))
    (directory / ARCH_FILE).write_text(arch.to_json())  # last: its presence marks a complete directory


def _read_orbax(path, verify: bool) -> tuple[Arch, dict, Any]:
    import orbax.checkpoint as ocp

    if not (path / ARCH_FILE).exists():
        raise CheckpointError(f"{path}: no {ARCH_FILE}; not a directory written by convert_torch.py")
    arch = Arch.from_json(read_small_file(path / ARCH_FILE, "architecture file"))
    stored = None
    if verify and (path / CHECKSUM_FILE).exists():
        try:
            stored = json.loads(read_small_file(path / CHECKSUM_FILE, "checksum file"))
        except ValueError as err:
            raise CheckpointError(f"{path / CHECKSUM_FILE} is corrupt ({err})") from None
    check_regular_tree(path / "params", "checkpoint data")  # a FIFO there would hang Orbax's read
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            params = checkpointer.restore(path / "params")
    except (ValueError, OSError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path / 'params'} could not be restored ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); the checkpoint is corrupt") from None
    return arch, params, stored


def _read_msgpack(path, verify: bool) -> tuple[Arch, dict, Any]:
    check_regular_file(path, "checkpoint")
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # noqa: BLE001 - msgpack's errors for malformed bytes have no common base
        raise CheckpointError(f"{path}: not a vheat-jax .msgpack file ({type(err).__name__}: {err})") from None
    if not (isinstance(payload, dict) and isinstance(payload.get("arch"), str) and "params" in payload):
        raise CheckpointError(f"{path}: not a vheat-jax .msgpack file (no 'arch' and 'params')")
    return Arch.from_json(payload["arch"]), payload["params"], payload.get("checksums") if verify else None


def load_converted(path: str | os.PathLike, *, verify: bool = True) -> tuple[Arch, dict]:
    """Loads what :func:`save_orbax` or :func:`save_msgpack` wrote, strictly.

    Every stored array must be one its declared architecture has, of the right
    shape, and (unless ``verify=False``) carry the bytes its checksum says.
    """
    path = as_path(path)
    arch, params, stored_checksums = (_read_orbax if path.is_dir() else _read_msgpack)(path, verify)
    params = check_params(params, arch, str(path))
    if verify:
        verify_checksums(params, arch, stored_checksums, str(path))
    return arch, params


def checkpoint_kind(path: str | os.PathLike) -> str:
    """``"segmentation"`` (an mmseg UperNet ``.pth``), ``"detection"`` (an mmdet Mask R-CNN ``.pth``) or
    ``"classification"`` (anything else: a vHeat classifier or backbone, as eval.py and init_from read),
    from the pickle's keys alone: no tensor bytes are read."""
    path = as_path(path)
    if path.is_dir() or path.suffix != ".pth":
        return "classification"
    state = load_pth(path, tensors=False)  # the keys tell; the tensors are read once, by the loader that follows
    state = state.get("state_dict", {}) if isinstance(state, dict) else {}
    if any(str(key).startswith("decode_head.") for key in state):
        return "segmentation"
    if any(str(key).startswith("roi_head.") for key in state):
        return "detection"
    return "classification"


def load_any(path: str | os.PathLike, *, ema: bool = False, post_norm: bool | None = None,
             verify: bool = True) -> tuple[Arch, dict]:
    """``(arch, params)`` from a ``.pth`` or ``.safetensors`` (converted on the fly), an Orbax directory or a
    ``.msgpack``."""
    path = as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.is_dir() or path.suffix == ".msgpack":
        return load_converted(path, verify=verify)
    if path.suffix == ".safetensors":
        if ema:
            raise CheckpointError(f"{path}: EMA weights were asked for, but a .safetensors file holds one set")
        return params_from_safetensors(path, post_norm=post_norm)
    return params_from_torch(path, ema=ema, post_norm=post_norm)


def load_torch_checkpoint(path: str | os.PathLike, *, ema: bool = False, post_norm: bool | None = None):
    """``(model, variables)`` for an official vHeat checkpoint, ready for ``model.apply(variables, images)``.

    ``images`` are NHWC float32. A classification checkpoint gives logits; a
    dense-prediction checkpoint gives the four NHWC stage features after their
    out-norms. Evaluation mode by default (no drop path, no RNG). ``ema`` picks
    ``model_ema``; ``post_norm`` overrides or supplies what the checkpoint does
    not say (dense checkpoints carry no config).
    """
    arch, params = params_from_torch(path, ema=ema, post_norm=post_norm)
    return arch.build(), {"params": params}
