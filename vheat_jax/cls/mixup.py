"""timm ``Mixup`` (mode='batch') drawn on the host, applied to the pixels on the device.

Same algorithm as ``timm.data.mixup.Mixup`` (batch mode, ``correct_lam``):
per batch, with probability ``prob`` draw either cutmix (with probability
``switch_prob`` when both are enabled, lam ~ Beta(cutmix, cutmix)) or mixup
(lam ~ Beta(mixup, mixup)); the partner of row i is row B-1-i (``x.flip(0)``);
for cutmix, lam is recomputed from the clipped box area.  Targets are
``lam * smooth(y) + (1 - lam) * smooth(flip(y))`` with
``off = smoothing / K``, ``on = 1 - smoothing + off``.
Randomness comes from an explicit ``numpy.random.Generator``.

The host draws the parameters and computes the soft targets (B x K floats);
the images stay uint8 and the blend happens under ``jit``
(:mod:`vheat_jax.cls.on_device`), per row: outside ``box`` the pixel is
``weight * own + (1 - weight) * partner``, inside ``box`` it is the partner's.
Mixup rows have an empty box and ``weight = lam``; cutmix rows have
``weight = 1`` and the cut box; unmixed rows have ``weight = 1`` and no box.
"""

from __future__ import annotations

import dataclasses

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


@dataclasses.dataclass(frozen=True)
class BatchMix:
    """One batch's draw: ``lam`` (the targets' weight), ``cutmix``, and the cut ``box`` (yl, yh, xl, xh)."""

    lam: float = 1.0
    cutmix: bool = False
    box: tuple[int, int, int, int] = (0, 0, 0, 0)

    def pixel_weight(self) -> float:
        """The own image's weight outside the box (cutmix replaces inside the box and keeps the rest)."""
        return 1.0 if self.cutmix else self.lam


class Mixup:
    """Batch-mode mixup/cutmix + label smoothing: parameters and targets on the host."""

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

    def draw(self, img_hw: tuple[int, int], rng: np.random.Generator) -> BatchMix:
        """timm ``_mix_batch``'s random draws for one batch of ``img_hw`` images."""
        lam, use_cutmix = self.params(rng)
        if lam == 1.0:
            return BatchMix()
        if use_cutmix:
            box, lam = cutmix_bbox_and_lam(img_hw, lam, rng, self.correct_lam)
            return BatchMix(float(lam), True, tuple(int(v) for v in box))
        return BatchMix(lam)

    def __call__(self, labels: np.ndarray, img_hw: tuple[int, int], rng: np.random.Generator):
        """Returns (soft targets float32 (B, K), the batch's :class:`BatchMix`)."""
        if not self.active:
            return smooth_one_hot(labels, self.num_classes, self.label_smoothing), BatchMix()
        if labels.shape[0] % 2:
            raise ValueError(f"Mixup/cutmix needs an even local batch size, got {labels.shape[0]}")
        mix = self.draw(img_hw, rng)
        return mixup_target(labels, self.num_classes, mix.lam, self.label_smoothing), mix
