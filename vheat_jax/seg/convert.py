"""mmsegmentation checkpoints of UperNet-vHeat <-> Flax variables, without torch.

An mmseg checkpoint is ``{"meta", "state_dict", "message_hub", ...}``; it is read
through :func:`vheat_jax.torch_io.load_pth` (no code runs; mmengine's
``HistoryBuffer`` objects in ``message_hub`` stay inert). ``state_dict`` keys:

* ``backbone.*`` - the vHeat backbone, named by :func:`vheat_jax.keymap.torch_key`;
* ``decode_head.*`` / ``auxiliary_head.*`` - the heads; every ConvModule is
  ``<module>.conv.weight`` and ``<module>.bn.{weight,bias,running_mean,running_var,
  num_batches_tracked}``, the classifiers ``conv_seg.{weight,bias}``.

The key map is derived from the Flax variable tree (``jax.eval_shape`` of ``init``),
so every Flax leaf has one torch key and one layout, and export is the same table
read backwards. Reading is strict: a missing, unexpected or mis-shaped key raises
one :class:`~vheat_jax.keymap.KeyMismatchError` that lists them all.

``num_batches_tracked`` (BatchNorm's step counter) plays no part in the forward
pass, with or without training (momentum is fixed), so it is accepted and kept
aside on read (:attr:`MMSegCheckpoint.num_batches_tracked`) and written back on
export: the stored value where given, else int64 0.

What the weights do not fix (pre- or post-norm blocks, the PPM pooling scales, the
auxiliary head's input stage) is read from the model config that mmengine stores as
text in ``meta["cfg"]``, parsed as literals only (nothing is evaluated), or given by
the caller.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vheat_jax import keymap
from vheat_jax.arch import arch_from_state_dict, check_arch
from vheat_jax.convert import read_mmengine_checkpoint
from vheat_jax.keymap import CONV, SAME, KeyMismatchError, Layout
from vheat_jax.seg.model import UperNet, UperNetConfig
from vheat_jax.torch_io import CheckpointError, save_pth

log = logging.getLogger(__name__)

BACKBONE = "backbone"
HEADS = ("decode_head", "auxiliary_head")
COUNTER = "num_batches_tracked"
_BN_LEAF = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_NOT_A_LITERAL = object()

FlaxPath = tuple[str, ...]  # (collection, module, ..., leaf)


# --------------------------------------------------------------------------- key map


def _head_module_key(name: str) -> str:
    """``psp_modules_2`` -> ``psp_modules.2.1`` (index 0 is the pooling layer); ``fpn_convs_1`` -> ``fpn_convs.1``."""
    if match := re.fullmatch(r"psp_modules_(\d+)", name):
        return f"psp_modules.{match[1]}.1"
    if match := re.fullmatch(r"(lateral_convs|fpn_convs|convs)_(\d+)", name):
        return f"{match[1]}.{match[2]}"
    return name  # bottleneck, fpn_bottleneck, conv_seg


def torch_key(path: FlaxPath, depths: tuple[int, ...]) -> str:
    """The mmseg state-dict key of one Flax variable (``("params" | "batch_stats", top, ...)``)."""
    _, top, *rest = path
    if top == BACKBONE:
        return f"{BACKBONE}.{keymap.torch_key(tuple(rest), depths)}"
    module, *inner = rest
    if inner[0] == "bn":
        inner = ["bn", _BN_LEAF[inner[1]]]
    else:  # conv/kernel of a ConvModule, or kernel/bias of conv_seg
        inner = [{"kernel": "weight"}.get(name, name) for name in inner]
    return ".".join([top, _head_module_key(module), *inner])


def _layout(path: FlaxPath, ndim: int) -> Layout:
    if path[1] == BACKBONE:
        return keymap.layout_of(path[2:], ndim)
    return CONV if path[-1] == "kernel" else SAME


def variable_shapes(config: UperNetConfig) -> dict[FlaxPath, tuple[int, ...]]:
    """Shapes of every Flax variable of ``config``, without allocating them."""
    size = config.backbone.img_size
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(config.build().init, jax.random.key(0), images)
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(shapes).items()}


def key_table(config: UperNetConfig) -> dict[str, tuple[FlaxPath, Layout, tuple[int, ...]]]:
    """torch key -> (Flax path, layout, torch shape), for every Flax variable."""
    table = {}
    for path, shape in variable_shapes(config).items():
        layout = _layout(path, len(shape))
        table[torch_key(path, config.backbone.depths)] = (path, layout, layout.to_torch(np.empty(shape, np.int8)).shape)
    return table


def bn_prefixes(table: Mapping[str, Any]) -> list[str]:
    """The torch module names of every BatchNorm (``decode_head.bottleneck.bn``, ...)."""
    return [key[: -len(".running_mean")] for key in table if key.endswith(".running_mean")]


def variables_from_state_dict(state_dict: Mapping[str, Any], config: UperNetConfig) -> tuple[dict, dict[str, int]]:
    """``(variables, num_batches_tracked)`` from an mmseg state dict (numpy arrays), strictly checked."""
    table = key_table(config)
    counters = {key: int(np.asarray(value)) for key, value in state_dict.items() if key.endswith("." + COUNTER)}
    bns = {f"{prefix}.{COUNTER}" for prefix in bn_prefixes(table)}
    weights = {key: value for key, value in state_dict.items() if key not in counters}
    missing, unexpected, misshaped = keymap.table_mismatches(weights, table)
    unexpected += [key for key in counters if key not in bns]
    if missing or unexpected or misshaped:
        raise KeyMismatchError(keymap.mismatch_report(missing, unexpected, misshaped))
    flat = {path: jnp.asarray(layout.to_flax(np.asarray(weights[key], np.float32)))
            for key, (path, layout, _) in table.items()}
    return traverse_util.unflatten_dict(flat), counters


def state_dict_from_variables(variables: Mapping, config: UperNetConfig,
                              num_batches_tracked: Mapping[str, int] | None = None) -> OrderedDict[str, np.ndarray]:
    """The mmseg state dict of ``variables`` (numpy, torch layouts); every BatchNorm gets its
    ``num_batches_tracked`` (int64) from ``num_batches_tracked`` or 0."""
    table = key_table(config)
    flat = traverse_util.flatten_dict(variables)
    wanted = {path for path, _, _ in table.values()}
    if set(flat) != wanted:
        missing = ["/".join(p) for p in wanted - set(flat)]
        unexpected = ["/".join(p) for p in set(flat) - wanted]
        raise KeyMismatchError(keymap.mismatch_report(missing, unexpected, []))
    out = OrderedDict((key, np.ascontiguousarray(layout.to_torch(np.asarray(flat[path]))))
                      for key, (path, layout, _) in table.items())
    counters = num_batches_tracked or {}
    for prefix in bn_prefixes(table):
        key = f"{prefix}.{COUNTER}"
        out[key] = np.array(counters.get(key, 0), np.int64)
    return out


# --------------------------------------------------------------------------- the config text


def _literal(node: ast.AST) -> Any:
    """Value of a config expression built from literals, tuples, lists, dicts and ``dict(...)``."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        values = [_literal(item) for item in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal(node.operand)
        return -value if isinstance(value, (int, float)) else _NOT_A_LITERAL
    if isinstance(node, ast.Dict) and all(key is not None for key in node.keys):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"
            and not node.args and all(kw.arg for kw in node.keywords)):
        return {kw.arg: _literal(kw.value) for kw in node.keywords}
    return _NOT_A_LITERAL


