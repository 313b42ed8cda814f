"""Settings of Mask R-CNN, with mmdetection's ``mask-rcnn_r50_fpn.py`` values as defaults.

Widths (``fpn_channels`` ...) and ``num_classes`` change with the model; everything
else is mmdetection's: the fixtures in ``tests/fixtures/maskrcnn_mmdet`` use the
defaults with smaller widths. Static capacities (``*_capacity``) are ours: they size
the padded arrays that keep shapes static under ``jit`` (see docs/detection.md).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class RPNTestConfig:
    nms_pre: int = 1000  # per level, before NMS
    max_per_img: int = 1000
    iou_threshold: float = 0.7
    min_bbox_size: float = 0.0


@dataclasses.dataclass(frozen=True)
class RCNNTestConfig:
    score_thr: float = 0.05
    iou_threshold: float = 0.5
    max_per_img: int = 100
    mask_thr_binary: float = 0.5
    # Static cap on (proposal, class) candidates above score_thr that enter NMS: the
    # highest-scoring ones are kept. Exact whenever fewer pass score_thr, or when
    # max_per_img detections survive among those kept (greedy NMS only looks up).
    candidate_capacity: int = 4000


@dataclasses.dataclass(frozen=True)
class AssignerConfig:
    pos_iou_thr: float
    neg_iou_thr: float
    min_pos_iou: float
    match_low_quality: bool = True


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    num: int
    pos_fraction: float
    add_gt_as_proposals: bool


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    rpn_assigner: AssignerConfig = AssignerConfig(0.7, 0.3, 0.3)
    rpn_sampler: SamplerConfig = SamplerConfig(256, 0.5, False)
    rpn_proposal: RPNTestConfig = RPNTestConfig(nms_pre=2000, max_per_img=1000, iou_threshold=0.7)
    rcnn_assigner: AssignerConfig = AssignerConfig(0.5, 0.5, 0.5)
    rcnn_sampler: SamplerConfig = SamplerConfig(512, 0.25, True)
    mask_size: int = 28
    max_gt: int = 100  # static number of ground-truth slots per image (padded)


@dataclasses.dataclass(frozen=True)
class MaskRCNNConfig:
    num_classes: int = 80
    fpn_channels: int = 256
    num_outs: int = 5
    rpn_feat_channels: int = 256
    fc_channels: int = 1024
    roi_size: int = 7
    mask_roi_size: int = 14
    mask_channels: int = 256
    num_mask_convs: int = 4
    anchor_strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_scales: tuple[float, ...] = (8.0,)
    roi_strides: tuple[int, ...] = (4, 8, 16, 32)
    finest_scale: int = 56
    rpn_stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    rcnn_stds: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)
    rpn_test: RPNTestConfig = RPNTestConfig()
    rcnn_test: RCNNTestConfig = RCNNTestConfig()
    train: TrainConfig = TrainConfig()

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_ratios) * len(self.anchor_scales)

    def replace(self, **changes: Any) -> MaskRCNNConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> MaskRCNNConfig:
        return from_dict(json.loads(text))


def from_dict(fields: dict) -> MaskRCNNConfig:
    """Rebuilds a config from ``dataclasses.asdict`` output (lists become tuples)."""
    def build(kind, value):
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            hints = {f.name: f for f in dataclasses.fields(kind)}
            kwargs = {}
            for name, item in value.items():
                default = getattr(kind(), name) if _has_defaults(kind) else None
                if dataclasses.is_dataclass(default):
                    kwargs[name] = build(type(default), item)
                elif isinstance(item, list):
                    kwargs[name] = tuple(item)
                else:
                    kwargs[name] = item
            del hints
            return kind(**kwargs)
        return value
    return build(MaskRCNNConfig, fields)


def _has_defaults(kind) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(kind))
