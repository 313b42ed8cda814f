"""mmdetection's test pipeline in NumPy: keep-ratio resize (OpenCV ``INTER_LINEAR`` on uint8,
bit for bit), normalisation, BGR to RGB and zero padding to a multiple of 32.

The resize reproduces OpenCV's fixed-point bilinear path for 8-bit images
(``cv::resize``, ``INTER_LINEAR``): per destination column/row the source position
``(d + 0.5) * src / dst - 0.5`` in float32, 11-bit coefficients rounded
independently (``saturate_cast<short>(w * 2048)``), horizontal clamping of the
position to the border (OpenCV clamps ``x``, not ``y``: rows above/below the image
take two copies of the edge row with the unclamped weights), a horizontal pass in
exact integers and OpenCV's vectorised vertical pass
``(mulhi(r0 >> 4, b0) + mulhi(r1 >> 4, b1) + 2) >> 2``. It equals ``cv2.resize``
(opencv-python-headless 5.0, the build that made the fixtures) on every pixel of
the fixtures and of the randomised tests in ``tests/test_det_preprocess.py``
(which run against ``cv2`` when it is importable). OpenCV builds whose vertical
pass falls back to the scalar rounding ``(r0 * b0 + r1 * b1 + 2**21) >> 22`` (no
SIMD) differ by one grey level on about 12% of pixels; ``scalar=True`` gives that.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)
TEST_SCALE = (1333, 800)
PAD_DIVISOR = 32
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def _linear_coeffs(dst: int, src: int, clamp: bool):
    """Source indices and 11-bit weights of OpenCV's bilinear resize along one axis."""
    scale = 1.0 / (dst / src)  # OpenCV: scale = 1 / inv_scale, inv_scale = dst / src (double)
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    index = np.floor(pos).astype(np.int64)
    frac = (pos - index.astype(np.float32)).astype(np.float32)
    if clamp:  # columns: clamped position and weight
        low = index < 0
        frac[low], index[low] = 0, 0
        high = index >= src - 1
        frac[high], index[high] = 0, src - 1
    w0 = np.rint((np.float32(1) - frac) * np.float32(_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(frac * np.float32(_COEF_SCALE)).astype(np.int64)
    return np.clip(index, 0, src - 1), np.clip(index + 1, 0, src - 1), w0, w1


def resize_bilinear_uint8(image: np.ndarray, width: int, height: int, *, scalar: bool = False) -> np.ndarray:
    """``cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)`` for uint8 (H, W[, C])."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    squeeze = image.ndim == 2
    if squeeze:
        image = image[:, :, None]
    src_h, src_w = image.shape[:2]
    if (src_h, src_w) == (height, width):
        return image[:, :, 0].copy() if squeeze else image.copy()
    x0, x1, a0, a1 = _linear_coeffs(width, src_w, clamp=True)
    y0, y1, b0, b1 = _linear_coeffs(height, src_h, clamp=False)
    pixels = image.astype(np.int64)
    rows = pixels[:, x0] * a0[None, :, None] + pixels[:, x1] * a1[None, :, None]  # (src_h, width, C)
    r0, r1 = rows[y0], rows[y1]
    b0, b1 = b0[:, None, None], b1[:, None, None]
    if scalar:
        out = (r0 * b0 + r1 * b1 + (1 << (2 * _COEF_BITS - 1))) >> (2 * _COEF_BITS)
    else:
        out = ((((r0 >> 4) * b0) >> 16) + (((r1 >> 4) * b1) >> 16) + 2) >> 2
    out = np.clip(out, 0, 255).astype(np.uint8)
    return out[:, :, 0] if squeeze else out


def rescale_size(width: int, height: int, scale: tuple[int, int] = TEST_SCALE) -> tuple[int, int]:
    """mmcv ``rescale_size``: the largest keep-ratio size fitting ``scale`` (long, short edge)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(width * float(factor) + 0.5), int(height * float(factor) + 0.5)


def pad_size(size: int, divisor: int = PAD_DIVISOR) -> int:
    return int(math.ceil(size / divisor)) * divisor


@dataclasses.dataclass(frozen=True)
class ImageMeta:
    """What the post-processing needs of one image (mmdet's img_meta)."""

    ori_shape: tuple[int, int]  # (H, W) of the original image
    img_shape: tuple[int, int]  # (h, w) after resizing; boxes are clipped to it
    pad_shape: tuple[int, int]  # (Hp, Wp) after padding to a multiple of 32
    scale_factor: tuple[float, float]  # (w / W, h / H)


def normalize(resized_bgr: np.ndarray, mean=MEAN_RGB, std=STD_RGB) -> np.ndarray:
    """``(rgb - mean) / std`` in float32 (a division, as ``DetDataPreprocessor``), HWC."""
    rgb = resized_bgr[..., ::-1].astype(np.float32)
    return (rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def pad_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero padding at the bottom/right to ``shape`` (after normalisation, as mmdet)."""
    h, w = image.shape[:2]
    if h > shape[0] or w > shape[1]:
        raise ValueError(f"image {h}x{w} does not fit the padded shape {shape}")
    return np.pad(image, ((0, shape[0] - h), (0, shape[1] - w), (0, 0)))


def preprocess(image_bgr: np.ndarray, scale: tuple[int, int] = TEST_SCALE, *,
               pad_shape: tuple[int, int] | None = None,
               divisor: int = PAD_DIVISOR) -> tuple[np.ndarray, ImageMeta]:
    """One uint8 BGR (H, W, 3) image -> (normalised, padded float32 HWC RGB, meta).

    ``pad_shape`` pads further, to a shape shared by several images (a batch or a
    bucket); by default the image is padded to the next multiple of ``divisor``,
    exactly as mmdetection's test pipeline with one image per batch.
    """
    image_bgr = np.asarray(image_bgr)
    height, width = image_bgr.shape[:2]
    new_w, new_h = rescale_size(width, height, scale)
    resized = resize_bilinear_uint8(image_bgr, new_w, new_h)
    own_pad = (pad_size(new_h, divisor), pad_size(new_w, divisor))
    target = own_pad if pad_shape is None else tuple(pad_shape)
    meta = ImageMeta(ori_shape=(height, width), img_shape=(new_h, new_w), pad_shape=own_pad,
                     scale_factor=(new_w / width, new_h / height))
    return pad_to(normalize(resized), target), meta
