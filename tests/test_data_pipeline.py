"""grain train/eval loaders on real image files (folders and a tiny TFDS set)."""

import io
import logging
import os

import grain
import ml_collections
import numpy as np
import pytest
from PIL import Image

from vheat_jax.cls import data as pipeline
from vheat_jax.cls import on_device
from vheat_jax.cls.sources import ImageFolderSource

CLASSES = ("b_cat", "a_dog", "c_fox")  # deliberately unsorted
PER_CLASS = 4
CORRUPT = "a_dog/zz_corrupt.JPEG"


def _jpeg_bytes(seed, w=40, h=36):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write_folder(root, classes, per_class, splits=("train", "val"), corrupt=None):
    k = 0
    for split in splits:
        for c in classes:
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(per_class):
                ext = (".JPEG", ".jpg", ".jpeg")[i % 3]
                (root / split / c / f"img_{i:02d}{ext}").write_bytes(_jpeg_bytes(k))
                k += 1
        if corrupt:
            data = _jpeg_bytes(999)
            (root / split / corrupt).write_bytes(data[: len(data) // 3])  # truncated
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("imgs"), CLASSES, PER_CLASS, corrupt=CORRUPT)


@pytest.fixture(scope="module")
def id_folder(tmp_path_factory):
    """12 classes x 1 image: the label identifies the example."""
    return _write_folder(
        tmp_path_factory.mktemp("ids"), [f"k{i:02d}" for i in range(12)], 1, splits=("train",)
    )


def _config(
    data_dir,
    *,
    num_classes=3,
    image_size=16,
    batch=4,
    eval_batch=4,
    workers=0,
    full_aug=True,
    seed=0,
    **aug_overrides,
):
    aug = dict(
        random_resized_crop=True,
        hflip=True,
        randaug="rand-m9-mstd0.5-inc1",
        color_jitter=0.4,
        reprob=0.25,
        remode="pixel",
        mixup=0.8,
        cutmix=1.0,
        mixup_prob=1.0,
        mixup_switch_prob=0.5,
        mixup_mode="batch",
        label_smoothing=0.1,
        crop_pct=0.875,
    )
    if not full_aug:
        aug.update(
            random_resized_crop=False,
            hflip=False,
            randaug="",
            color_jitter=0.0,
            reprob=0.0,
            mixup=0.0,
            cutmix=0.0,
            label_smoothing=0.0,
        )
    aug.update(aug_overrides)
    return ml_collections.ConfigDict(
        dict(
            dataset="imagefolder",
            data_dir=str(data_dir),
            tfds_name="imagenet2012",
            train_split="train",
            eval_split="val",
            num_classes=num_classes,
            image_size=image_size,
            global_batch_size=batch,
            eval_batch_size=eval_batch,
            num_workers=workers,
            seed=seed,
            aug=ml_collections.ConfigDict(aug),
        )
    )


def _take(loader, n, state=None):
    it = iter(loader)
    if state is not None:
        it.set_state(state)
    out = [next(it) for _ in range(n)]
    return it, out


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_folder_source_sorted_classes(folder):
    src = ImageFolderSource(folder, "train")
    assert src.classes == sorted(CLASSES)
    assert len(src) == 3 * PER_CLASS + 1
    names = [f.split("/")[1] for f in src.files[:5]]
    assert names == sorted(names)
    ex = src[0]
    assert ex["label"] == 0 and isinstance(ex["image"], bytes)
    assert ex["name"].endswith("a_dog/img_00.JPEG")
    assert src.labels == [0] * 5 + [1] * 4 + [2] * 4


def test_train_batches_and_corrupt_image_counted(folder, caplog):
    cfg = _config(folder)
    loader = pipeline.create_train_loader(cfg, process_index=0, process_count=1, seed=0)
    # 7 batches of 4 = 28 > 2 epochs of 13: the corrupt file is drawn >= twice.
    with caplog.at_level(logging.WARNING):
        _, batches = _take(loader, 7)
    n_bad = 0
    spec = on_device.train_batch_spec(4, 16, 3, erase=True, mix=True)
    for b in batches:
        assert {name: (v.shape, v.dtype) for name, v in b.items()} == spec
        np.testing.assert_allclose(b["label"].sum(1), 1.0, atol=1e-6)
        # one mixing draw per batch, the same on every row
        assert (b["mix_weight"] == b["mix_weight"][0]).all() and (b["mix_box"] == b["mix_box"][0]).all()
        n_bad += pipeline.num_corrupt(b)
    assert n_bad >= 2
    assert "zz_corrupt.JPEG" in caplog.text


def test_corrupt_rows_are_substituted_without_mixup(folder):
    cfg = _config(folder, full_aug=False)
    _, batches = _take(pipeline.create_train_loader(cfg, process_index=0, process_count=1, seed=0), 7)
    seen = 0
    for b in batches:
        for r in np.flatnonzero(b["valid"] == 0):
            others = [i for i in range(4) if b["valid"][i] == 1]
            assert any(
                np.array_equal(b["image"][r], b["image"][i]) and np.array_equal(b["label"][r], b["label"][i])
                for i in others
            )
            seen += 1
        # no smoothing and no mixup: plain one-hot labels
        assert set(np.unique(b["label"])) <= {0.0, 1.0}
    assert seen >= 2


def test_same_seed_same_batches_different_seed_differs(folder):
    cfg = _config(folder)
    mk = lambda s: pipeline.create_train_loader(cfg, process_index=0, process_count=1, seed=s)
    _, a = _take(mk(0), 3)
    _, b = _take(mk(0), 3)
    _, c = _take(mk(1), 3)
    _assert_same(a, b)
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_process_shards_disjoint_and_covering_and_reshuffled(id_folder):
    cfg = _config(id_folder, num_classes=12, batch=6, full_aug=False)
    per_proc = []
    for p in range(2):
        _, bs = _take(pipeline.create_train_loader(cfg, process_index=p, process_count=2, seed=3), 4)
        ids = [int(i) for b in bs for i in b["label"].argmax(1)]
        assert all(b["image"].shape[0] == 3 for b in bs)  # local batch = 6 // 2
        per_proc.append(ids)
    epoch0 = [per_proc[p][:6] for p in range(2)]
    epoch1 = [per_proc[p][6:] for p in range(2)]
    for ep in (epoch0, epoch1):
        assert set(ep[0]).isdisjoint(ep[1])
        assert sorted(ep[0] + ep[1]) == list(range(12))
    assert epoch0 != epoch1  # reshuffled every epoch
    with pytest.raises(ValueError, match="multiple of process_count"):
        pipeline.create_train_loader(
            _config(id_folder, num_classes=12, batch=5), process_index=0, process_count=2, seed=0
        )


def test_augmentation_does_not_depend_on_process_count(id_folder):
    """Each example is augmented by its position in the global stream: 2 processes see what 1 process sees
    (pixels, label and random-erasing draw)."""
    cfg = _config(id_folder, num_classes=12, batch=6, mixup=0.0, cutmix=0.0, label_smoothing=0.0)
    _, single = _take(pipeline.create_train_loader(cfg, process_index=0, process_count=1, seed=5), 4)
    assert set(single[0]) == {"image", "label", "valid", "erase_box", "erase_seed"}
    single_rows = {name: np.concatenate([b[name] for b in single]) for name in single[0]}  # positions 0..23
    for p in range(2):
        _, local = _take(pipeline.create_train_loader(cfg, process_index=p, process_count=2, seed=5), 4)
        positions = np.arange(12) * 2 + p  # local index i is global position 2 i + p
        for name, rows in single_rows.items():
            np.testing.assert_array_equal(np.concatenate([b[name] for b in local]), rows[positions])
    assert not np.array_equal(single_rows["image"][0], single_rows["image"][12])  # the augmentation is random
    assert single_rows["erase_box"][:, 2].any()  # some examples are erased


def test_iterator_state_restore_and_orbax_roundtrip(folder, tmp_path):
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    cfg = _config(folder)
    mk = lambda: pipeline.create_train_loader(cfg, process_index=0, process_count=1, seed=7)
    it, _ = _take(mk(), 2)  # mid-epoch (8 of 13)
    state = it.get_state()
    mngr = ocp.CheckpointManager(tmp_path / "ckpt")
    mngr.save(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    ref = [next(it) for _ in range(3)]  # crosses the epoch boundary

    _, got = _take(mk(), 3, state=state)  # get_state/set_state in a fresh loader
    _assert_same(ref, got)

    fresh = iter(mk())
    mngr2 = ocp.CheckpointManager(tmp_path / "ckpt")
    mngr2.restore(
        mngr2.latest_step(), args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh))
    )
    _assert_same(ref, [next(fresh) for _ in range(3)])


