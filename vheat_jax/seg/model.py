"""UperNet on the vHeat backbone (mmseg's ``EncoderDecoder`` with ``UPerHead`` + ``FCNHead``).

:class:`UperNetConfig` records what the weights need (the backbone's :class:`~vheat_jax.arch.Arch`
and the heads' sizes); :class:`UperNet` is the Flax module. Variables:
``{"params": {"backbone", "decode_head", "auxiliary_head"}, "batch_stats": {"decode_head",
"auxiliary_head"}}``.

    model = config.build(drop_path_rate=0.3)                    # run-time fields: drop path, dtype, remat
    decode, aux = model.apply(variables, images, train=True, rngs={"dropout": key},
                              mutable=["batch_stats"])[0]        # logits at 1/4 and 1/16 resolution
    logits = model.apply(variables, images, method="decode")     # inference: decode head only
    features = model.apply(variables, images, method="features") # the four backbone maps
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from vheat_jax.arch import Arch
from vheat_jax.model import stage_widths
from vheat_jax.seg.heads import FCNHead, UPerHead
from vheat_jax.variants import VARIANTS


@dataclasses.dataclass(frozen=True)
class UperNetConfig:
    """Everything that fixes the weights' shapes and meaning (mmseg config names in comments)."""

    backbone: Arch  # a dense vHeat (num_classes None); img_size = trained frequency-embedding size
    num_classes: int
    channels: int = 512  # decode_head.channels
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    aux_in_index: int = 2  # auxiliary_head.in_index
    aux_channels: int = 256  # auxiliary_head.channels
    aux_num_convs: int = 1
    aux_kernel_size: int = 3
    dropout_ratio: float = 0.1

    def __post_init__(self):
        if not self.backbone.dense:
            raise ValueError("UperNetConfig.backbone must be a dense backbone Arch (num_classes=None)")

    @property
    def in_channels(self) -> list[int]:
        return stage_widths(self.backbone.dims, len(self.backbone.depths))

    def build(self, **fields: Any) -> UperNet:
        """The Flax module; ``fields``: ``drop_path_rate``, ``dtype``, ``remat``, ``scan_blocks``, ``hco_form``."""
        return UperNet(self, **fields)

    def replace(self, **changes: Any) -> UperNetConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> UperNetConfig:
        fields = json.loads(text)
        backbone = fields.pop("backbone")
        backbone["depths"] = tuple(backbone["depths"])
        fields["pool_scales"] = tuple(fields["pool_scales"])
        return cls(backbone=Arch(**backbone), **fields)


def upernet_config(variant: str, num_classes: int = 150, img_size: int = 512, **changes: Any) -> UperNetConfig:
    """The official UperNet-vHeat configuration for ``vheat_tiny`` / ``vheat_small`` / ``vheat_base``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown vHeat variant {variant!r}; choose one of {sorted(VARIANTS)}")
    spec = VARIANTS[variant]
    backbone = Arch(dims=spec["dims"], depths=tuple(spec["depths"]), post_norm=spec["post_norm"],
                    layer_scale=spec["layer_scale"], img_size=img_size, num_classes=None)
    return UperNetConfig(backbone=backbone, num_classes=num_classes, **changes)


class UperNet(nn.Module):
    """NHWC images (normalised, RGB) -> ``(decode_logits, aux_logits)`` at strides 4 and 16, float32."""

    config: UperNetConfig
    drop_path_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    scan_blocks: bool = False  # the backbone's; outputs do not depend on it
    hco_form: str = "auto"  # the backbone's (vheat_jax.heat.HCO_FORMS); outputs do not depend on it

    def setup(self):
        cfg = self.config
        self.backbone = cfg.backbone.build(drop_path_rate=self.drop_path_rate, dtype=self.dtype, remat=self.remat,
                                           scan_blocks=self.scan_blocks, hco_form=self.hco_form)
        self.decode_head = UPerHead(cfg.num_classes, cfg.channels, tuple(cfg.pool_scales), cfg.dropout_ratio,
                                    self.dtype)
        self.auxiliary_head = FCNHead(cfg.num_classes, cfg.aux_channels, cfg.aux_num_convs, cfg.aux_kernel_size,
                                      cfg.dropout_ratio, self.dtype)

    def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        features = self.backbone(images, train)
        decode = self.decode_head(features, train)
        aux = self.auxiliary_head(features[self.config.aux_in_index], train)
        return decode, aux

    def features(self, images: jax.Array) -> list[jax.Array]:
        return self.backbone(images, False)

    def decode(self, images: jax.Array) -> jax.Array:
        """Inference (evaluation mode): decode-head logits at stride 4; the auxiliary head does not run."""
        return self.decode_head(self.backbone(images, False), False)
