"""``config.init_from``: an ImageNet backbone (ours or official) or a whole mmseg UperNet checkpoint.

ImageNet weights are moved to the segmentation input size as the official recipe does
(``interpolate4downstream.py``: frequency embeddings zero-padded at the high-frequency
end; ``init_adapt_method="bicubic"`` resizes instead) and loaded into the backbone the
way the official ``MMSEG_VHEAT.load_pretrained`` does (``load_state_dict(strict=False)``):
the classifier is dropped and the out-norms ``outnorm_{i}`` and both heads keep their
fresh initialisation.
"""

from __future__ import annotations

import logging

import numpy as np
from flax import traverse_util

from vheat_jax.arch import ArchitectureMismatchError, check_arch
from vheat_jax.convert import load_any
from vheat_jax.forms import adapt_img_size
from vheat_jax.seg.convert import read_mmseg_checkpoint
from vheat_jax.seg.model import UperNetConfig
from vheat_jax.torch_io import load_pth

log = logging.getLogger(__name__)


def _is_mmseg_checkpoint(path: str) -> bool:
    if not str(path).endswith(".pth"):
        return False
    ckpt = load_pth(path)
    state = ckpt.get("state_dict", {}) if isinstance(ckpt, dict) else {}
    return any(key.startswith("decode_head.") for key in state)


def backbone_from_imagenet(path: str, config: UperNetConfig, fresh_backbone: dict, *, ema: bool = False,
                           method: str = "zero_pad", post_norm: bool | None = None) -> dict:
    """``fresh_backbone`` with every parameter the ImageNet checkpoint has, adapted to ``config``'s size."""
    found, params = load_any(path, ema=ema, post_norm=post_norm)
    asked = config.backbone
    check_arch(found.replace(img_size=asked.img_size, num_classes=None), asked,
               found_what=f"init_from checkpoint {path}", asked_what="config.model")
    if found.img_size != asked.img_size:
        if method == "zero_pad" and found.img_size > asked.img_size:
            method = "bicubic"  # zero-padding only grows
        log.info("init_from: frequency embeddings %dpx -> %dpx (%s)", found.img_size, asked.img_size, method)
        found, params = adapt_img_size(params, found, asked.img_size, method=method)
    loaded, fresh = traverse_util.flatten_dict(params), traverse_util.flatten_dict(fresh_backbone)
    merged = {}
    for key, value in fresh.items():
        if key in loaded:
            if tuple(loaded[key].shape) != tuple(value.shape):
                raise ArchitectureMismatchError(f"init_from: {'/'.join(key)} is {tuple(loaded[key].shape)} in "
                                                f"{path}, the model needs {tuple(value.shape)}")
            merged[key] = np.asarray(loaded[key], np.float32)
        else:
            merged[key] = np.asarray(value)
    kept_fresh = sorted({key[0] for key in fresh if key not in loaded})
    unused = sorted({key[0] for key in loaded if key not in fresh})
    log.info("init_from %s: backbone loaded; freshly initialised: %s; unused: %s", path,
             ", ".join(kept_fresh) or "-", ", ".join(unused) or "-")
    return traverse_util.unflatten_dict(merged)


def initial_variables(path: str, config: UperNetConfig, fresh: dict, *, ema: bool = False, method: str = "zero_pad",
                      post_norm: bool | None = None) -> dict:
    """``fresh`` variables with ``path``'s weights: the whole model from an mmseg UperNet checkpoint,
    else the backbone from an ImageNet checkpoint."""
    if _is_mmseg_checkpoint(path):
        ckpt = read_mmseg_checkpoint(path, post_norm=post_norm)
        if ckpt.config.replace(dropout_ratio=config.dropout_ratio) != config:
            raise ArchitectureMismatchError(f"init_from {path}: checkpoint is {ckpt.config}, config.model asks {config}")
        log.info("init_from %s: whole UperNet (backbone, heads, BN statistics)", path)
        return ckpt.variables
    backbone = backbone_from_imagenet(path, config, fresh["params"]["backbone"], ema=ema, method=method,
                                      post_norm=post_norm)
    return {**fresh, "params": {**fresh["params"], "backbone": backbone}}
