"""timm ``Mixup`` (mode='batch') on numpy NHWC batches, label smoothing folded in.

Same algorithm as ``timm.data.mixup.Mixup`` (batch mode, ``correct_lam``):
per batch, with probability ``prob`` draw either cutmix (with probability
``switch_prob`` when both are enabled, lam ~ Beta(cutmix, cutmix)) or mixup
(lam ~ Beta(mixup, mixup)); the partner of row i is row B-1-i (``x.flip(0)``);
for cutmix, lam is recomputed from the clipped box area.  Targets are
``lam * smooth(y) + (1 - lam) * smooth(flip(y))`` with
``off = smoothing / K``, ``on = 1 - smoothing + off``.
Randomness comes from an explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np


def smooth_one_hot(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    out = np.full((labels.shape[0], num_classes), off, np.float32)
    out[np.arange(labels.shape[0]), labels.astype(np.int64)] = on
    return out


def mixup_target(
    labels: np.ndarray, num_classes: int, lam: float = 1.0, smoothing: float = 0.0
) -> np.ndarray:
    y1 = smooth_one_hot(labels, num_classes, smoothing)
    y2 = smooth_one_hot(labels[::-1], num_classes, smoothing)
    return (y1 * np.float32(lam) + y2 * np.float32(1.0 - lam)).astype(np.float32)


def rand_bbox(img_hw, lam: float, rng: np.random.Generator):
    """timm ``rand_bbox`` (margin 0): returns (yl, yh, xl, xh)."""
    ratio = np.sqrt(1.0 - lam)
    img_h, img_w = img_hw
    cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
    cy = int(rng.integers(0, img_h))
    cx = int(rng.integers(0, img_w))
    yl = int(np.clip(cy - cut_h // 2, 0, img_h))
    yh = int(np.clip(cy + cut_h // 2, 0, img_h))
    xl = int(np.clip(cx - cut_w // 2, 0, img_w))
    xh = int(np.clip(cx + cut_w // 2, 0, img_w))
    return yl, yh, xl, xh


def cutmix_bbox_and_lam(img_hw, lam: float, rng: np.random.Generator, correct_lam: bool = True):
    yl, yh, xl, xh = rand_bbox(img_hw, lam, rng)
    if correct_lam:
        lam = 1.0 - (yh - yl) * (xh - xl) / float(img_hw[0] * img_hw[1])
    return (yl, yh, xl, xh), lam


class Mixup:
    """Batch-mode mixup/cutmix + label smoothing on NHWC numpy arrays."""

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
        correct_lam: bool = True,
        mode: str = "batch",
    ):
        if mode != "batch":
            raise NotImplementedError(f"Only mixup_mode='batch' is supported, got {mode!r}")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.mix_prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.label_smoothing = float(label_smoothing)
        self.num_classes = int(num_classes)
        self.correct_lam = correct_lam

    @property
    def active(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0

    def params(self, rng: np.random.Generator) -> tuple[float, bool]:
        """timm ``_params_per_batch`` -> (lam, use_cutmix)."""
        lam, use_cutmix = 1.0, False
        if self.active and rng.random() < self.mix_prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = bool(rng.random() < self.switch_prob)
                a = self.cutmix_alpha if use_cutmix else self.mixup_alpha
                lam = rng.beta(a, a)
            elif self.mixup_alpha > 0:
                lam = rng.beta(self.mixup_alpha, self.mixup_alpha)
            else:
                use_cutmix = True
                lam = rng.beta(self.cutmix_alpha, self.cutmix_alpha)
            lam = float(lam)
        return lam, use_cutmix

    def __call__(self, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        """Returns (mixed images, soft targets float32 (B, K), info dict).

        ``images`` is NHWC float32 (modified copy is returned); ``labels`` int (B,).
        """
        info = {"lam": 1.0, "cutmix": False}
        if not self.active:
            return images, smooth_one_hot(labels, self.num_classes, self.label_smoothing), info
        if images.shape[0] % 2:
            raise ValueError(f"Mixup/cutmix needs an even local batch size, got {images.shape[0]}")
        lam, use_cutmix = self.params(rng)
        x = images
        if lam != 1.0:
            if use_cutmix:
                (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(images.shape[1:3], lam, rng, self.correct_lam)
                x = images.copy()
                x[:, yl:yh, xl:xh, :] = images[::-1, yl:yh, xl:xh, :]
            else:
                x = (images * np.float32(lam) + images[::-1] * np.float32(1.0 - lam)).astype(np.float32)
        info = {"lam": float(lam), "cutmix": use_cutmix}
        return x, mixup_target(labels, self.num_classes, lam, self.label_smoothing), info
