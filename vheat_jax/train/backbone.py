"""One door from ``config.model`` to the vHeat backbone, and one ``init_from`` policy, for every task.

``config.model.name`` picks an official variant; ``dims``, ``depths``, ``post_norm`` and
``layer_scale`` (declared once in :func:`vheat_jax.train.config.base_config`, None: the
variant's) override its architecture; ``drop_path_rate``, ``hco_form``, ``scan_blocks``,
``config.compute_dtype`` and ``config.remat`` are how it runs. Classification, UperNet and
Mask R-CNN all build their backbone from these two functions, so ``--config.model.<field>=``
means the same in each.

:func:`pretrained_backbone` is how every task takes ImageNet (or dense) vHeat weights from
``config.init_from``: the architecture must match (one line naming the difference, exit 2),
except what fine-tuning changes on purpose: the input size (frequency embeddings adapted by
``config.init_adapt_method``) and the parameters a task initialises itself (the classifier
for other classes, a dense backbone's out-norms).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from absl import logging
from flax import traverse_util

from vheat_jax.arch import Arch, ArchitectureMismatchError, check_arch
from vheat_jax.convert import load_any
from vheat_jax.forms import adapt_img_size
from vheat_jax.train.config import check_model_name
from vheat_jax.train.loop import compute_dtype
from vheat_jax.variants import VARIANTS

ARCH_FIELDS = ("dims", "depths", "post_norm", "layer_scale")
OUT_NORM_PREFIX = "outnorm_"  # a dense backbone's per-stage norms: fresh where a classification checkpoint has none


def backbone_arch(config, *, img_size: int, num_classes: int | None) -> Arch:
    """The architecture ``config.model`` asks for: its variant's, with the fields it sets."""
    model = config.model
    check_model_name(model)
    fields = {name: VARIANTS[model.name][name] for name in ARCH_FIELDS}
    fields.update({name: model.get(name) for name in ARCH_FIELDS if model.get(name) is not None})
    return Arch(**{**fields, "depths": tuple(fields["depths"])}, img_size=int(img_size), num_classes=num_classes)


def runtime_fields(config) -> dict[str, Any]:
    """How the backbone runs (module fields that change no parameter): drop path, HCO form, dtype, remat,
    scanned blocks."""
    return dict(drop_path_rate=config.model.drop_path_rate, hco_form=config.model.hco_form,
                dtype=compute_dtype(config.compute_dtype), remat=config.remat, scan_blocks=config.model.scan_blocks)


def pretrained_backbone(path: str, asked: Arch, fresh: dict, *, ema: bool = False, post_norm: bool | None = None,
                        method: str = "bicubic", may_stay_fresh: tuple[str, ...] = ()) -> dict:
    """``fresh`` (host arrays, the tree of a module of architecture ``asked``) with ``path``'s weights.

    ``method``: how frequency embeddings move to ``asked.img_size`` (``"zero_pad"`` grows only; a
    smaller size is resized bicubically). Parameters whose top-level name starts with one of
    ``may_stay_fresh`` keep their fresh values where the checkpoint has none, or another shape.
    """
    found, params = load_any(path, ema=ema, post_norm=post_norm)
    check_arch(found.replace(img_size=asked.img_size, num_classes=asked.num_classes), asked,
               found_what=f"init_from checkpoint {path}", asked_what="config.model")
    if found.img_size != asked.img_size:
        if method == "zero_pad" and found.img_size > asked.img_size:
            method = "bicubic"  # zero-padding only grows
        logging.info("init_from: frequency embeddings %dpx -> %dpx (%s)", found.img_size, asked.img_size, method)
        found, params = adapt_img_size(params, found, asked.img_size, method=method)
    loaded, wanted = traverse_util.flatten_dict(params), traverse_util.flatten_dict(fresh)
    merged, kept_fresh = {}, []
    for key, value in wanted.items():
        other = loaded.get(key)
        if other is not None and tuple(other.shape) == tuple(value.shape):
            merged[key] = np.asarray(other, np.float32)
        elif key[0].startswith(may_stay_fresh):
            merged[key] = np.asarray(value)
            kept_fresh.append("/".join(key))
        else:
            have = "missing" if other is None else f"{tuple(other.shape)}"
            raise ArchitectureMismatchError(f"init_from checkpoint {path}: {'/'.join(key)} is {have}, config.model "
                                            f"needs {tuple(value.shape)}")
    if kept_fresh:
        logging.info("init_from: kept their fresh initialisation: %s", ", ".join(sorted(kept_fresh)))
    unused = sorted({key[0] for key in loaded} - {key[0] for key in wanted})
    if unused:
        logging.info("init_from: not used: %s", ", ".join(unused))
    return traverse_util.unflatten_dict(merged)
