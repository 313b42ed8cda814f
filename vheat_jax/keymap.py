"""Explicit map between official PyTorch state-dict keys and our Flax parameter tree.

The map is derived from the Flax parameter tree itself (``jax.eval_shape`` of
``init``), so every Flax parameter has exactly one torch key and one layout
transform, and the inverse (export) is the same table read backwards.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vheat_jax.arch import Arch, arch_differences
from vheat_jax.errors import KeyMismatchError

FlaxPath = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
    """A pair of inverse transforms between a torch tensor and a Flax array."""

    name: str
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


SAME = Layout("same", lambda a: a, lambda a: a)
# Conv2d (out, in/groups, kh, kw) <-> flax Conv (kh, kw, in/groups, out).
CONV = Layout("conv", lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))
# Linear (out, in) <-> flax Dense (in, out).
LINEAR = Layout("linear", lambda a: a.T, lambda a: a.T)
# The MLP is 1x1 Conv2d (out, in, 1, 1) in torch, Dense (in, out) here.
CONV1X1 = Layout("conv1x1", lambda a: a[:, :, 0, 0].T, lambda a: a.T[:, :, None, None])

_TOP_LEVEL = {
    "patch_embed_conv1": "patch_embed.conv1",
    "patch_embed_conv2": "patch_embed.conv2",
    # The stem norms are nn.Sequential(to_channels_last, LayerNorm, to_channels_first).
    "patch_embed_norm1": "patch_embed.norm1.1",
    "patch_embed_norm2": "patch_embed.norm2.1",
    "classifier_norm": "classifier.0",
    "head": "classifier.3",
}
_DOWNSAMPLE_INDEX = {"downsample_conv": 0, "downsample_norm": 1}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def torch_key(path: FlaxPath, depths: tuple[int, ...]) -> str:
    """The official state-dict key of one Flax parameter."""
    head, *rest = path
    if match := re.fullmatch(r"freq_embed_(\d+)", head):
        return f"freq_embed.{match[1]}"
    if match := re.fullmatch(r"outnorm_(\d+)", head):
        module = f"outnorm{match[1]}"
    elif match := re.fullmatch(r"layers_(\d+)", head):
        stage = int(match[1])
        sub, *rest = rest
        if block := re.fullmatch(r"blocks_(\d+)", sub):
            module = f"layers.{stage}.{block[1]}"
        else:  # downsampling is nn.Sequential(conv, norm) after the blocks in the same Sequential
            module = f"layers.{stage}.{depths[stage]}.{_DOWNSAMPLE_INDEX[sub]}"
    else:
        module = _TOP_LEVEL[head]
    *inner, leaf = rest
    inner = ["to_k.0" if name == "to_k" else name for name in inner]  # to_k is Sequential(Linear, ReLU)
    return ".".join([module, *inner, _LEAF.get(leaf, leaf)])


def layout_of(path: FlaxPath, ndim: int) -> Layout:
    if path[-1] != "kernel":
        return SAME
    if ndim == 4:
        return CONV
    return CONV1X1 if "mlp" in path else LINEAR


def _to_torch_shape(layout: Layout, shape: tuple[int, ...]) -> tuple[int, ...]:
    return layout.to_torch(np.empty(shape, dtype=np.int8)).shape


def flax_param_shapes(arch: Arch) -> dict[FlaxPath, tuple[int, ...]]:
    """Shapes of the Flax parameters of ``arch``, without allocating them."""
    module = arch.build()
    images = jax.ShapeDtypeStruct((1, arch.img_size, arch.img_size, 3), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), images)["params"]
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(shapes).items()}


def expected_torch_shapes(arch: Arch) -> dict[str, tuple[FlaxPath, Layout, tuple[int, ...]]]:
    table = {}
    for path, shape in flax_param_shapes(arch).items():
        layout = layout_of(path, len(shape))
        table[torch_key(path, arch.depths)] = (path, layout, _to_torch_shape(layout, shape))
    return table


def table_mismatches(state_dict: Mapping[str, Any], table: Mapping[str, tuple]) -> tuple[list, list, list]:
    """``(missing, unexpected, misshaped)`` of ``state_dict`` against a key table whose entries end
    with the expected torch shape; misshaped items are ``(key, shape found, shape expected)``."""
    missing = [key for key in table if key not in state_dict]
    unexpected = [key for key in state_dict if key not in table]
    misshaped = [(key, np.shape(state_dict[key]), table[key][-1]) for key in table
                 if key in state_dict and tuple(np.shape(state_dict[key])) != tuple(table[key][-1])]
    return missing, unexpected, misshaped


def mismatch_report(missing, unexpected, misshaped, hint=(),
                    subject: str = "state dict does not fit the architecture") -> str:
    """One line naming what is missing, unexpected and mis-shaped (and why, in ``hint``)."""
    def listing(keys, limit=12):
        keys = sorted(keys)
        more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more
    parts = []
    if hint:
        parts.append("; ".join(hint))
    if missing:
        parts.append(f"missing {len(missing)} key(s): {listing(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s): {listing(unexpected)}")
    if misshaped:
        parts.append(f"{len(misshaped)} mis-shaped: " + ", ".join(
            f"{k} is {tuple(got)} but should be {tuple(want)}" for k, got, want in misshaped[:12]))
    return f"{subject}: " + " | ".join(parts)


def torch_to_flax(state_dict: Mapping[str, Any], arch: Arch, found: Arch | None = None) -> dict:
    """Converts an official state dict (numpy arrays) into Flax ``params`` for ``arch``.

    Every source key must be used and every shape must match, else one
    :class:`KeyMismatchError` lists what is missing, unexpected and mis-shaped,
    and (given ``found``, the architecture the weights themselves describe) why.
    """
    table = expected_torch_shapes(arch)
    missing, unexpected, misshaped = table_mismatches(state_dict, table)
    if missing or unexpected or misshaped:
        hint = arch_differences(found, arch) if found is not None else []
        raise KeyMismatchError(mismatch_report(missing, unexpected, misshaped, hint))
    flat = {path: jnp.asarray(layout.to_flax(np.asarray(state_dict[key])))
            for key, (path, layout, _) in table.items()}
    return traverse_util.unflatten_dict(flat)


def flax_to_torch(params: Mapping, arch: Arch) -> OrderedDict[str, np.ndarray]:
    """Exports Flax ``params`` to the official state dict (numpy, torch layouts, official key order
    within each module is not significant to ``load_state_dict``)."""
    flat = traverse_util.flatten_dict(params)
    table = expected_torch_shapes(arch)
    by_path = {path: (key, layout) for key, (path, layout, _) in table.items()}
    if set(flat) != set(by_path):
        missing = ["/".join(p) for p in by_path if p not in flat]
        unexpected = ["/".join(p) for p in flat if p not in by_path]
        raise KeyMismatchError(mismatch_report(missing, unexpected, []))
    out = OrderedDict()
    for path, (key, layout) in by_path.items():
        out[key] = np.ascontiguousarray(layout.to_torch(np.asarray(flat[path])))
    return out
