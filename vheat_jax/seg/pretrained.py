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

from vheat_jax.arch import ArchitectureMismatchError
from vheat_jax.convert import checkpoint_kind
from vheat_jax.seg.convert import read_mmseg_checkpoint
from vheat_jax.seg.model import UperNetConfig
from vheat_jax.train.backbone import OUT_NORM_PREFIX, pretrained_backbone

log = logging.getLogger(__name__)


def backbone_from_imagenet(path: str, config: UperNetConfig, fresh_backbone: dict, *, ema: bool = False,
                           method: str = "zero_pad", post_norm: bool | None = None) -> dict:
    """``fresh_backbone`` with every parameter the ImageNet checkpoint has, adapted to ``config``'s size
    (the policy every task shares: :func:`vheat_jax.train.backbone.pretrained_backbone`)."""
    return pretrained_backbone(path, config.backbone, fresh_backbone, ema=ema, post_norm=post_norm, method=method,
                               may_stay_fresh=(OUT_NORM_PREFIX,))


def initial_variables(path: str, config: UperNetConfig, fresh: dict, *, ema: bool = False, method: str = "zero_pad",
                      post_norm: bool | None = None) -> dict:
    """``fresh`` variables with ``path``'s weights: the whole model from an mmseg UperNet checkpoint,
    else the backbone from an ImageNet checkpoint."""
    if checkpoint_kind(path) == "segmentation":
        ckpt = read_mmseg_checkpoint(path, post_norm=post_norm)
        if ckpt.config.replace(dropout_ratio=config.dropout_ratio) != config:
            raise ArchitectureMismatchError(
                f"init_from {path}: checkpoint is {ckpt.config}, config.model asks {config}")
        log.info("init_from %s: whole UperNet (backbone, heads, BN statistics)", path)
        return ckpt.variables
    backbone = backbone_from_imagenet(path, config, fresh["params"]["backbone"], ema=ema, method=method,
                                      post_norm=post_norm)
    return {**fresh, "params": {**fresh["params"], "backbone": backbone}}
