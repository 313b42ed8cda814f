"""The OpenCV image operations mmseg's pipelines call, re-implemented in numpy (cv2 is not a dependency).

mmcv's ``imresize``/``imrescale`` (``cv2.resize``), ``bgr2hsv``/``hsv2bgr``
(``cv2.cvtColor``) work on uint8 images with OpenCV's fixed-point arithmetic;
these functions reproduce it bit for bit. Checked against opencv-python-headless
4.11 on an x86-64 CPU with AVX2 (``tests/test_seg_cv_ops.py``, which runs where cv2
is installed):

* :func:`resize_bilinear_u8` - ``INTER_LINEAR``: 11-bit weights
  ``round((1 - f) * 2048)`` / ``round(f * 2048)`` from the float32 source coordinate
  ``(d + 0.5) * (1 / (dst / src)) - 0.5`` (clamped to the border horizontally, rows
  clipped vertically), an exact integer horizontal pass, then OpenCV's SIMD
  vertical pass ``((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16) + 2) >> 2``.
* :func:`resize_nearest` - ``INTER_NEAREST``: source index ``floor(d * src / dst)``.
* :func:`bgr2hsv` / :func:`hsv2bgr` - uint8 HSV with hue in [0, 180): the integer
  ``RGB2HSV_b`` tables; ``HSV2RGB_b`` in float32, whose AVX2 kernel (blocks of 32
  pixels per row) truncates and fuses ``1 - s * h`` into one rounding, while the
  remaining pixels of a row round to nearest.

On other CPUs OpenCV may take other SIMD paths (ARM NEON, AVX-512) whose last-bit
rounding can differ by one grey level in a small fraction of pixels.
"""

from __future__ import annotations

import numpy as np

_COEF_SCALE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE (11 bits)


def _linear_taps(src_size: int, dst_size: int, clamp_coordinate: bool):
    """Source indices (i0, i1) and 11-bit weights (w0, w1) of OpenCV's linear resize along one axis."""
    scale = 1.0 / (dst_size / src_size)
    coord = ((np.arange(dst_size) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(coord).astype(np.int64)
    frac = (coord - start.astype(np.float32)).astype(np.float32)
    if clamp_coordinate:  # columns: OpenCV moves out-of-range coordinates onto the border pixel
        outside = (start < 0) | (start >= src_size - 1)
        frac[outside] = 0
        start = np.clip(start, 0, src_size - 1)
    w0 = np.rint((np.float32(1) - frac) * np.float32(_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(frac * np.float32(_COEF_SCALE)).astype(np.int64)
    return np.clip(start, 0, src_size - 1), np.clip(start + 1, 0, src_size - 1), w0, w1


def resize_bilinear_u8(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)`` for uint8 (H, W) or (H, W, C)."""
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    squeeze = image.ndim == 2
    src = image[..., None] if squeeze else image
    (h, w), (out_h, out_w) = src.shape[:2], out_hw
    x0, x1, a0, a1 = _linear_taps(w, out_w, clamp_coordinate=True)
    y0, y1, b0, b1 = _linear_taps(h, out_h, clamp_coordinate=False)
    src = src.astype(np.int64)
    rows = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]  # scale 2048
    top = (b0[:, None, None] * (rows[y0] >> 4)) >> 16
    bottom = (b1[:, None, None] * (rows[y1] >> 4)) >> 16
    out = np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)
    return out[..., 0] if squeeze else out


def resize_nearest(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(image, (w, h), interpolation=cv2.INTER_NEAREST)`` (any dtype; label maps)."""
    h, w = image.shape[:2]
    rows = np.minimum(np.floor(np.arange(out_hw[0]) * (1.0 / (out_hw[0] / h))).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(out_hw[1]) * (1.0 / (out_hw[1] / w))).astype(np.int64), w - 1)
    return image[rows[:, None], cols[None, :]]


_HSV_SHIFT = 12
_DIVISORS = np.maximum(np.arange(256, dtype=np.float64), 1)
_S_DIV = np.where(np.arange(256) > 0, np.rint((255 << _HSV_SHIFT) / _DIVISORS), 0).astype(np.int64)
_H_DIV = np.where(np.arange(256) > 0, np.rint((180 << _HSV_SHIFT) / (6.0 * _DIVISORS)), 0).astype(np.int64)
# Which of (v, v(1-s), v(1-sf), v(1-s(1-f))) is blue, green, red in each sixth of the hue circle.
_SECTORS = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])
_HSV2BGR_SIMD_BLOCK = 32  # pixels per AVX2 iteration; the rest of a row takes the scalar path


def bgr2hsv(image: np.ndarray) -> np.ndarray:
    """``cv2.cvtColor(image, cv2.COLOR_BGR2HSV)`` for uint8: H in [0, 180), S and V in [0, 255]."""
    b, g, r = (image[..., i].astype(np.int64) for i in range(3))
    v = np.maximum(np.maximum(b, g), r)
    diff = v - np.minimum(np.minimum(b, g), r)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _S_DIV[v] + half) >> _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _H_DIV[diff] + half) >> _HSV_SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], -1).astype(np.uint8)


def hsv2bgr(image: np.ndarray) -> np.ndarray:
    """``cv2.cvtColor(image, cv2.COLOR_HSV2BGR)`` for uint8 (H in [0, 180))."""
    one = np.float32(1)
    hue = image[..., 0].astype(np.float32) * np.float32(6 / 180)
    s = image[..., 1].astype(np.float32) * np.float32(1 / 255)
    v = image[..., 2].astype(np.float32) * np.float32(1 / 255)
    hue = np.where(hue >= 6, hue - np.float32(6), hue)
    sector = np.floor(hue).astype(np.int64)
    frac = (hue - sector.astype(np.float32)).astype(np.float32)

    def one_minus_product(a, b):  # 1 - a * b rounded once (fused multiply-add)
        return (1.0 - a.astype(np.float64) * b.astype(np.float64)).astype(np.float32)

    table = np.stack([v, v * (one - s), v * one_minus_product(s, frac), v * one_minus_product(s, one - frac)], -1)
    scaled = np.take_along_axis(table, _SECTORS[sector], -1) * np.float32(255)
    width = image.shape[1]
    simd = (np.arange(width) < (width // _HSV2BGR_SIMD_BLOCK) * _HSV2BGR_SIMD_BLOCK)[None, :, None]
    grey = (s == 0)[..., None]  # the scalar path returns v unchanged for grey pixels
    rounded = np.rint(np.where(grey, v[..., None] * np.float32(255), scaled))
    return np.clip(np.where(simd, np.trunc(scaled), rounded), 0, 255).astype(np.uint8)
