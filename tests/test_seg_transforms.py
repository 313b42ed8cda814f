"""The training pipeline's transforms (mmseg semantics) and the grain loader."""

import io

import ml_collections
import numpy as np
from PIL import Image

from vheat_jax.seg.data import create_seg_train_loader, eval_examples
from vheat_jax.seg.transforms import SegAugmentation, SegTrainTransform, pad_to, random_crop, random_resize


def png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_random_crop_redraws_crops_dominated_by_one_class():
    label = np.zeros((64, 256), np.uint8)
    label[:, 200:] = 1  # only about one crop in five holds both classes with the larger below 75%

    def balanced_fraction(cat_max_ratio):
        aug = SegAugmentation(crop_size=(64, 64), cat_max_ratio=cat_max_ratio)
        rng, balanced = np.random.default_rng(0), 0
        for _ in range(200):
            _, crop = random_crop(label, label, aug, rng)
            counts = np.bincount(crop.ravel(), minlength=2)
            balanced += counts.max() / counts.sum() < 0.75
        return balanced / 200

    assert balanced_fraction(1.0) < 0.3  # no redraws
    assert balanced_fraction(0.75) > 0.8  # up to 10 redraws: 1 - 0.8 ** 11 expected


def test_random_resize_keeps_ratio_within_scaled_bounds():
    image, label = np.zeros((100, 300, 3), np.uint8), np.zeros((100, 300), np.uint8)
    aug = SegAugmentation(scale=(2048, 512), ratio_range=(0.5, 2.0))
    for seed in range(5):
        rng = np.random.default_rng(seed)
        ratio = np.random.default_rng(seed).random() * 1.5 + 0.5
        out, out_label = random_resize(image, label, aug, rng)
        assert out.shape[:2] == out_label.shape
        assert max(out.shape[:2]) <= int(2048 * ratio) + 1 and min(out.shape[:2]) <= int(512 * ratio) + 1
        assert abs(out.shape[1] / out.shape[0] - 3) < 0.05


def test_padding_values():
    inputs, label = pad_to(np.ones((3, 2, 3), np.float32), np.zeros((3, 2), np.uint8), (4, 5))
    assert inputs.shape == (4, 5, 3) and label.shape == (4, 5)
    assert inputs[3:].max() == 0 and inputs[:, 2:].max() == 0 and (label[3:] == 255).all() and (label[:, 2:] == 255).all()


def test_train_transform_decodes_reduces_and_pads():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    raw = rng.integers(0, 4, (40, 50), dtype=np.uint8)
    element = {"image": png(image), "label": png(raw), "name": "x"}
    transform = SegTrainTransform(SegAugmentation(scale=(50, 40), ratio_range=(1.0, 1.0), crop_size=(48, 64)))
    out = transform.random_map(element, np.random.default_rng(1))
    assert out["image"].shape == (48, 64, 3) and out["image"].dtype == np.float32
    assert out["label"].shape == (48, 64) and out["label"].dtype == np.int32
    assert set(np.unique(out["label"])) <= {0, 1, 2, 255}  # raw 0 -> 255, 1..3 -> 0..2
    assert (out["label"][40:] == 255).all() and (out["label"][:, 50:] == 255).all()
    again = transform.random_map(element, np.random.default_rng(1))
    np.testing.assert_array_equal(out["image"], again["image"])
    broken = transform.random_map({"image": b"not an image", "label": b"", "name": "bad"}, np.random.default_rng(0))
    assert (broken["label"] == 255).all()


def test_loaders_on_the_synthetic_set():
    config = ml_collections.ConfigDict({
        "dataset": "synthetic", "synthetic": {"num_train": 16, "num_val": 3, "height": 48, "width": 64}, "train_split": "train",
        "eval_split": "val", "seed": 0, "global_batch_size": 4, "num_workers": 0, "reduce_zero_label": False,
        "aug": {"scale": (64, 48), "ratio_range": (0.5, 2.0), "crop_size": (32, 32), "cat_max_ratio": 0.75, "flip_prob": 0.5,
                 "photometric": True}})
    iterator = iter(create_seg_train_loader(config, process_index=0, process_count=1))
    batch = next(iterator)
    assert batch["image"].shape == (4, 32, 32, 3) and batch["label"].shape == (4, 32, 32)
    state = iterator.get_state()
    following = next(iterator)
    iterator.set_state(state)
    np.testing.assert_array_equal(next(iterator)["label"], following["label"])
    examples = list(eval_examples(config, process_index=0, process_count=1))
    assert len(examples) == 3 and examples[0][1].shape == (48, 64, 3) and examples[0][2].shape == (48, 64)
