"""RandAugment, RandomResizedCrop, RandomErasing and eval transform tests."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from vheat_jax.data import randaugment as ra
from vheat_jax.data import transforms as T

FILL = (124, 116, 104)  # round(255 * ImageNet mean), timm's img_mean


def _image(w=40, h=32, seed=0):
    rng = np.random.default_rng(seed)
    # smooth-ish structure + noise so every op changes something
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def test_timm_fill_color():
    assert tuple(min(255, round(255 * m)) for m in T.IMAGENET_MEAN) == FILL


def test_rand_augment_parse_inc1():
    aug = ra.rand_augment_transform("rand-m9-mstd0.5-inc1", {"img_mean": FILL})
    assert aug.num_layers == 2
    assert [op.name for op in aug.ops] == list(ra.RAND_INCREASING_TRANSFORMS)
    assert len(aug.ops) == 15
    for op in aug.ops:
        assert op.prob == 0.5 and op.magnitude == 9 and op.magnitude_std == 0.5
        assert op.kwargs["fillcolor"] == FILL
    assert [op.name for op in ra.rand_augment_transform("rand-m9").ops] == list(ra.RAND_TRANSFORMS)
    with pytest.raises(ValueError):
        ra.rand_augment_transform("rand-q3")


@pytest.mark.parametrize("name", ra.RAND_INCREASING_TRANSFORMS)
def test_each_op_all_magnitudes(name):
    img = _image()
    rng = np.random.default_rng(0)
    for mstd in (0.0, 0.5):
        for m in range(11):
            op = ra.AugmentOp(
                name,
                prob=1.0,
                magnitude=m,
                hparams={"img_mean": FILL, "magnitude_std": mstd, "interpolation": Image.BICUBIC},
            )
            out = op(img, rng)
            arr = np.asarray(out)
            assert out.mode == "RGB" and out.size == img.size
            assert arr.dtype == np.uint8 and arr.shape == (32, 40, 3)


def test_invert_and_rotate_match_direct_computation():
    img = _image()
    arr = np.asarray(img).astype(int)
    rng = np.random.default_rng(0)
    inv = ra.AugmentOp("Invert", prob=1.0, magnitude=9)(img, rng)
    np.testing.assert_array_equal(np.asarray(inv), 255 - arr)

    # Rotate 90 degrees (counter-clockwise, PIL convention) on a square image.
    sq = _image(24, 24)
    rot = ra.rotate(sq, 90, resample=Image.NEAREST, fillcolor=FILL)
    np.testing.assert_array_equal(np.asarray(rot), np.rot90(np.asarray(sq)))

    # Rotate op at magnitude 10 without noise: +-30 degrees, bicubic, mean fill.
    op = ra.AugmentOp(
        "Rotate", prob=1.0, magnitude=10, hparams={"img_mean": FILL, "interpolation": Image.BICUBIC}
    )
    seen = set()
    for seed in range(8):
        out = np.asarray(op(img, np.random.default_rng(seed)))
        cands = {a: np.asarray(img.rotate(a, resample=Image.BICUBIC, fillcolor=FILL)) for a in (30.0, -30.0)}
        match = [a for a, c in cands.items() if np.array_equal(out, c)]
        assert len(match) == 1
        seen.add(match[0])
        assert tuple(out[0, 0]) == FILL  # corner is filled with the mean pixel
    assert seen == {30.0, -30.0}


def test_level_semantics_increasing_ops():
    img = _image()
    arr = np.asarray(img).astype(int)
    rng = np.random.default_rng(0)
    # PosterizeIncreasing at m=10 keeps 0 bits -> black; at m=0 keeps 4 bits.
    out = ra.AugmentOp("PosterizeIncreasing", 1.0, 10)(img, rng)
    assert np.asarray(out).max() == 0
    out = ra.AugmentOp("PosterizeIncreasing", 1.0, 0)(img, rng)
    np.testing.assert_array_equal(np.asarray(out), arr & 0xF0)
    for bits in range(1, 8):  # same as PIL's posterize where PIL allows it
        np.testing.assert_array_equal(
            np.asarray(ra.posterize(img, bits)), np.asarray(ImageOps.posterize(img, bits))
        )
    # SolarizeIncreasing m=10 -> threshold 0 -> everything inverted.
    out = ra.AugmentOp("SolarizeIncreasing", 1.0, 10)(img, rng)
    np.testing.assert_array_equal(np.asarray(out), 255 - arr)
    # SolarizeAdd m=10 -> add 110 below 128.
    out = ra.AugmentOp("SolarizeAdd", 1.0, 10)(img, rng)
    np.testing.assert_array_equal(np.asarray(out), np.where(arr < 128, np.minimum(255, arr + 110), arr))
    # Enhance increasing: factor is 1 +- 0.9 * m / 10.
    for _ in range(4):
        (f,) = ra._enhance_increasing_level_to_arg(9, {}, rng)
        assert f == pytest.approx(1.81) or f == pytest.approx(0.19)


def test_rand_augment_deterministic_and_prob():
    aug = ra.rand_augment_transform(
        "rand-m9-mstd0.5-inc1", {"img_mean": FILL, "interpolation": Image.BICUBIC}
    )
    img = _image()
    a = [np.asarray(aug(img, np.random.default_rng(s))) for s in range(20)]
    b = [np.asarray(aug(img, np.random.default_rng(s))) for s in range(20)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # two ops at p=0.5 each -> the image is left unchanged 25% of the time
    unchanged = [np.array_equal(x, np.asarray(img)) for x in a]
    assert 0 < sum(unchanged) < 20


def test_rrc_params_and_fallback():
    rng = np.random.default_rng(0)
    for _ in range(200):
        i, j, h, w = T.rrc_params(50, 40, rng)
        assert 0 <= i <= 40 - h and 0 <= j <= 50 - w and h > 0 and w > 0
    # A 1000x10 strip cannot fit any (3/4..4/3) crop: center-crop fallback.
    i, j, h, w = T.rrc_params(1000, 10, rng)
    assert (h, w) == (10, int(round(10 * 4 / 3))) and i == 0
    assert j == (1000 - w) // 2
    out = T.random_resized_crop(_image(), 16, rng)
    assert out.size == (16, 16)


def test_random_erasing_fraction_and_noise():
    rng = np.random.default_rng(0)
    n, erased = 2000, 0
    for _ in range(n):
        x = np.zeros((24, 24, 3), np.float32)
        erased += T.random_erasing(x, rng, probability=0.25, mode="pixel")
    assert abs(erased / n - 0.25) < 0.035
    # pixel mode: erased region is per-pixel N(0, 1) noise
    vals = []
    for _ in range(200):
        x = np.zeros((24, 24, 3), np.float32)
        if T.random_erasing(x, rng, probability=1.0, mode="pixel"):
            region = x[np.any(x != 0, axis=-1)]
            assert region.shape[0] >= 0.02 * 24 * 24 * 0.5
            vals.append(x[x != 0])
    v = np.concatenate(vals)
    assert abs(v.mean()) < 0.02 and abs(v.std() - 1.0) < 0.02
    # 'rand' mode: one colour per channel
    x = np.zeros((24, 24, 3), np.float32)
    while not T.random_erasing(x, rng, probability=1.0, mode="rand"):
        pass
    region = x[np.any(x != 0, axis=-1)]
    assert np.allclose(region, region[0])


def test_eval_transform_shape_and_normalization():
    t = T.EvalTransform(32, crop_pct=0.875)
    assert t.resize_size == 36
    img = Image.new("RGB", (300, 200), (255, 0, 128))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = t({"image": buf.getvalue(), "label": 3, "name": "x.png"})
    assert out["image"].shape == (32, 32, 3) and out["image"].dtype == np.float32
    assert out["label"] == 3 and out["mask"] == 1.0
    expected = (np.array([255, 0, 128]) / 255.0 - T._MEAN) / T._STD
    np.testing.assert_allclose(out["image"], np.broadcast_to(expected, (32, 32, 3)), atol=1e-5)
    # Non-uniform image: resize short side to 36 (bicubic) + center crop 32.
    src = _image(60, 45)
    out = t.transform_image(src)
    ref = src.resize((48, 36), Image.BICUBIC)  # int(36 * 60 / 45) = 48
    ref = np.asarray(ref.crop((8, 2, 40, 34)), np.float32) / 255.0
    np.testing.assert_allclose(out, (ref - T._MEAN) / T._STD, atol=1e-5)
    # padding element / corrupt bytes -> zeros with mask 0
    pad = t({"pad": True})
    assert pad["mask"] == 0 and not pad["image"].any()
    bad = t({"image": b"not an image", "label": 2, "name": "bad.jpg"})
    assert bad["mask"] == 0 and bad["label"] == 2


def test_train_transform_deterministic_and_corrupt(caplog):
    t = T.TrainTransform(16, None)  # defaults: full recipe
    assert t.randaug is not None and t.color_jitter == 0.0  # CJ off with RA
    buf = io.BytesIO()
    _image().save(buf, format="JPEG")
    ex = {"image": buf.getvalue(), "label": 1, "name": "ok.jpg"}
    a = t(ex, np.random.default_rng(5))
    b = t(ex, np.random.default_rng(5))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["image"].shape == (16, 16, 3) and a["valid"] == 1.0
    truncated = buf.getvalue()[: len(buf.getvalue()) // 2]
    with caplog.at_level("WARNING"):
        c = t({"image": truncated, "label": 1, "name": "broken.jpg"}, np.random.default_rng(5))
    assert c["valid"] == 0.0 and not c["image"].any()
    assert "broken.jpg" in caplog.text
    # color jitter is used only when RandAugment is off (timm rule)
    t2 = T.TrainTransform(16, {"randaug": "", "color_jitter": 0.4})
    assert t2.randaug is None and t2.color_jitter == 0.4
