"""``config.init_from``: start training from a converted official checkpoint, a .pth or a .msgpack."""

from __future__ import annotations

import numpy as np
from absl import logging
from flax import traverse_util

from vheat_jax.arch import Arch, check_arch
from vheat_jax.convert import load_any
from vheat_jax.forms import adapt_img_size
from vheat_jax.model import VHeat

# What may be missing from (or shaped differently in) a checkpoint: the classifier,
# absent from dense-prediction backbones and sized by the pre-training label set.
CLASSIFIER_PREFIXES = ("head", "classifier_norm")


def arch_of(model: VHeat) -> Arch:
    """The :class:`Arch` a checkpoint must match to be loaded into ``model``."""
    return Arch(
        dims=model.dims,
        depths=tuple(model.depths),
        post_norm=model.post_norm,
        layer_scale=model.layer_scale,
        img_size=model.img_size,
        num_classes=model.num_classes,
        infer_mode=model.infer_mode,
        patch_size=model.patch_size,
        mlp_ratio=model.mlp_ratio,
    )


def load_pretrained(path: str, model: VHeat, fresh_params: dict, *, ema: bool = False) -> dict:
    """Checkpoint weights arranged as ``fresh_params`` (host numpy arrays).

    The architecture must match the config's model (``ArchitectureMismatchError``
    otherwise), except for two things that fine-tuning changes on purpose: the
    input size (frequency embeddings are resized bicubically) and the number of
    classes (the classifier keeps its fresh initialization).
    """
    found, params = load_any(path, ema=ema)
    asked = arch_of(model)
    check_arch(
        found.replace(img_size=asked.img_size, num_classes=asked.num_classes),
        asked,
        found_what=f"init_from checkpoint {path}",
        asked_what="config.model",
    )
    if found.img_size != asked.img_size:
        logging.info(
            "init_from: resizing frequency embeddings from %dpx to %dpx (bicubic)", found.img_size, asked.img_size
        )
        found, params = adapt_img_size(params, found, asked.img_size, method="bicubic")

    loaded = traverse_util.flatten_dict(params)
    fresh = traverse_util.flatten_dict(fresh_params)
    merged, reinitialized = {}, []
    for path_key, fresh_value in fresh.items():
        value = loaded.get(path_key)
        if value is not None and tuple(value.shape) == tuple(fresh_value.shape):
            merged[path_key] = np.asarray(value, np.float32)
        elif path_key[0] in CLASSIFIER_PREFIXES:
            merged[path_key] = np.asarray(fresh_value)
            reinitialized.append("/".join(path_key))
        else:  # check_arch passed, so this is a converter bug, not a user error
            raise ValueError(f"init_from: {'/'.join(path_key)} missing or misshapen in {path}")
    if reinitialized:
        logging.warning(
            "init_from: checkpoint has %s, config asks %d classes: re-initialized %s",
            "no classifier" if found.num_classes is None else f"{found.num_classes} classes",
            asked.num_classes,
            ", ".join(sorted(reinitialized)),
        )
    unused = sorted("/".join(k) for k in set(loaded) - set(fresh))
    if unused:
        logging.info("init_from: not used by the classifier: %s", ", ".join(unused))
    return traverse_util.unflatten_dict(merged)
