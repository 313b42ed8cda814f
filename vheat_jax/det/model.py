"""Mask R-CNN with FPN on the vHeat backbone (Flax linen, NHWC), as mmdetection 3.x builds it.

Modules and their mmdetection counterparts (parameter names map one to one, see
:mod:`vheat_jax.det.checkpoint`):

* ``backbone``: :class:`vheat_jax.VHeatBackbone` (the official ``MMDET_VHEAT``).
* ``neck``: :class:`FPN` - lateral 1x1 convs, top-down nearest upsampling and sum,
  3x3 output convs, extra levels by ``max_pool2d(kernel 1, stride 2)``.
* ``rpn_head``: :class:`RPNHead` - shared 3x3 conv + ReLU, 1x1 objectness (A) and deltas (4A).
* ``bbox_head``: :class:`Shared2FCBBoxHead` - flatten (C, H, W), 2 x (fc + ReLU),
  ``fc_cls`` (K + 1, background last) and ``fc_reg`` (4K, class-major).
* ``mask_head``: :class:`FCNMaskHead` - 4 x (3x3 conv + ReLU), 2x2 stride-2 transposed
  conv + ReLU, 1x1 conv to K logits.

The detection pipeline around these modules (proposals, RoI extraction, NMS,
post-processing) is in :mod:`vheat_jax.det.detector`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vheat_jax.arch import Arch
from vheat_jax.det.model_config import MaskRCNNConfig


def _conv(features: int, size: int, name: str, dtype) -> nn.Conv:
    pad = size // 2
    return nn.Conv(features, (size, size), padding=((pad, pad), (pad, pad)), dtype=dtype, name=name)


def nearest_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``F.interpolate(x, size, mode='nearest')`` on NHWC: source index ``floor(dst * in / out)``."""
    def indices(out: int, src: int) -> np.ndarray:
        if out == src:
            return np.arange(out)
        if out == 2 * src:
            return np.arange(out) >> 1
        scale = np.float32(src / out)
        return np.minimum(np.floor(np.arange(out, dtype=np.float32) * scale).astype(np.int64), src - 1)
    rows = indices(size[0], x.shape[1])
    cols = indices(size[1], x.shape[2])
    return x[:, rows][:, :, cols]


