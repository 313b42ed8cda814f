"""The embedded demo data set: coloured, textured shapes on greyish backgrounds, generated on the fly.

Example ``i`` of a split is a pure function of ``(seed, split, i)``, so the set is the
same on every machine and needs no files. Classes: 0 background, 1 disk, 2 rectangle,
3 triangle, 4 ring. Backgrounds are low-saturation two-colour gradients. Each shape
class has its own hue (+-25 degrees, random saturation and brightness) and, with
probability ``texture_prob``, its own texture (stripes, checker, noise, dots; another
class's otherwise), so colour, texture and outline all carry the class; the training
augmentation's hue shift (up to 36 degrees) blurs the colour cue. Shapes overlap (later
ones on top); every image has sensor noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CLASSES = ("background", "disk", "rectangle", "triangle", "ring")
SPLIT_IDS = {"train": 0, "val": 1}
_TEXTURES = ("stripes", "checker", "noise", "dots")  # class k prefers _TEXTURES[k - 1]


def _texture(kind: str, yy, xx, rng: np.random.Generator) -> np.ndarray:
    """A (H, W) brightness multiplier in [0.5, 1]."""
    if kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(8, 14)
        return 0.75 + 0.25 * np.sign(np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period))
    if kind == "checker":
        cell = rng.integers(5, 9)
        return np.where(((yy // cell) + (xx // cell)) % 2 == 0, 1.0, 0.6)
    if kind == "noise":
        return rng.uniform(0.5, 1.0, yy.shape)
    cell = rng.integers(7, 11)  # dots
    return np.where((yy % cell - cell / 2) ** 2 + (xx % cell - cell / 2) ** 2 <= (cell / 3) ** 2, 0.55, 1.0)


def _shape_mask(label: int, yy, xx, rng: np.random.Generator, size: float) -> np.ndarray:
    cy, cx = rng.uniform(0, yy.shape[0]), rng.uniform(0, yy.shape[1])
    dy, dx = yy - cy, xx - cx
    if label == 1:  # disk
        return dy**2 + dx**2 <= size**2
    if label == 2:  # axis-aligned rectangle of random aspect
        half_h, half_w = size * rng.uniform(0.5, 1.0), size * rng.uniform(0.5, 1.0)
        return (np.abs(dy) <= half_h) & (np.abs(dx) <= half_w)
    if label == 3:  # triangle: three random directions around the centre
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3 + rng.uniform(-0.3, 0.3, 3)
        corners = np.stack([cy + size * np.sin(angles), cx + size * np.cos(angles)], -1)
        inside = np.ones(yy.shape, bool)
        for k in range(3):
            (y0, x0), (y1, x1), (y2, x2) = corners[k], corners[(k + 1) % 3], corners[(k + 2) % 3]
            side = (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0)
            inside &= side * ((x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)) >= 0
        return inside
    radius2 = dy**2 + dx**2  # ring
    return (radius2 <= size**2) & (radius2 >= (size * rng.uniform(0.45, 0.65)) ** 2)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One colour, hue in degrees, s and v in [0, 1] -> RGB in [0, 255]."""
    k = (np.array([5.0, 3.0, 1.0]) + h / 60.0) % 6
    return 255 * (v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1))


def make_example(rng: np.random.Generator, height: int, width: int,
                 texture_prob: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, uint8 label map) of one scene."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (yy * np.sin(angle) + xx * np.cos(angle)) / max(height, width)
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    ends = [_hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, 0.25), rng.uniform(0.2, 0.9)) for _ in range(2)]
    image = (1 - ramp)[..., None] * ends[0] + ramp[..., None] * ends[1]
    label = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(2, 6)):
        cls = int(rng.integers(1, len(CLASSES)))
        texture = _TEXTURES[cls - 1] if rng.random() < texture_prob else _TEXTURES[rng.integers(len(_TEXTURES))]
        mask = _shape_mask(cls, yy, xx, rng, rng.uniform(0.15, 0.35) * min(height, width))
        colour = _hsv_to_rgb(72.0 * (cls - 1) + rng.uniform(-25, 25), rng.uniform(0.5, 1), rng.uniform(0.5, 1))
        fill = colour * _texture(texture, yy, xx, rng)[..., None]
        image = np.where(mask[..., None], fill, image)
        label[mask] = cls
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


class ShapesSource:
    """``num_train`` / ``num_val`` examples of ``split`` ("train" or "val"), ``height`` x ``width`` pixels."""

    def __init__(self, split: str, num_train: int = 2000, num_val: int = 200, height: int = 96, width: int = 128,
                 seed: int = 0, texture_prob: float = 0.8):
        if split not in SPLIT_IDS:
            raise ValueError(f"synthetic split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        self.split, self.height, self.width, self.seed, self.texture_prob = split, height, width, seed, texture_prob
        self.size = num_train if split == "train" else num_val

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], int(index)])
        image, label = make_example(rng, self.height, self.width, self.texture_prob)
        return {"image": image, "label": label, "name": f"shapes/{self.split}[{index}]"}
