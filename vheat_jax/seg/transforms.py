"""mmseg's ADE20K training pipeline in numpy, with mmcv/OpenCV semantics.

``LoadImageFromFile`` (BGR uint8) -> ``LoadAnnotations(reduce_zero_label)`` ->
``RandomResize(scale, ratio_range, keep_ratio=True)`` -> ``RandomCrop(crop_size,
cat_max_ratio)`` -> ``RandomFlip(prob)`` -> ``PhotoMetricDistortion`` ->
``SegDataPreProcessor`` (BGR -> RGB, normalise, pad to the crop size with 0 for the
image and 255 for the labels). Random draws follow mmseg's order, from the per-example
``np.random.Generator`` grain hands to the transform.

Image decoding is Pillow's (mmcv reads with OpenCV; both use libjpeg(-turbo) and
normally decode baseline JPEGs identically).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vheat_jax.seg import cv_ops
from vheat_jax.seg.inference import normalize_bgr, rescale_size
from vheat_jax.seg.metrics import IGNORE_INDEX, reduce_zero_label

log = logging.getLogger(__name__)


def decode_bgr(data: bytes | np.ndarray) -> np.ndarray:
    """Encoded bytes (or an already decoded RGB array) -> HWC uint8 BGR, 3 channels."""
    if isinstance(data, np.ndarray):
        rgb = data if data.ndim == 3 else np.repeat(data[..., None], 3, -1)
    else:
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[..., ::-1])


def decode_label(data: bytes | np.ndarray) -> np.ndarray:
    """A label map (PNG bytes or array) -> HW uint8 (the first channel of a 3-channel map)."""
    if not isinstance(data, np.ndarray):
        with Image.open(io.BytesIO(data)) as image:
            data = np.asarray(image)
    return np.ascontiguousarray(data[..., 0] if data.ndim == 3 else data).astype(np.uint8)


def load_example(element: dict, reduce_zero: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """(BGR image, label map) of a source element, or None (logged) when it cannot be decoded."""
    try:
        image, label = decode_bgr(element["image"]), decode_label(element["label"])
    except (OSError, ValueError, SyntaxError) as err:
        log.warning("cannot decode %s: %s", element.get("name", "?"), err)
        return None
    if image.shape[:2] != label.shape:
        log.warning("%s: image %s and label %s differ in size", element.get("name", "?"), image.shape, label.shape)
        return None
    return image, (reduce_zero_label(label) if reduce_zero else label)


@dataclass(frozen=True)
class SegAugmentation:
    """The recipe's parameters (mmseg's ADE20K defaults)."""

    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = (512, 512)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    reduce_zero_label: bool = True


def random_resize(image, label, aug: SegAugmentation, rng: np.random.Generator):
    """mmcv ``RandomResize``: a ratio in ``ratio_range`` times ``scale``, then a keep-ratio rescale."""
    ratio = rng.random() * (aug.ratio_range[1] - aug.ratio_range[0]) + aug.ratio_range[0]
    size = rescale_size(image.shape[:2], (int(aug.scale[0] * ratio), int(aug.scale[1] * ratio)))
    return cv_ops.resize_bilinear_u8(image, size), cv_ops.resize_nearest(label, size)


def random_crop(image, label, aug: SegAugmentation, rng: np.random.Generator):
    """mmseg ``RandomCrop``: up to 10 re-draws until no class covers ``cat_max_ratio`` of the crop."""
    (h, w), (ch, cw) = label.shape, aug.crop_size

    def draw():
        y = rng.integers(0, max(h - ch, 0) + 1)
        x = rng.integers(0, max(w - cw, 0) + 1)
        return slice(y, y + ch), slice(x, x + cw)

    box = draw()
    if aug.cat_max_ratio < 1.0:
        for _ in range(10):
            classes, counts = np.unique(label[box], return_counts=True)
            counts = counts[classes != IGNORE_INDEX]
            if len(counts) > 1 and counts.max() / counts.sum() < aug.cat_max_ratio:
                break
            box = draw()
    return image[box], label[box]


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(values.astype(np.float32) * np.float32(alpha) + np.float32(beta), 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32,
                           contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5), hue_delta: int = 18):
    """mmseg ``PhotoMetricDistortion``: brightness, contrast (first or last), saturation, hue; each with p=0.5."""
    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_last = rng.integers(2) == 0
    if not contrast_last and rng.integers(2):
        image = _convert(image, alpha=rng.uniform(*contrast_range))
    if rng.integers(2):
        hsv = cv_ops.bgr2hsv(image)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        image = cv_ops.hsv2bgr(hsv)
    if rng.integers(2):
        hsv = cv_ops.bgr2hsv(image)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-hue_delta, hue_delta)) % 180
        image = cv_ops.hsv2bgr(hsv)
    if contrast_last and rng.integers(2):
        image = _convert(image, alpha=rng.uniform(*contrast_range))
    return image


def pad_to(inputs: np.ndarray, label: np.ndarray, size: tuple[int, int]):
    """``SegDataPreProcessor`` padding at the bottom/right: 0 for the normalised image, 255 for labels."""
    pad = ((0, size[0] - label.shape[0]), (0, size[1] - label.shape[1]))
    return np.pad(inputs, (*pad, (0, 0))), np.pad(label, pad, constant_values=IGNORE_INDEX)


class SegTrainTransform:
    """Decode + the training recipe. Use with ``MapDataset.random_map``.

    Output: ``{"image": float32 (crop, crop, 3) normalised RGB, "label": int32 (crop, crop)}``;
    an undecodable example gives a zero image with every label ignored (and a warning).
    """

    def __init__(self, aug: SegAugmentation):
        self.aug = aug

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        example = load_example(element, self.aug.reduce_zero_label)
        if example is None:
            return {"image": np.zeros((*self.aug.crop_size, 3), np.float32),
                    "label": np.full(self.aug.crop_size, IGNORE_INDEX, np.int32)}
        image, label = random_resize(*example, self.aug, rng)
        image, label = random_crop(image, label, self.aug, rng)
        if rng.random() < self.aug.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.aug.photometric:
            image = photometric_distortion(np.ascontiguousarray(image), rng)
        inputs, label = pad_to(normalize_bgr(image), label, self.aug.crop_size)
        return {"image": inputs.astype(np.float32), "label": label.astype(np.int32)}

    __call__ = random_map
