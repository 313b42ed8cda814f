"""Official PyTorch vHeat checkpoints <-> Flax parameters, without torch.

Reads the classification checkpoints the official trainer writes
(``{"model", "model_ema", "optimizer", ..., "config": <yacs CfgNode>}``), the
dense-prediction checkpoints of mmdet/mmseg (``{"state_dict": {"backbone.*"}}``)
and bare state dicts, through :mod:`vheat_jax.torch_io` (no code execution).
Writes Orbax checkpoints, single ``.msgpack`` files and ``.pth`` files that the
official code loads with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from vheat_jax.arch import Arch, arch_from_official_config, arch_from_state_dict, official_post_norm
from vheat_jax.keymap import flax_to_torch, torch_to_flax
from vheat_jax.paths import as_path, is_remote
from vheat_jax.torch_io import CheckpointError, load_pth, save_pth

log = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone."
ARCH_FILE = "vheat_arch.json"


WRAPPER_PREFIX = "module."  # DistributedDataParallel / EMA wrappers save keys under .module


def require_tensors(state_dict: Any, source: str) -> dict[str, np.ndarray]:
    """``state_dict`` as a dict, after checking that it maps names to tensors (numpy arrays)."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{source}: expected a state dict, found {type(state_dict).__name__}")
    bad = [k for k, v in state_dict.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {', '.join(map(str, bad[:8]))}")
    return dict(state_dict)


def read_mmengine_checkpoint(path: str | os.PathLike) -> tuple[Mapping, dict[str, np.ndarray]]:
    """``(checkpoint, state_dict)`` of an mmdet/mmseg ``.pth`` (``{"meta", "state_dict", ...}`` or a bare state dict)."""
    ckpt = load_pth(path)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: expected a dict at the top level, found {type(ckpt).__name__}")
    return ckpt, require_tensors(ckpt.get("state_dict", ckpt), str(path))


def _numpy_state_dict(state_dict: Mapping[str, Any], source: str) -> dict[str, np.ndarray]:
    state_dict = require_tensors(state_dict, source)
    if state_dict and all(k.startswith(WRAPPER_PREFIX) for k in state_dict):
        return {k[len(WRAPPER_PREFIX):]: v for k, v in state_dict.items()}
    return state_dict


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
        return _numpy_state_dict(backbone, f"{path}['state_dict']"), None
    return _numpy_state_dict(ckpt, path), None  # a bare state dict (what export_torch writes, or model.state_dict())


def params_from_torch(path: str | os.PathLike, *, ema: bool = False,
                      post_norm: bool | None = None) -> tuple[Arch, dict]:
    """Reads an official checkpoint into ``(arch, params)``, with strict key and shape checks."""
    ckpt = load_pth(path)
    state_dict, config = split_checkpoint(ckpt, ema=ema, path=str(path))
    said = official_post_norm(config) if isinstance(config, Mapping) else None
    found = arch_from_state_dict(state_dict, post_norm=said if post_norm is None else post_norm)
    arch = found
    if isinstance(config, Mapping):
        arch = arch_from_official_config(config, found)
        if post_norm is not None:
            arch = arch.replace(post_norm=post_norm)
    return arch, torch_to_flax(state_dict, arch, found=found)


def export_torch(params: Mapping, arch: Arch, path: str | os.PathLike) -> None:
    """Writes ``params`` as the official state dict.

    Classification weights go under ``"model"`` (what the official ``main.py`` and
    the detection/segmentation ``load_pretrained`` read); backbone weights go under
    ``"state_dict"`` with the ``backbone.`` prefix, as mmdet/mmseg write them.
    Either loads into the official module with ``load_state_dict(strict=True)``.
    """
    state_dict = flax_to_torch(params, arch)
    if arch.dense:
        payload = {"state_dict": OrderedDict((BACKBONE_PREFIX + k, v) for k, v in state_dict.items())}
    else:
        payload = {"model": state_dict}
    save_pth(payload, path)


def save_msgpack(params: Mapping, arch: Arch, path: str | os.PathLike) -> None:
    """One self-describing file (Flax msgpack; no pickle): ``{"arch": json, "params": tree}``."""
    payload = serialization.msgpack_serialize({"arch": arch.to_json(), "params": jax.tree.map(np.asarray, params)})
    if is_remote(path):  # an object store replaces whole objects atomically
        as_path(path).write_bytes(payload)
        return
    tmp = Path(f"{path}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def save_orbax(params: Mapping, arch: Arch, directory: str | os.PathLike) -> None:
    """An Orbax checkpoint directory ``directory/params`` plus ``directory/vheat_arch.json``."""
    import orbax.checkpoint as ocp

    directory = as_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "params", jax.tree.map(np.asarray, params), force=True)
    (directory / ARCH_FILE).write_text(arch.to_json())


def load_converted(path: str | os.PathLike) -> tuple[Arch, dict]:
    """Loads what :func:`save_orbax` or :func:`save_msgpack` wrote."""
    path = as_path(path)
    if path.is_dir():
        import orbax.checkpoint as ocp

        if not (path / ARCH_FILE).exists():
            raise CheckpointError(f"{path}: no {ARCH_FILE}; not a directory written by convert_torch.py")
        arch = Arch.from_json((path / ARCH_FILE).read_text())
        with ocp.StandardCheckpointer() as checkpointer:
            params = checkpointer.restore(path / "params")
        return arch, params
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
        return Arch.from_json(payload["arch"]), payload["params"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: not a vheat-jax .msgpack file ({err})") from err


def load_any(path: str | os.PathLike, *, ema: bool = False, post_norm: bool | None = None) -> tuple[Arch, dict]:
    """``(arch, params)`` from a ``.pth`` (converted on the fly), an Orbax directory or a ``.msgpack``."""
    path = as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.is_dir() or path.suffix == ".msgpack":
        return load_converted(path)
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
