"""mmdetection Mask R-CNN checkpoints <-> Flax parameters, torch-free, with strict checks.

Reads mmengine checkpoints (``{"meta", "state_dict", "message_hub", ...}``) through
:func:`vheat_jax.torch_io.load_pth` (no code execution; mmengine objects stay inert)
and maps every key of ``state_dict``:

=========================================  =====================================  ======
mmdetection key                            Flax path                              layout
=========================================  =====================================  ======
``backbone.*``                             ``backbone/...`` (vheat_jax.keymap)    as there
``neck.lateral_convs.{i}.conv.*``          ``neck/lateral_{i}/*``                 conv
``neck.fpn_convs.{i}.conv.*``              ``neck/fpn_{i}/*``                     conv
``rpn_head.{rpn_conv,rpn_cls,rpn_reg}.*``  ``rpn_head/{...}/*``                   conv
``roi_head.bbox_head.shared_fcs.{i}.*``    ``bbox_head/shared_fc_{i}/*``          linear
``roi_head.bbox_head.{fc_cls,fc_reg}.*``   ``bbox_head/{...}/*``                  linear
``roi_head.mask_head.convs.{i}.conv.*``    ``mask_head/conv_{i}/*``               conv
``roi_head.mask_head.upsample.*``          ``mask_head/upsample/*``               deconv
``roi_head.mask_head.conv_logits.*``       ``mask_head/conv_logits/*``            conv
=========================================  =====================================  ======

(conv: torch (out, in, kh, kw) <-> (kh, kw, in, out); linear: (out, in) <-> (in, out);
deconv: ConvTranspose2d (in, out, kh, kw) <-> (kh, kw, in, out).) Every source key
must be used and every shape must match, else one :class:`KeyMismatchError` lists
what is missing, unexpected and mis-shaped.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vheat_jax.arch import Arch, arch_from_state_dict
from vheat_jax.convert import ARCH_META_KEY, post_norm_from_meta, read_mmengine_checkpoint
from vheat_jax.det.model import MaskRCNN
from vheat_jax.det.model_config import MaskRCNNConfig
from vheat_jax.keymap import (
    CONV,
    LINEAR,
    SAME,
    KeyMismatchError,
    Layout,
    layout_of,
    mismatch_report,
    table_mismatches,
    torch_key,
)
from vheat_jax.torch_io import CheckpointError, save_pth

DECONV = Layout("deconv", lambda a: a.transpose(2, 3, 0, 1), lambda a: a.transpose(2, 3, 0, 1))
_LEAF = {"kernel": "weight", "bias": "bias"}
_PREFIX = {"neck": "neck", "rpn_head": "rpn_head", "bbox_head": "roi_head.bbox_head",
           "mask_head": "roi_head.mask_head"}


def mmdet_key(path: tuple[str, ...], arch: Arch) -> tuple[str, Layout]:
    """The mmdetection key and layout of one Flax parameter path."""
    head, *rest = path
    if head == "backbone":
        return "backbone." + torch_key(tuple(rest), arch.depths), None  # layout decided by shape
    module, leaf = rest[0], rest[-1]
    name = _LEAF[leaf]
    layout = CONV
    if match := re.fullmatch(r"lateral_(\d+)", module):
        module = f"lateral_convs.{match[1]}.conv"
    elif match := re.fullmatch(r"fpn_(\d+)", module):
        module = f"fpn_convs.{match[1]}.conv"
    elif match := re.fullmatch(r"shared_fc_(\d+)", module):
        module, layout = f"shared_fcs.{match[1]}", LINEAR
    elif module in ("fc_cls", "fc_reg"):
        layout = LINEAR
    elif match := re.fullmatch(r"conv_(\d+)", module):
        module = f"convs.{match[1]}.conv"
    elif module == "upsample":
        layout = DECONV
    return f"{_PREFIX[head]}.{module}.{name}", layout


def flax_param_shapes(config: MaskRCNNConfig, arch: Arch) -> dict[tuple[str, ...], tuple[int, ...]]:
    model = MaskRCNN(config, arch)
    size = max(64, arch.img_size)
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(shapes).items()}


def key_table(config: MaskRCNNConfig, arch: Arch) -> dict[str, tuple[tuple[str, ...], Layout, tuple[int, ...]]]:
    """mmdet key -> (Flax path, layout, torch shape) for every parameter."""
    table = {}
    for path, shape in flax_param_shapes(config, arch).items():
        key, layout = mmdet_key(path, arch)
        if layout is None:
            layout = layout_of(path[1:], len(shape))
        elif path[-1] != "kernel":
            layout = SAME
        torch_shape = tuple(layout.to_torch(np.empty(shape, np.int8)).shape)
        table[key] = (path, layout, torch_shape)
    return table


def mmdet_to_flax(state_dict: Mapping[str, Any], config: MaskRCNNConfig, arch: Arch) -> dict:
    """mmdetection ``state_dict`` (numpy) -> Flax ``params``; strict keys and shapes."""
    table = key_table(config, arch)
    missing, unexpected, misshaped = table_mismatches(state_dict, table)
    if missing or unexpected or misshaped:
        raise KeyMismatchError(mismatch_report(missing, unexpected, misshaped,
                                               subject="mmdetection state dict does not fit the Mask R-CNN"))
    flat = {path: jnp.asarray(layout.to_flax(np.asarray(state_dict[key]))) for key, (path, layout, _) in table.items()}
    return traverse_util.unflatten_dict(flat)


def flax_to_mmdet(params: Mapping, config: MaskRCNNConfig, arch: Arch) -> OrderedDict[str, np.ndarray]:
    """Flax ``params`` -> mmdetection ``state_dict`` (numpy, torch layouts)."""
    flat = traverse_util.flatten_dict(params)
    table = key_table(config, arch)
    by_path = {path: (key, layout) for key, (path, layout, _) in table.items()}
    if set(flat) != set(by_path):
        missing = ["/".join(p) for p in by_path if p not in flat]
        unexpected = ["/".join(p) for p in flat if p not in by_path]
        raise KeyMismatchError(mismatch_report(missing, unexpected, [],
                                               subject="Flax parameters do not fit the Mask R-CNN"))
    out = OrderedDict()
    for key, (path, layout, _) in table.items():
        out[key] = np.ascontiguousarray(layout.to_torch(np.asarray(flat[path])))
    return out


def config_from_state_dict(state_dict: Mapping[str, Any], base: MaskRCNNConfig | None = None) -> MaskRCNNConfig:
    """Widths and class count read off the weights; everything else from ``base`` (mmdet defaults)."""
    base = base or MaskRCNNConfig()

    def shape(key):
        if key not in state_dict:
            raise CheckpointError(f"not an mmdetection Mask R-CNN state dict: no {key!r}")
        return np.shape(state_dict[key])

    fpn = shape("neck.lateral_convs.0.conv.weight")[0]
    fc_in = shape("roi_head.bbox_head.shared_fcs.0.weight")[1]
    roi_size = int(round(math.sqrt(fc_in / fpn)))
    num_convs = len({m[1] for k in state_dict if (m := re.match(r"roi_head\.mask_head\.convs\.(\d+)\.", k))})
    return base.replace(
        num_classes=int(shape("roi_head.bbox_head.fc_cls.weight")[0]) - 1,
        fpn_channels=int(fpn),
        rpn_feat_channels=int(shape("rpn_head.rpn_conv.weight")[0]),
        fc_channels=int(shape("roi_head.bbox_head.shared_fcs.0.weight")[0]),
        roi_size=roi_size,
        mask_channels=int(shape("roi_head.mask_head.convs.0.conv.weight")[0]),
        num_mask_convs=num_convs,
    )


CONFIG_META_KEY = "vheat_jax_config"


def read_mmdet_checkpoint(path: str | os.PathLike, *, post_norm: bool | None = None,
                          config: MaskRCNNConfig | None = None) -> tuple[MaskRCNNConfig, Arch, dict, dict]:
    """``(config, backbone_arch, params, meta)`` from an mmdetection ``.pth`` (strict)."""
    ckpt, state_dict = read_mmengine_checkpoint(path)
    backbone = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    if not backbone:
        raise CheckpointError(f"{path}: no 'backbone.*' keys")
    arch = arch_from_state_dict(backbone, post_norm=post_norm_from_meta(ckpt) if post_norm is None else post_norm)
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), Mapping) else {}
    config = config_from_state_dict(state_dict, config or _exported_config(meta, path))
    params = mmdet_to_flax(state_dict, config, arch)
    return config, arch, params, dict(meta)


def _exported_config(meta: Mapping, path) -> MaskRCNNConfig | None:
    """The full :class:`MaskRCNNConfig` our export keeps in ``meta`` (test-time settings such as the RPN's
    proposal counts are not in the weights, and mmdet's defaults differ from a run's); None for others."""
    text = meta.get(CONFIG_META_KEY)
    if text is None:
        return None
    try:
        return MaskRCNNConfig.from_json(text)
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise CheckpointError(f"{path}: meta[{CONFIG_META_KEY!r}] is not a Mask R-CNN config "
                              f"({type(err).__name__}: {err})") from None


def class_names(meta: Mapping) -> tuple[str, ...] | None:
    dataset_meta = meta.get("dataset_meta") if isinstance(meta, Mapping) else None
    if isinstance(dataset_meta, Mapping) and "classes" in dataset_meta:
        return tuple(str(c) for c in dataset_meta["classes"])
    return None


def export_mmdet(params: Mapping, config: MaskRCNNConfig, arch: Arch, path: str | os.PathLike, *,
                 classes: tuple[str, ...] | None = None) -> None:
    """Writes an mmengine-style checkpoint ``{"meta": {...}, "state_dict": ...}``.

    mmdetection loads its ``state_dict`` with ``load_state_dict(strict=True)``
    (``torch.load(weights_only=True)`` accepts the file: it holds only tensors and plain data).
    """
    meta: dict[str, Any] = {CONFIG_META_KEY: config.to_json(), ARCH_META_KEY: arch.to_json()}
    if classes is not None:
        meta["dataset_meta"] = {"classes": list(classes)}
    save_pth({"meta": meta, "state_dict": flax_to_mmdet(params, config, arch)}, path)
