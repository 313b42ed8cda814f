"""timm-style Mixup/CutMix (batch mode) + label smoothing."""

import numpy as np
import pytest

from vheat_jax.data.mixup import Mixup, mixup_target, smooth_one_hot

K = 10


def _batch(rng, b=8, s=16):
    return (rng.standard_normal((b, s, s, 3)).astype(np.float32), rng.integers(0, K, b))


def test_targets_sum_to_one_and_structure():
    mix = Mixup(0.8, 1.0, 1.0, 0.5, 0.1, K)
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y = _batch(rng)
        xm, t, info = mix(x, y, rng)
        assert xm.shape == x.shape and xm.dtype == np.float32
        assert t.shape == (8, K) and t.dtype == np.float32
        np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-6)
        lam = info["lam"]
        np.testing.assert_allclose(
            t, lam * smooth_one_hot(y, K, 0.1) + (1 - lam) * smooth_one_hot(y[::-1], K, 0.1), atol=1e-6
        )
        if info["cutmix"]:
            # every pixel comes either from the sample or from its flipped partner
            same = np.all(xm == x, axis=-1)
            flip = np.all(xm == x[::-1], axis=-1)
            assert np.all(same | flip)
            # lam was corrected to the box area (fraction of pixels kept)
            assert np.mean(same[0]) == pytest.approx(lam, abs=1e-6) or np.allclose(x[0], x[-1])
        else:
            np.testing.assert_allclose(xm, lam * x + (1 - lam) * x[::-1], atol=1e-5)


def test_switch_fraction_and_lambda_distributions():
    """Cutmix ~50% of batches; mixup lam ~ Beta(0.8, 0.8); cutmix lam ~ Beta(1, 1).

    The mean of Beta(a, a) is 0.5 for any a, so the variance is what pins the
    alpha: 1 / (4 (2a + 1)) = 0.0962 for a=0.8 vs 0.0833 for a=1 (std. error of
    the sample variance here is ~0.002).
    """
    mix = Mixup(0.8, 1.0, 1.0, 0.5, 0.1, K)
    rng = np.random.default_rng(123)
    draws = [mix.params(rng) for _ in range(6000)]
    cut = np.array([c for _, c in draws])
    lam = np.array([l for l, _ in draws])
    assert abs(cut.mean() - 0.5) < 0.03
    lm, lc = lam[~cut], lam[cut]
    assert abs(lm.mean() - 0.5) < 0.02 and abs(lc.mean() - 0.5) < 0.02
    assert abs(lm.var() - 1 / (4 * (2 * 0.8 + 1))) < 0.006
    assert abs(lc.var() - 1 / 12) < 0.006
    # The same statistics through the batch call (mixup lam is uncorrected).
    x, y = _batch(np.random.default_rng(0), b=2, s=8)
    infos = [mix(x, y, rng)[2] for _ in range(3000)]
    cut2 = np.array([i["cutmix"] for i in infos])
    lam2 = np.array([i["lam"] for i in infos])[~cut2]
    assert abs(cut2.mean() - 0.5) < 0.04
    assert abs(lam2.var() - 0.0962) < 0.009


def test_only_label_smoothing_when_disabled():
    mix = Mixup(0.0, 0.0, 1.0, 0.5, 0.1, K)
    assert not mix.active
    rng = np.random.default_rng(0)
    x, y = _batch(rng, b=5)  # odd batch is fine without mixing
    xm, t, info = mix(x, y, rng)
    assert xm is x and info["lam"] == 1.0
    on, off = 1 - 0.1 + 0.1 / K, 0.1 / K
    expected = np.full((5, K), off, np.float32)
    expected[np.arange(5), y] = on
    np.testing.assert_allclose(t, expected, atol=1e-7)
    np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-6)


def test_mixup_only_and_cutmix_only_and_prob():
    rng = np.random.default_rng(0)
    x, y = _batch(rng)
    assert not any(Mixup(0.8, 0.0, num_classes=K)(x, y, rng)[2]["cutmix"] for _ in range(20))
    assert all(Mixup(0.0, 1.0, num_classes=K)(x, y, rng)[2]["cutmix"] for _ in range(20))
    infos = [Mixup(0.8, 1.0, prob=0.0, num_classes=K)(x, y, rng)[2] for _ in range(5)]
    assert all(i["lam"] == 1.0 for i in infos)
    with pytest.raises(ValueError):
        Mixup(0.8, 1.0, num_classes=K)(x[:3], y[:3], rng)


def test_mixup_target_helper():
    y = np.array([0, 1, 2, 3])
    t = mixup_target(y, 4, lam=0.7, smoothing=0.0)
    np.testing.assert_allclose(t[0], [0.7, 0, 0, 0.3])
