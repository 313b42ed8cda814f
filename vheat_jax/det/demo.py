"""An embedded instance-segmentation data set: coloured shapes on textured backgrounds, in COCO layout.

``make_shapes_dataset(root)`` writes ``root/{train,val}/*.png`` and
``root/annotations/instances_{train,val}.json`` (polygon segmentations, 3
categories: ``ellipse``, ``rectangle``, ``triangle``), from a fixed seed: the same
files every time. Shapes may overlap; later shapes are drawn on top, and the
annotation polygons are the full shapes (as COCO annotates occluded objects
with their visible part, we keep overlaps small by rejection).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vheat_jax.det.data import write_coco_json

CLASSES = ("ellipse", "rectangle", "triangle")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(40, 200, 3)
    slope = rng.uniform(-60, 60, (2, 3))
    img = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
    freq = rng.uniform(4, 14, 2)
    img += 18 * np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy))[..., None] * rng.uniform(0.3, 1, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(rng: np.random.Generator, kind: int, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == 0:  # ellipse
        ax, ay = r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0)
        angle = rng.uniform(0, np.pi)
        pts = []
        for t in np.linspace(0, 2 * np.pi, 28, endpoint=False):
            x, y = ax * math.cos(t), ay * math.sin(t)
            pts.append((cx + x * math.cos(angle) - y * math.sin(angle), cy + x * math.sin(angle) + y * math.cos(angle)))
        return pts
    if kind == 1:  # axis-aligned rectangle
        w, h = r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0)
        return [(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy + h), (cx - w, cy + h)]
    angle = rng.uniform(0, 2 * np.pi)  # triangle
    return [(cx + r * math.cos(angle + k * 2 * np.pi / 3), cy + r * math.sin(angle + k * 2 * np.pi / 3))
            for k in range(3)]


def make_image(rng: np.random.Generator, size: int, max_shapes: int = 4):
    """(RGB uint8 image, [(class, polygon)]) with 1..max_shapes shapes of radius 10..size/4."""
    image = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(image)
    shapes, placed = [], []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(20):
            r = rng.uniform(10, size / 4)
            cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
            if all(math.hypot(cx - px, cy - py) > 0.8 * (r + pr) for px, py, pr in placed):
                break
        else:
            continue
        kind = int(rng.integers(len(CLASSES)))
        poly = _polygon(rng, kind, cx, cy, r)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.polygon(poly, fill=colour)
        placed.append((cx, cy, r))
        shapes.append((kind, poly))
    return np.asarray(image), shapes


def make_shapes_dataset(root: str | Path, *, num_train: int = 600, num_val: int = 100, size: int = 128,
                        seed: int = 0) -> Path:
    """Writes the data set (if not there yet) and returns ``root``."""
    from pycocotools import mask as mask_utils

    root = Path(root)
    done = root / "annotations" / "instances_val.json"
    if done.exists():
        return root
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ann_id = 1
    for split, count in (("train", num_train), ("val", num_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image, shapes = make_image(rng, size)
            name = f"{i:06d}.png"
            Image.fromarray(image).save(root / split / name)
            image_id = i + 1
            images.append({"id": image_id, "file_name": name, "height": size, "width": size})
            for kind, poly in shapes:
                flat = [float(v) for point in poly for v in point]
                rle = mask_utils.merge(mask_utils.frPyObjects([flat], size, size))
                x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": kind + 1,
                                    "segmentation": [flat], "area": float(mask_utils.area(rle)),
                                    "bbox": [x, y, w, h], "iscrowd": 0})
                ann_id += 1
        # write the val split last: its presence marks a complete data set
        write_coco_json(root / "annotations" / f"instances_{split}.json", images, annotations, CLASSES)
    return root