def test_eval_padding_two_processes(folder):
    cfg = _config(folder, eval_batch=4)  # local eval batch 2
    n = 3 * PER_CLASS + 1  # 13, includes the corrupt file
    src = ImageFolderSource(folder, "val")
    per_proc = []
    for p in range(2):
        per_proc.append(list(pipeline.create_eval_loader(cfg, process_index=p, process_count=2)))
    assert len(per_proc[0]) == len(per_proc[1]) == pipeline.num_eval_batches(n, 2, 2) == 4
    masks = np.concatenate([b["mask"] for bs in per_proc for b in bs])
    assert masks.sum() == n - 1  # all real examples except the corrupt one
    labels, real = [], 0
    for bs in per_proc:
        for b in bs:
            assert b["image"].shape == (2, 16, 16, 3) and b["label"].dtype == np.int32
            assert b["mask"].dtype == np.float32
            assert not b["image"][b["mask"] == 0].any()
        lab = np.concatenate([b["label"] for b in bs])
        m = np.concatenate([b["mask"] for b in bs])
        real += int((m > 0).sum())
        labels.append(lab)
    # fixed order: process 0 holds [0, 6), process 1 holds [6, 13) of the source
    np.testing.assert_array_equal(labels[0][:6], src.labels[:6])
    np.testing.assert_array_equal(labels[1][:7], src.labels[6:])
    assert real == n - 1


