"""The numpy OpenCV operations against OpenCV itself (runs where cv2 is installed; not a dependency).

Verified here with opencv-python-headless 4.11 on x86-64 with AVX2: 0 differing pixels.
"""

import numpy as np
import pytest

from vheat_jax.seg import cv_ops

cv2 = pytest.importorskip("cv2")


def test_resize_and_hsv_are_bit_exact():
    rng = np.random.default_rng(0)
    for _ in range(60):
        (h, w), (oh, ow) = rng.integers(1, 300, 2), rng.integers(1, 600, 2)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        labels = rng.integers(0, 256, (h, w), dtype=np.uint8)
        size = (int(ow), int(oh))
        np.testing.assert_array_equal(cv_ops.resize_bilinear_u8(image, (oh, ow)),
                                      cv2.resize(image, size, interpolation=cv2.INTER_LINEAR))
        np.testing.assert_array_equal(cv_ops.resize_bilinear_u8(labels, (oh, ow)),
                                      cv2.resize(labels, size, interpolation=cv2.INTER_LINEAR))
        np.testing.assert_array_equal(cv_ops.resize_nearest(labels, (oh, ow)),
                                      cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST))
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        np.testing.assert_array_equal(cv_ops.bgr2hsv(image), hsv)
        np.testing.assert_array_equal(cv_ops.hsv2bgr(hsv), cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))
