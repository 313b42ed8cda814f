"""timm-style Mixup/CutMix (batch mode) + label smoothing: the host's draw and targets, the device's pixels.

The pixel reference is timm's ``_mix_batch`` written out here on the original row
order (partner of row i is row B-1-i); the pipeline interleaves rows so partners
are adjacent and ``on_device.mix`` must give the same pixels.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from vheat_jax.cls import on_device
from vheat_jax.cls.data import interleave_partners
from vheat_jax.cls.mixup import BatchMix, Mixup, mixup_target, smooth_one_hot

K = 10


def _batch(rng, b=8, s=16):
    return (rng.standard_normal((b, s, s, 3)).astype(np.float32), rng.integers(0, K, b))


def _timm_pixels(x, mix: BatchMix):
    """timm ``Mixup._mix_batch`` on the original row order."""
    if mix.lam == 1.0:
        return x
    if mix.cutmix:
        yl, yh, xl, xh = mix.box
        out = x.copy()
        out[:, yl:yh, xl:xh, :] = x[::-1, yl:yh, xl:xh, :]
        return out
    return x * np.float32(mix.lam) + x[::-1] * np.float32(1.0 - mix.lam)


def _device_pixels(x, mix: BatchMix):
    """What the pipeline ships (interleaved rows + per-row draw) mixed by ``on_device.mix``, rows put back."""
    order = interleave_partners(x.shape[0])
    weight = np.full(x.shape[0], mix.pixel_weight(), np.float32)
    box = np.tile(np.asarray(mix.box, np.int32), (x.shape[0], 1))
    mixed = np.asarray(on_device.mix(jnp.asarray(x[order]), jnp.asarray(weight), jnp.asarray(box)))
    return mixed[np.argsort(order)]


def test_interleave_puts_partners_next_to_each_other():
    order = interleave_partners(8)
    np.testing.assert_array_equal(order, [0, 7, 1, 6, 2, 5, 3, 4])
    assert all(order[2 * i] + order[2 * i + 1] == 7 for i in range(4))


def test_targets_and_device_pixels_follow_timm():
    mix = Mixup(0.8, 1.0, 1.0, 0.5, 0.1, K)
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(40):
        x, y = _batch(rng)
        t, draw = mix(y, x.shape[1:3], rng)
        kinds.add(draw.cutmix)
        assert t.shape == (8, K) and t.dtype == np.float32
        np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-6)
        np.testing.assert_allclose(
            t, draw.lam * smooth_one_hot(y, K, 0.1) + (1 - draw.lam) * smooth_one_hot(y[::-1], K, 0.1), atol=1e-6
        )
        np.testing.assert_allclose(_device_pixels(x, draw), _timm_pixels(x, draw), atol=1e-6)
        if draw.cutmix:  # lam was corrected to the box area (fraction of pixels kept)
            yl, yh, xl, xh = draw.box
            assert draw.lam == pytest.approx(1 - (yh - yl) * (xh - xl) / 256, abs=1e-9)
    assert kinds == {True, False}


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
    # The same statistics through the batch draw (mixup lam is uncorrected).
    y = np.arange(2)
    infos = [mix(y, (8, 8), rng)[1] for _ in range(3000)]
    cut2 = np.array([i.cutmix for i in infos])
    lam2 = np.array([i.lam for i in infos])[~cut2]
    assert abs(cut2.mean() - 0.5) < 0.04
    assert abs(lam2.var() - 0.0962) < 0.009


def test_only_label_smoothing_when_disabled():
    mix = Mixup(0.0, 0.0, 1.0, 0.5, 0.1, K)
    assert not mix.active
    rng = np.random.default_rng(0)
    y = rng.integers(0, K, 5)  # odd batch is fine without mixing
    t, draw = mix(y, (16, 16), rng)
    assert draw == BatchMix()
    on, off = 1 - 0.1 + 0.1 / K, 0.1 / K
    expected = np.full((5, K), off, np.float32)
    expected[np.arange(5), y] = on
    np.testing.assert_allclose(t, expected, atol=1e-7)


def test_mixup_only_and_cutmix_only_and_prob():
    rng = np.random.default_rng(0)
    y = rng.integers(0, K, 8)
    assert not any(Mixup(0.8, 0.0, num_classes=K)(y, (16, 16), rng)[1].cutmix for _ in range(20))
    assert all(Mixup(0.0, 1.0, num_classes=K)(y, (16, 16), rng)[1].cutmix for _ in range(20))
    infos = [Mixup(0.8, 1.0, prob=0.0, num_classes=K)(y, (16, 16), rng)[1] for _ in range(5)]
    assert all(i.lam == 1.0 for i in infos)
    with pytest.raises(ValueError):
        Mixup(0.8, 1.0, num_classes=K)(y[:3], (16, 16), rng)


def test_mixup_target_helper():
    y = np.array([0, 1, 2, 3])
    t = mixup_target(y, 4, lam=0.7, smoothing=0.0)
    np.testing.assert_allclose(t[0], [0.7, 0, 0, 0.3])
