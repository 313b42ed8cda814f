"""``config.init_from``: start training from a converted official checkpoint, a .pth or a .msgpack."""

from __future__ import annotations

from vheat_jax.arch import Arch
from vheat_jax.model import VHeat
from vheat_jax.train.backbone import pretrained_backbone

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


def load_pretrained(path: str, model: VHeat, fresh_params: dict, *, ema: bool = False,
                    post_norm: bool | None = None, method: str = "bicubic") -> dict:
    """Checkpoint weights arranged as ``fresh_params`` (host numpy arrays), by the policy every task shares
    (:func:`vheat_jax.train.backbone.pretrained_backbone`): the classifier keeps its fresh initialisation
    where the checkpoint has another number of classes, or none."""
    return pretrained_backbone(path, arch_of(model), fresh_params, ema=ema, post_norm=post_norm, method=method,
                               may_stay_fresh=CLASSIFIER_PREFIXES)
