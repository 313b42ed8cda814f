"""Image-level inference: uint8 BGR images in, boxes / scores / labels / masks in original pixels out.

Images go through mmdetection's test pipeline (:mod:`vheat_jax.det.preprocess`) and
are grouped by padded shape; each padded shape is one compiled program (cached),
so a data set compiles once per distinct ``pad_shape`` (keep-ratio resizing into
(1333, 800) and padding to 32 leave a few dozen). ``bucket`` pads further to a
coarser grid for fewer compilations: vHeat mixes globally (its DCT spans the
padded map), so a larger padding changes the outputs slightly; the default
(``bucket=32``) is exactly mmdetection's single-image test.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import numpy as np

from vheat_jax.arch import Arch
from vheat_jax.det import checkpoint, detector, masks, preprocess
from vheat_jax.det.model import MaskRCNN
from vheat_jax.det.model_config import MaskRCNNConfig


@dataclasses.dataclass
class Detections:
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 in original pixels
    scores: np.ndarray  # (N,) descending
    labels: np.ndarray  # (N,) int, 0-based class index
    masks: np.ndarray | None  # (N, H, W) bool at the original size
    mask_probs: np.ndarray  # (N, 28, 28) probabilities of the label's mask channel
    overflow: bool  # a static capacity was exceeded (see docs/detection.md)


class Detector:
    """A Mask R-CNN with its weights, ready for images."""

    def __init__(self, config: MaskRCNNConfig, arch: Arch, params, *, classes: Sequence[str] | None = None,
                 scale: tuple[int, int] = preprocess.TEST_SCALE, bucket: int = preprocess.PAD_DIVISOR):
        self.config, self.arch, self.params = config, arch, params
        self.classes = tuple(classes) if classes is not None else None
        self.scale, self.bucket = scale, bucket
        self.model = MaskRCNN(config, arch)
        self._predict = jax.jit(lambda p, x, hw: detector.predict(self.model, {"params": p}, x, hw))

    @classmethod
    def from_mmdet(cls, path: str | os.PathLike, *, post_norm: bool | None = None, **kwargs) -> Detector:
        config, arch, params, meta = checkpoint.read_mmdet_checkpoint(path, post_norm=post_norm)
        return cls(config, arch, params, classes=checkpoint.class_names(meta), **kwargs)

    def predict_padded(self, images: np.ndarray, img_hw: np.ndarray) -> dict[str, np.ndarray]:
        """Raw batched outputs for preprocessed images (B, Hp, Wp, 3) (resized-image frame)."""
        return jax.device_get(self._predict(self.params, images, np.asarray(img_hw, np.float32)))

    def __call__(self, images_bgr: Sequence[np.ndarray], *, with_masks: bool = True,
                 batch_size: int = 1) -> list[Detections]:
        prepared = [preprocess.preprocess(image, self.scale, divisor=self.bucket) for image in images_bgr]
        results: list[Detections | None] = [None] * len(prepared)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for index, (padded, _) in enumerate(prepared):
            by_shape.setdefault(padded.shape[:2], []).append(index)
        for indices in by_shape.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                images = np.stack([prepared[i][0] for i in chunk])
                img_hw = np.asarray([prepared[i][1].img_shape for i in chunk], np.float32)
                out = self.predict_padded(images, img_hw)
                for row, index in enumerate(chunk):
                    results[index] = self._finish(out, row, prepared[index][1], with_masks)
        return results

    def _finish(self, out, row: int, meta: preprocess.ImageMeta, with_masks: bool) -> Detections:
        keep = np.asarray(out["valid"][row])
        boxes = masks.rescale_boxes(np.asarray(out["boxes"][row][keep]), meta.scale_factor)
        probs = np.asarray(out["mask_probs"][row][keep])
        pasted = (masks.paste_masks_numpy(probs, boxes, meta.ori_shape, self.config.rcnn_test.mask_thr_binary)
                  if with_masks else None)
        return Detections(boxes=boxes, scores=np.asarray(out["scores"][row][keep]),
                          labels=np.asarray(out["labels"][row][keep]), masks=pasted, mask_probs=probs,
                          overflow=bool(out["overflow"][row]))