MAX_CFG_CHARS = 1 << 20
"""Longest ``meta["cfg"]`` text parsed (mmseg's dumps are a few kilobytes)."""


def model_cfg_from_text(cfg_text: str) -> dict:
    """The ``model = dict(...)`` of an mmengine config dump, as plain data (``{}`` if absent).

    Values that are not literals (names, calls other than ``dict``) are left out.
    Text longer than :data:`MAX_CFG_CHARS` or nested deeper than the parser allows is refused.
    """
    if not isinstance(cfg_text, str) or len(cfg_text) > MAX_CFG_CHARS:
        raise CheckpointError(f"meta['cfg'] is {type(cfg_text).__name__} of {len(cfg_text)} characters; "
                              f"expected a config text of at most {MAX_CFG_CHARS}")
    try:
        tree = ast.parse(cfg_text)
    except SyntaxError as err:
        log.warning("meta['cfg'] is not Python (%s); ignoring it", err)
        return {}
    except (RecursionError, MemoryError):  # CPython's parser gives up on very deep nesting this way
        raise CheckpointError("meta['cfg'] nests too deeply to parse; the checkpoint is corrupt") from None

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not _NOT_A_LITERAL}
        return value

    for statement in tree.body:
        if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name) and statement.targets[0].id == "model"):
            try:
                value = _literal(statement.value)
            except RecursionError:
                raise CheckpointError("meta['cfg'] nests too deeply to read; the checkpoint is corrupt") from None
            return clean(value) if isinstance(value, dict) else {}
    return {}


