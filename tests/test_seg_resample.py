"""Resizing, pooling and window geometry against PyTorch and mmcv's definitions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vheat_jax.seg.inference import rescale_size, slide_windows
from vheat_jax.seg.resample import (
    adaptive_avg_pool,
    adaptive_pool_matrix,
    bilinear_matrix,
    bilinear_taps,
    resize_bilinear,
    resize_hwc_with_taps,
)


@pytest.mark.parametrize("in_hw,out_hw", [((3, 4), (24, 32)), ((6, 6), (3, 4)), ((16, 16), (64, 64)),
                                          ((7, 5), (7, 5)), ((37, 21), (150, 200)), ((150, 200), (37, 21))])
def test_bilinear_equals_torch(in_hw, out_hw):
    x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=out_hw, mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(resize_bilinear(x, out_hw)), expected, rtol=0, atol=2e-6)
    taps = bilinear_taps(in_hw[0], out_hw[0]), bilinear_taps(in_hw[1], out_hw[1])
    np.testing.assert_allclose(np.asarray(resize_hwc_with_taps(x[1], *taps)), expected[1], rtol=0, atol=2e-6)


def test_identity_resize_is_exact():
    np.testing.assert_array_equal(bilinear_matrix(9, 9), np.eye(9, dtype=np.float32))


@pytest.mark.parametrize("hw", [(2, 3), (3, 4), (5, 7), (6, 6), (16, 12)])
@pytest.mark.parametrize("scale", [1, 2, 3, 6])
def test_adaptive_pool_equals_torch(hw, scale):
    x = np.random.default_rng(1).normal(size=(1, *hw, 4)).astype(np.float32)
    expected = F.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), scale).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(adaptive_avg_pool(x, scale)), expected, rtol=0, atol=1e-6)


def test_pool_bins_overlap_and_repeat_as_documented():
    # n = 2, s = 3: [0, 1), [0, 2), [1, 2);  n = 3, s = 2: [0, 2), [1, 3)
    np.testing.assert_allclose(adaptive_pool_matrix(2, 3), [[1, 0], [0.5, 0.5], [0, 1]])
    np.testing.assert_allclose(adaptive_pool_matrix(3, 2), [[0.5, 0.5, 0], [0, 0.5, 0.5]])


def test_rescale_size_is_mmcv_imrescale():
    assert rescale_size((375, 500), (2048, 512)) == (512, 683)  # short side to 512
    assert rescale_size((500, 375), (2048, 512)) == (683, 512)  # either orientation
    assert rescale_size((256, 2560), (2048, 512)) == (205, 2048)  # long side caps
    assert rescale_size((96, 128), (128, 96)) == (96, 128)


def test_slide_windows():
    assert slide_windows((512, 683), (512, 512), (341, 341)) == [(0, 512, 0, 512), (0, 512, 171, 683)]
    assert slide_windows((300, 200), (512, 512), (341, 341)) == [(0, 300, 0, 200)]  # smaller than the crop
    windows = slide_windows((512, 2048), (512, 512), (341, 341))
    assert len(windows) == 6 and windows[-1] == (0, 512, 1536, 2048)
