"""``config.init_from`` for detection: a whole mmdetection Mask R-CNN, or an ImageNet backbone.

An mmdetection Mask R-CNN ``.pth`` (ours or official) replaces every parameter, after its
backbone is checked against ``config.model`` (:func:`~vheat_jax.arch.check_arch`: one line
naming the mismatch). Anything else is an ImageNet vHeat checkpoint (``.pth``,
``.safetensors``, or converted), loaded into the backbone by the policy every task shares
(:func:`vheat_jax.train.backbone.pretrained_backbone`): adapted to the run's image size by
``config.init_adapt_method``, the out-norms keeping their fresh initialisation.
"""

from __future__ import annotations

from vheat_jax.arch import Arch, check_arch
from vheat_jax.convert import checkpoint_kind
from vheat_jax.det.checkpoint import read_mmdet_checkpoint
from vheat_jax.det.model_config import MaskRCNNConfig
from vheat_jax.train.backbone import OUT_NORM_PREFIX, pretrained_backbone


def initial_params(config, det_config: MaskRCNNConfig, arch: Arch, fresh: dict) -> dict:
    """``fresh`` (host) parameters with ``config.init_from``'s weights."""
    if checkpoint_kind(config.init_from) == "detection":
        _, found, params, _ = read_mmdet_checkpoint(config.init_from, config=det_config,
                                                    post_norm=config.init_post_norm)
        check_arch(found, arch, found_what=f"init_from checkpoint {config.init_from}", asked_what="config.model")
        return params
    backbone = pretrained_backbone(config.init_from, arch, fresh["backbone"], ema=config.init_from_ema,
                                   post_norm=config.init_post_norm, method=config.init_adapt_method,
                                   may_stay_fresh=(OUT_NORM_PREFIX,))
    return {**fresh, "backbone": backbone}