def test_multiworker_matches_in_process(folder):
    cfg0 = _config(folder)
    cfg2 = _config(folder, workers=2)
    _, a = _take(pipeline.create_train_loader(cfg0, process_index=0, process_count=1, seed=0), 4)
    it2, b = _take(pipeline.create_train_loader(cfg2, process_index=0, process_count=1, seed=0), 3)
    _assert_same(a[:3], b)
    state = it2.get_state()
    it2.close()
    it3, c = _take(
        pipeline.create_train_loader(cfg2, process_index=0, process_count=1, seed=0), 1, state=state
    )
    it3.close()
    _assert_same(a[3:], c)


# --------------------------------------------------------------------------
# TFDS (array_record) source, built locally without TensorFlow.
# --------------------------------------------------------------------------

import tensorflow_datasets as tfds  # noqa: E402


class VheatTinyImages(tfds.core.GeneratorBasedBuilder):
    """5 train / 5 validation JPEGs, label = index % 3."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(5, 0), "validation": self._generate_examples(5, 100)}

    def _generate_examples(self, n, offset):
        for i in range(n):
            yield i, {"image": io.BytesIO(_jpeg_bytes(offset + i)), "label": i % 3}


def test_tfds_source_eval_and_train(tmp_path):
    builder = VheatTinyImages(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    cfg = _config(tmp_path, eval_batch=4)
    cfg.dataset, cfg.tfds_name, cfg.eval_split = "tfds", "vheat_tiny_images", "validation"
    raw = tfds.data_source("vheat_tiny_images", split="validation", data_dir=str(tmp_path))
    bs = list(pipeline.create_eval_loader(cfg, process_index=0, process_count=1))
    assert len(bs) == 2
    lab = np.concatenate([b["label"] for b in bs])
    mask = np.concatenate([b["mask"] for b in bs])
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(lab[:5], [raw[i]["label"] for i in range(5)])
    # the decoded-by-us image equals tfds' own numpy decoding, after eval resizing
    from vheat_jax.cls.transforms import EvalTransform  # pylint: disable=import-outside-toplevel

    ref = EvalTransform(16).transform_image(Image.fromarray(raw[0]["image"]))
    np.testing.assert_allclose(bs[0]["image"][0], ref, atol=1e-6)
    _, tb = _take(pipeline.create_train_loader(cfg, process_index=0, process_count=1, seed=0), 2)
    assert tb[0]["image"].shape == (4, 16, 16, 3) and tb[1]["valid"].all()