class FPN(nn.Module):
    channels: int
    num_ins: int = 4
    num_outs: int = 5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs: Sequence[jax.Array]) -> list[jax.Array]:
        laterals = [_conv(self.channels, 1, f"lateral_{i}", self.dtype)(x) for i, x in enumerate(inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + nearest_resize(laterals[i], laterals[i - 1].shape[1:3])
        outs = [_conv(self.channels, 3, f"fpn_{i}", self.dtype)(x) for i, x in enumerate(laterals)]
        while len(outs) < self.num_outs:
            outs.append(outs[-1][:, ::2, ::2])  # max_pool2d(kernel 1, stride 2)
        return outs


class RPNHead(nn.Module):
    feat_channels: int
    num_anchors: int = 3
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.rpn_conv = _conv(self.feat_channels, 3, "rpn_conv", self.dtype)
        self.rpn_cls = _conv(self.num_anchors, 1, "rpn_cls", self.dtype)
        self.rpn_reg = _conv(4 * self.num_anchors, 1, "rpn_reg", self.dtype)

    def __call__(self, features: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        """Per level: objectness logits (B, H, W, A) and deltas (B, H, W, 4A), float32."""
        logits, deltas = [], []
        for x in features:
            x = nn.relu(self.rpn_conv(x))
            logits.append(self.rpn_cls(x).astype(jnp.float32))
            deltas.append(self.rpn_reg(x).astype(jnp.float32))
        return logits, deltas


class Shared2FCBBoxHead(nn.Module):
    num_classes: int
    fc_channels: int = 1024
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, roi_features: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(N, S, S, C) -> class logits (N, K + 1) and deltas (N, 4K), float32."""
        x = jnp.transpose(roi_features, (0, 3, 1, 2)).reshape(roi_features.shape[0], -1)  # torch's C, H, W
        for i in range(2):
            x = nn.relu(nn.Dense(self.fc_channels, dtype=self.dtype, name=f"shared_fc_{i}")(x))
        cls_score = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="fc_cls")(x)
        bbox_pred = nn.Dense(4 * self.num_classes, dtype=self.dtype, name="fc_reg")(x)
        return cls_score.astype(jnp.float32), bbox_pred.astype(jnp.float32)


class Deconv2x2(nn.Module):
    """``ConvTranspose2d(kernel 2, stride 2)``: ``y[2i + a, 2j + b] = sum_c x[i, j, c] K[a, b, c] + bias``."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                            (2, 2, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = jnp.einsum("nijc,abco->niajbo", x.astype(self.dtype), kernel.astype(self.dtype))
        n, h, _, w, _, _ = y.shape
        return y.reshape(n, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)


class FCNMaskHead(nn.Module):
    num_classes: int
    channels: int = 256
    num_convs: int = 4
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, roi_features: jax.Array) -> jax.Array:
        """(N, 14, 14, C) -> mask logits (N, 28, 28, K), float32."""
        x = roi_features
        for i in range(self.num_convs):
            x = nn.relu(_conv(self.channels, 3, f"conv_{i}", self.dtype)(x))
        x = nn.relu(Deconv2x2(self.channels, self.dtype, name="upsample")(x))
        return _conv(self.num_classes, 1, "conv_logits", self.dtype)(x).astype(jnp.float32)


class MaskRCNN(nn.Module):
    """The learned parts; ``__call__`` runs every submodule once (for ``init``)."""

    config: MaskRCNNConfig
    backbone_arch: Arch
    dtype: jnp.dtype = jnp.float32
    drop_path_rate: float = 0.0
    remat: bool = False
    scan_blocks: bool = False  # the backbone's; outputs do not depend on it
    hco_form: str = "auto"  # the backbone's (vheat_jax.heat.HCO_FORMS); outputs do not depend on it

    def setup(self):
        cfg = self.config
        self.backbone = self.backbone_arch.build(dtype=self.dtype, drop_path_rate=self.drop_path_rate,
                                                 remat=self.remat, scan_blocks=self.scan_blocks,
                                                 hco_form=self.hco_form)
        self.neck = FPN(cfg.fpn_channels, len(self.backbone_arch.depths), cfg.num_outs, self.dtype)
        self.rpn_head = RPNHead(cfg.rpn_feat_channels, cfg.num_anchors, self.dtype)
        self.bbox_head = Shared2FCBBoxHead(cfg.num_classes, cfg.fc_channels, self.dtype)
        self.mask_head = FCNMaskHead(cfg.num_classes, cfg.mask_channels, cfg.num_mask_convs, self.dtype)

    def features(self, images: jax.Array, train: bool = False) -> tuple[list[jax.Array], list[jax.Array]]:
        """NHWC images -> (backbone features, FPN features)."""
        backbone = self.backbone(images, train=train)
        return backbone, self.neck(backbone)

    def rpn(self, features: Sequence[jax.Array]):
        return self.rpn_head(features)

    def box(self, roi_features: jax.Array):
        return self.bbox_head(roi_features)

    def mask(self, roi_features: jax.Array):
        return self.mask_head(roi_features)

    def __call__(self, images: jax.Array, train: bool = False):
        cfg = self.config
        _, feats = self.features(images, train)
        logits, deltas = self.rpn(feats)
        c = cfg.fpn_channels
        cls_score, bbox_pred = self.box(jnp.zeros((1, cfg.roi_size, cfg.roi_size, c), self.dtype))
        masks = self.mask(jnp.zeros((1, cfg.mask_roi_size, cfg.mask_roi_size, c), self.dtype))
        return logits, deltas, cls_score, bbox_pred, masks
