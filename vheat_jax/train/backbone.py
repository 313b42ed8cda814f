"""One door from ``config.model`` to the vHeat backbone, for every task.

``config.model.name`` picks an official variant; ``dims``, ``depths``, ``post_norm`` and
``layer_scale`` (declared once in :func:`vheat_jax.train.config.base_config`, None: the
variant's) override its architecture; ``drop_path_rate``, ``hco_form``, ``config.compute_dtype``
and ``config.remat`` are how it runs. Classification, UperNet and Mask R-CNN all build their
backbone from these two functions, so ``--config.model.<field>=`` means the same in each.
"""

from __future__ import annotations

from typing import Any

from vheat_jax.arch import Arch
from vheat_jax.train.config import ConfigError
from vheat_jax.train.loop import compute_dtype
from vheat_jax.variants import VARIANTS

ARCH_FIELDS = ("dims", "depths", "post_norm", "layer_scale")


def backbone_arch(config, *, img_size: int, num_classes: int | None) -> Arch:
    """The architecture ``config.model`` asks for: its variant's, with the fields it sets."""
    model = config.model
    if model.name not in VARIANTS:
        raise ConfigError(f"config.model.name = {model.name!r}: choose one of {', '.join(sorted(VARIANTS))}")
    fields = {name: VARIANTS[model.name][name] for name in ARCH_FIELDS}
    fields.update({name: model.get(name) for name in ARCH_FIELDS if model.get(name) is not None})
    return Arch(**{**fields, "depths": tuple(fields["depths"])}, img_size=int(img_size), num_classes=num_classes)


def runtime_fields(config) -> dict[str, Any]:
    """How the backbone runs (module fields that change no parameter): drop path, HCO form, dtype, remat."""
    return dict(drop_path_rate=config.model.drop_path_rate, hco_form=config.model.hco_form,
                dtype=compute_dtype(config.compute_dtype), remat=config.remat)
