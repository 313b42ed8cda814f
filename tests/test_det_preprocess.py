"""The NumPy OpenCV-INTER_LINEAR resize and mmdet's test pipeline."""

import numpy as np
import pytest

from vheat_jax.det import preprocess


def float_bilinear(image, width, height):
    """Half-pixel-centre bilinear in float64 (OpenCV's geometry, x clamped, y edge-replicated)."""
    src_h, src_w = image.shape[:2]
    def axis(dst, src):
        pos = (np.arange(dst) + 0.5) * src / dst - 0.5
        lo = np.floor(pos).astype(int)
        frac = pos - lo
        return np.clip(lo, 0, src - 1), np.clip(lo + 1, 0, src - 1), frac
    y0, y1, fy = axis(height, src_h)
    x0, x1, fx = axis(width, src_w)
    fx = np.where((np.floor((np.arange(width) + 0.5) * src_w / width - 0.5) < 0), 0, fx)[None, :, None]
    img = image.astype(np.float64)
    rows = img[:, x0] * (1 - fx) + img[:, x1] * fx
    return rows[y0] * (1 - fy)[:, None, None] + rows[y1] * fy[:, None, None]


@pytest.mark.parametrize("size", [(37, 53, 80, 61), (120, 90, 41, 33), (5, 300, 17, 900), (64, 64, 64, 64)])
def test_resize_close_to_float_bilinear(size):
    src_h, src_w, dst_h, dst_w = size
    image = np.random.default_rng(0).integers(0, 256, (src_h, src_w, 3), dtype=np.uint8)
    out = preprocess.resize_bilinear_uint8(image, dst_w, dst_h)
    assert out.shape == (dst_h, dst_w, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(float) - float_bilinear(image, dst_w, dst_h)).max() <= 1.0


def test_resize_matches_opencv_when_available():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    for _ in range(60):
        src_h, src_w = rng.integers(1, 200, 2)
        dst_h, dst_w = rng.integers(1, 300, 2)
        image = rng.integers(0, 256, (src_h, src_w, 3), dtype=np.uint8)
        expected = cv2.resize(image, (int(dst_w), int(dst_h)), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(preprocess.resize_bilinear_uint8(image, int(dst_w), int(dst_h)), expected)


def test_keep_ratio_sizes_and_padding():
    assert preprocess.rescale_size(640, 480) == (1067, 800)
    assert preprocess.rescale_size(480, 640) == (800, 1067)
    assert preprocess.rescale_size(2000, 500) == (1333, 333)
    image = np.zeros((480, 640, 3), np.uint8)
    padded, meta = preprocess.preprocess(image)
    assert padded.shape == (800, 1088, 3) and meta.img_shape == (800, 1067) and meta.pad_shape == (800, 1088)
    np.testing.assert_array_equal(padded[:, 1067:], 0)
    np.testing.assert_allclose(padded[0, 0], -np.asarray(preprocess.MEAN_RGB) / np.asarray(preprocess.STD_RGB),
                               rtol=1e-6)
    bucket, _ = preprocess.preprocess(image, pad_shape=(832, 1344))
    assert bucket.shape == (832, 1344, 3)
