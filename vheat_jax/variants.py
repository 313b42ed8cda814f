"""The official vHeat variants and ``create_model``."""

from __future__ import annotations

from typing import Any

from vheat_jax.model import VHeat

# Official hyper-parameters (paper and classification/configs of the official repo).
VARIANTS: dict[str, dict[str, Any]] = {
    "vheat_tiny": dict(dims=96, depths=(2, 2, 6, 2), post_norm=False, layer_scale=None, drop_path_rate=0.1),
    "vheat_small": dict(dims=96, depths=(2, 2, 18, 2), post_norm=True, layer_scale=1e-5, drop_path_rate=0.3),
    "vheat_base": dict(dims=128, depths=(2, 2, 18, 2), post_norm=True, layer_scale=1e-5, drop_path_rate=0.5),
}


def create_model(name: str, **overrides: Any) -> VHeat:
    """Builds a classification vHeat by variant name, e.g. ``create_model("vheat_tiny", num_classes=10)``.

    ``overrides`` replace any field of :class:`vheat_jax.model.VHeat` (``img_size``,
    ``num_classes``, ``drop_path_rate``, ``infer_mode``, ``dtype``, ``remat``, ...).
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown vHeat variant {name!r}; choose one of {sorted(VARIANTS)}")
    return VHeat(**{**VARIANTS[name], **overrides})