def model_cfg_text(config: UperNetConfig, test_cfg: Mapping | None = None) -> str:
    """An mmseg ``model = dict(...)`` config for ``config`` (what export writes to ``meta["cfg"]``)."""
    arch = config.backbone
    model = {
        "type": "EncoderDecoder",
        "backbone": {"type": "MMSEG_VHEAT", "dims": arch.dims, "depths": tuple(arch.depths),
                     "post_norm": arch.post_norm, "layer_scale": arch.layer_scale, "img_size": arch.img_size,
                     "out_indices": (0, 1, 2, 3)},
        "decode_head": {"type": "UPerHead", "in_channels": config.in_channels, "in_index": [0, 1, 2, 3],
                         "channels": config.channels, "pool_scales": tuple(config.pool_scales),
                         "dropout_ratio": config.dropout_ratio, "num_classes": config.num_classes,
                         "norm_cfg": {"type": "SyncBN", "requires_grad": True}, "align_corners": False},
        "auxiliary_head": {"type": "FCNHead", "in_channels": config.in_channels[config.aux_in_index],
                            "in_index": config.aux_in_index, "channels": config.aux_channels,
                            "num_convs": config.aux_num_convs, "kernel_size": config.aux_kernel_size,
                            "concat_input": False, "dropout_ratio": config.dropout_ratio,
                            "num_classes": config.num_classes,
                            "norm_cfg": {"type": "SyncBN", "requires_grad": True}, "align_corners": False},
    }
    if test_cfg is not None:
        model["test_cfg"] = dict(test_cfg)
    return f"model = {model!r}\n"


# --------------------------------------------------------------------------- reading the architecture


def _count(state_dict: Mapping, pattern: str) -> int:
    return len({match[1] for key in state_dict if (match := re.fullmatch(pattern, key))})


