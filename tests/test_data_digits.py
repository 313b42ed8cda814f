"""The embedded scikit-learn digits dataset, written as an image folder."""

import json

import ml_collections
import numpy as np
import pytest
from sklearn.datasets import load_digits

from vheat_jax.cls import data as pipeline
from vheat_jax.cls import digits
from vheat_jax.cls.transforms import to_normalized_array


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return digits.ensure_digits_image_folder(tmp_path_factory.mktemp("d") / "digits")


def _config(root, **kw):
    aug = ml_collections.ConfigDict(
        dict(
            random_resized_crop=False,
            hflip=False,
            randaug="",
            color_jitter=0.0,
            reprob=0.0,
            remode="pixel",
            mixup=0.0,
            cutmix=0.0,
            mixup_prob=1.0,
            mixup_switch_prob=0.5,
            mixup_mode="batch",
            label_smoothing=0.0,
            crop_pct=1.0,
        )
    )
    c = ml_collections.ConfigDict(
        dict(
            dataset="digits",
            data_dir=str(root),
            tfds_name="",
            train_split="train",
            eval_split="val",
            num_classes=10,
            image_size=32,
            global_batch_size=16,
            eval_batch_size=100,
            num_workers=0,
            seed=0,
            aug=aug,
        )
    )
    c.update(kw)
    return c


def test_folder_layout_and_reuse(root):
    train = sorted(root.glob("train/*/*.png"))
    val = sorted(root.glob("val/*/*.png"))
    assert len(train) == 1497 and len(val) == 300
    assert len(train) + len(val) == 1797
    assert sorted(p.name for p in (root / "train").iterdir()) == [str(d) for d in range(10)]
    ids = {int(p.stem) for p in train} | {int(p.stem) for p in val}
    assert ids == set(range(1797))  # each sklearn row exactly once
    y = load_digits().target
    counts = np.bincount(y[[int(p.stem) for p in val]], minlength=10)
    assert counts.min() >= 28 and counts.max() <= 32  # stratified
    marker = root / digits.MARKER
    assert json.loads(marker.read_text())["train"] == 1497
    mtime = marker.stat().st_mtime_ns
    assert digits.ensure_digits_image_folder(root) == root
    assert marker.stat().st_mtime_ns == mtime  # reused, not rewritten
    assert not list(root.parent.glob(".digits.tmp-*"))  # temp dir cleaned up


def test_eval_loader_matches_sklearn(root):
    d = load_digits()
    _, val_idx = digits.digits_split(d.target)
    order = sorted(val_idx, key=lambda i: (d.target[i], i))  # folder order
    batches = list(pipeline.create_eval_loader(_config(root), process_index=0, process_count=1))
    assert len(batches) == 3
    labels = np.concatenate([b["label"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])
    assert mask.sum() == 300
    np.testing.assert_array_equal(labels, d.target[order])
    for k in (0, 57, 299):
        expected = to_normalized_array(digits.digit_to_rgb(d.images[order[k]]))
        np.testing.assert_allclose(images[k], expected, atol=1e-6)


def test_train_loader_labels(root):
    d = load_digits()
    all_imgs = np.stack([np.asarray(digits.digit_to_rgb(x)) for x in d.images])
    it = iter(pipeline.create_train_loader(_config(root), process_index=0, process_count=1, seed=0))
    b = next(it)
    assert b["image"].shape == (16, 32, 32, 3) and b["valid"].all()
    for r in range(4):
        match = np.flatnonzero(np.all(all_imgs == b["image"][r], axis=(1, 2, 3)))
        assert len(match) >= 1
        assert b["label"][r].argmax() == d.target[match[0]]
        assert b["label"][r].max() == 1.0