def config_from_state_dict(state_dict: Mapping[str, Any], model_cfg: Mapping | None = None,
                           post_norm: bool | None = None) -> UperNetConfig:
    """The :class:`UperNetConfig` of an mmseg state dict; ``model_cfg`` (mmseg's ``model`` dict) and
    ``post_norm`` supply what the weights do not say. Missing head keys give a clear error."""
    model_cfg = model_cfg or {}
    backbone_cfg = model_cfg.get("backbone", {})
    decode_cfg = model_cfg.get("decode_head", {})
    aux_cfg = model_cfg.get("auxiliary_head", {})
    for head in HEADS:
        if f"{head}.conv_seg.weight" not in state_dict:
            raise KeyMismatchError(f"not an UperNet checkpoint: no '{head}.conv_seg.weight' (prefixes found: "
                                   f"{', '.join(sorted({k.split('.')[0] for k in state_dict}))})")
    if post_norm is None:
        post_norm = _cfg_value(backbone_cfg, "backbone.post_norm", None, lambda v: v is None or isinstance(v, bool),
                               "true or false")
    backbone = {k[len(BACKBONE) + 1:]: v for k, v in state_dict.items() if k.startswith(BACKBONE + ".")}
    arch = arch_from_state_dict(backbone, post_norm=post_norm).replace(num_classes=None)
    asked = {name: backbone_cfg[name] for name in ("dims", "img_size") if isinstance(backbone_cfg.get(name), int)}
    if isinstance(backbone_cfg.get("depths"), (list, tuple)):
        asked["depths"] = tuple(backbone_cfg["depths"])
    check_arch(arch, arch.replace(**asked), found_what="checkpoint weights", asked_what="its meta['cfg']")

    num_pools = _count(state_dict, r"decode_head\.psp_modules\.(\d+)\..*")
    pool_scales = tuple(_cfg_value(decode_cfg, "decode_head.pool_scales", (1, 2, 3, 6),
                                   lambda v: isinstance(v, (list, tuple)) and all(_is_count(x) for x in v),
                                   "a list of positive ints"))
    if len(pool_scales) != num_pools:
        raise KeyMismatchError(f"checkpoint has {num_pools} pyramid-pooling branches but the pooling scales are "
                               f"{pool_scales}; pass the scales in the checkpoint's config")
    aux_weight = state_dict.get("auxiliary_head.convs.0.conv.weight")
    if aux_weight is None:
        raise KeyMismatchError("auxiliary FCN head without convolutions (num_convs=0) is not supported")
    widths = [arch.dims * 2**i for i in range(len(arch.depths))]
    aux_in_index = _cfg_value(aux_cfg, "auxiliary_head.in_index", None, lambda v: v is None or v == 0 or _is_count(v),
                              "an int >= 0")
    if aux_in_index is None:
        aux_in_index = widths.index(aux_weight.shape[1]) if aux_weight.shape[1] in widths else 2
    return UperNetConfig(
        backbone=arch,
        num_classes=int(state_dict["decode_head.conv_seg.weight"].shape[0]),
        channels=int(state_dict["decode_head.conv_seg.weight"].shape[1]),
        pool_scales=pool_scales,
        aux_in_index=int(aux_in_index),
        aux_channels=int(aux_weight.shape[0]),
        aux_num_convs=_count(state_dict, r"auxiliary_head\.convs\.(\d+)\..*"),
        aux_kernel_size=int(aux_weight.shape[-1]),
        dropout_ratio=float(_cfg_value(decode_cfg, "decode_head.dropout_ratio", 0.1,
                                       lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)")),
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cfg_value(section: Mapping, name: str, default: Any, valid, expected: str) -> Any:
    """``meta['cfg']``'s ``model.<name>`` (or ``default``), refused with a line naming it when not ``valid``."""
    value = section.get(name.rsplit(".", 1)[1], default) if isinstance(section, Mapping) else default
    if not valid(value):
        raise CheckpointError(f"meta['cfg'] sets model.{name} = {value!r:.60}; expected {expected}")
    return value


# --------------------------------------------------------------------------- files


@dataclasses.dataclass
class MMSegCheckpoint:
    """What an mmseg UperNet-vHeat checkpoint holds, converted."""

    config: UperNetConfig
    variables: dict  # {"params", "batch_stats"}
    num_batches_tracked: dict[str, int]  # per BatchNorm; not used by the model, written back on export
    meta: dict  # the checkpoint's "meta" (mmengine: cfg text, dataset_meta, iter, ...)
    test_cfg: dict  # mmseg's model.test_cfg from meta["cfg"] ({} if absent): mode, crop_size, stride

    @property
    def model(self) -> UperNet:
        return self.config.build()


def read_mmseg_checkpoint(path: str | os.PathLike, *, post_norm: bool | None = None) -> MMSegCheckpoint:
    """Reads an mmseg checkpoint (``{"meta", "state_dict", ...}`` or a bare state dict)."""
    ckpt, state_dict = read_mmengine_checkpoint(path)
    meta = ckpt.get("meta") or {}
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{path}: its 'meta' is a {type(meta).__name__}, expected a dict")
    meta = dict(meta)
    cfg_text = meta.get("cfg")
    try:
        model_cfg = model_cfg_from_text(cfg_text) if cfg_text is not None else {}
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    config = config_from_state_dict(state_dict, model_cfg, post_norm)
    variables, counters = variables_from_state_dict(state_dict, config)
    return MMSegCheckpoint(config, variables, counters, meta, dict(model_cfg.get("test_cfg", {})))


def load_mmseg_checkpoint(path: str | os.PathLike, *, post_norm: bool | None = None) -> tuple[UperNet, dict]:
    """``(model, variables)`` for an mmseg UperNet-vHeat checkpoint, in evaluation mode.

    ``model.apply(variables, images)`` gives ``(decode_logits, aux_logits)``;
    ``model.apply(variables, images, method="decode")`` only the decode logits.
    """
    ckpt = read_mmseg_checkpoint(path, post_norm=post_norm)
    return ckpt.model, ckpt.variables


def export_mmseg(path: str | os.PathLike, config: UperNetConfig, variables: Mapping, *,
                 meta: Mapping | None = None, num_batches_tracked: Mapping[str, int] | None = None,
                 test_cfg: Mapping | None = None) -> None:
    """Writes ``{"meta", "state_dict"}`` as mmseg does (loadable by ``torch.load(weights_only=True)``
    and by mmseg's ``load_checkpoint``). Without ``meta``, a ``meta["cfg"]`` with the model config
    is written, so that :func:`read_mmseg_checkpoint` recovers everything."""
    state_dict = state_dict_from_variables(variables, config, num_batches_tracked)
    if meta is None:
        meta = {"cfg": model_cfg_text(config, test_cfg)}
    save_pth({"meta": dict(meta), "state_dict": state_dict}, path)
