"""grain input pipelines for classification training and evaluation.

Both loaders are grain ``IterDataset``s built from ``grain.MapDataset``
(batching happens at the MapDataset level, *before* ``mp_prefetch``, so a batch
is always produced by one worker and the batches do not depend on
``num_workers``).  ``iter(loader)`` returns a grain ``DatasetIterator`` with
``get_state()``/``set_state()`` (a JSON-able dict); it is saved/restored with
orbax through ``grain.checkpoint.CheckpointSave``/``CheckpointRestore``.

Train stream for process p of P (seed s):
  source -> global shuffle, reshuffled every epoch (same permutation on all
  processes) -> repeat forever -> take every P-th element starting at p
  (disjoint per-process shards that together cover each epoch) -> per-example
  decode + augmentation (rng from (s, position in the global stream), so an
  example is augmented the same way whatever the number of processes) -> batch
  of global_batch_size // P -> corrupt-image substitution + the mixup/cutmix draw +
  label smoothing (rng from (s, p, batch index): mixup pairs rows within a process's
  batch, as the official per-GPU mixup does, so it depends on P).  Train images stay
  uint8; normalisation, erasing and mixing run on the device (:mod:`vheat_jax.cls.on_device`).
"""

from __future__ import annotations

import math
from typing import Any

import grain
import numpy as np

from vheat_jax.cls import mixup as mixup_lib
from vheat_jax.cls import sources as sources_lib
from vheat_jax.cls import transforms as tf_lib
from vheat_jax.train.streams import augmented_process_shard, eval_shard_bounds, to_iter_dataset

# Purpose tag of the mixup draw's seed (shuffling and augmentation use 1 and 2: vheat_jax.train.streams).
_MIX = 3


def _local_batch(global_batch: int, process_count: int, what: str) -> int:
    if process_count < 1:
        raise ValueError(f"process_count must be >= 1, got {process_count}")
    if global_batch <= 0 or global_batch % process_count:
        raise ValueError(
            f"{what}={global_batch} must be a positive multiple of process_count="
            f"{process_count} (each process loads {what} // process_count)."
        )
    return global_batch // process_count


def _check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")


def _check_classes(source, num_classes: int) -> None:
    classes = getattr(source, "classes", None)
    if classes is not None and len(classes) > num_classes:
        raise ValueError(f"Dataset has {len(classes)} classes but config.num_classes={num_classes}")


def make_mixup(config) -> mixup_lib.Mixup:
    aug = config.aug
    return mixup_lib.Mixup(
        mixup_alpha=aug.get("mixup", 0.0),
        cutmix_alpha=aug.get("cutmix", 0.0),
        prob=aug.get("mixup_prob", 1.0),
        switch_prob=aug.get("mixup_switch_prob", 0.5),
        label_smoothing=aug.get("label_smoothing", 0.0),
        num_classes=config.num_classes,
        mode=aug.get("mixup_mode", "batch"),
    )


def interleave_partners(batch_size: int) -> np.ndarray:
    """Row order [0, B-1, 1, B-2, ...]: timm's mixing partner of row i (row B-1-i) moves next to it."""
    order = np.empty(batch_size, np.int64)
    order[0::2] = np.arange(batch_size // 2)
    order[1::2] = np.arange(batch_size - 1, batch_size // 2 - 1, -1)
    return order


class TrainBatchTransform(grain.transforms.MapWithIndex):
    """Per-batch step: corrupt-image substitution, the mixup/cutmix draw, soft labels.

    Rows whose image could not be decoded (valid == 0) get a copy of a valid row
    of the same batch (image, label and erasing draw) so they do not pollute their
    mixup partner; they keep valid == 0, so the trainer can count them
    (``num_corrupt(batch)``) and mask them out of the loss.  With mixing on, the
    rows are interleaved (:func:`interleave_partners`) and carry the draw as
    ``mix_weight``/``mix_box``; the pixels are mixed on the device.
    """

    def __init__(self, mixup: mixup_lib.Mixup, seed: int, process_index: int):
        self.mixup = mixup
        self.seed = int(seed)
        self.process_index = int(process_index)

    def batch_rng(self, batch_index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.process_index, int(batch_index), _MIX])

    def map_with_index(self, index: int, element: dict) -> dict:
        batch = dict(element)
        valid = batch["valid"]
        bad = np.flatnonzero(valid == 0)
        if 0 < len(bad) < len(valid):
            good = np.flatnonzero(valid > 0)
            src = good[np.arange(len(bad)) % len(good)]
            for name, rows in batch.items():
                if name != "valid":
                    batch[name] = rows.copy()
                    batch[name][bad] = rows[src]
        images = batch["image"]
        targets, mix = self.mixup(batch.pop("label"), images.shape[1:3], self.batch_rng(index))
        batch["label"] = targets.astype(np.float32, copy=False)
        batch["valid"] = valid.astype(np.float32, copy=False)
        if not self.mixup.active:
            return batch
        size = images.shape[0]
        batch["mix_weight"] = np.full(size, mix.pixel_weight(), np.float32)
        batch["mix_box"] = np.tile(np.asarray(mix.box, np.int32), (size, 1))
        order = interleave_partners(size)
        return {name: rows[order] for name, rows in batch.items()}


def create_train_loader(
    config, *, process_index: int, process_count: int, seed: int | None = None
) -> grain.IterDataset:
    """Infinite, per-epoch-reshuffled training stream for this process.

    Yields {"image": uint8 (B, S, S, 3), "label": float32 (B, K) soft targets,
    "valid": float32 (B,)} with B = config.global_batch_size // process_count,
    plus the random-erasing and mixup draws when those are on
    (:func:`vheat_jax.cls.on_device.train_batch_spec`); ``on_device.train_images``
    turns a batch into the model's input.
    """
    _check_process(process_index, process_count)
    seed = int(config.seed if seed is None else seed)
    local_batch = _local_batch(config.global_batch_size, process_count, "global_batch_size")
    source = sources_lib.make_source(config, config.train_split)
    _check_classes(source, config.num_classes)
    mix = make_mixup(config)
    if mix.active and local_batch % 2:
        raise ValueError(f"mixup/cutmix needs an even local batch, got {local_batch}")

    ds = augmented_process_shard(source, tf_lib.TrainTransform(config.image_size, config.aug), seed=seed,
                                 process_index=process_index, process_count=process_count)
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = ds.map_with_index(TrainBatchTransform(mix, seed, process_index))
    return to_iter_dataset(ds, config.get("num_workers", 0))


class _EvalShard:
    """Process shard [start, end) of ``source`` padded to ``length`` items."""

    def __init__(self, source, start: int, end: int, length: int):
        self.source, self.start, self.end, self.length = source, start, end, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = self.start + int(i)
        if j < self.end:
            return self.source[j]
        return {"pad": True}

    def __repr__(self) -> str:
        return f"_EvalShard({self.source!r}, start={self.start}, end={self.end}, length={self.length})"


def num_eval_batches(num_examples: int, local_batch: int, process_count: int) -> int:
    """Batches every process yields (the largest shard, rounded up)."""
    return max(1, math.ceil(math.ceil(num_examples / process_count) / local_batch))


def create_eval_loader(config, *, process_index: int, process_count: int) -> grain.IterDataset:
    """One pass over the eval split, fixed order, padded per process.

    Yields {"image": float32 (B, S, S, 3), "label": int32 (B,), "mask": float32
    (B,)} with B = config.eval_batch_size // process_count; every process
    yields ``num_eval_batches(...)`` batches; mask is 0 for padding (and for
    undecodable images).
    """
    _check_process(process_index, process_count)
    local_batch = _local_batch(config.eval_batch_size, process_count, "eval_batch_size")
    source = sources_lib.make_source(config, config.eval_split)
    _check_classes(source, config.num_classes)
    n = len(source)
    start, end = eval_shard_bounds(n, process_index, process_count)
    length = num_eval_batches(n, local_batch, process_count) * local_batch
    ds = grain.MapDataset.source(_EvalShard(source, start, end, length))
    ds = ds.map(tf_lib.EvalTransform(config.image_size, config.aug.get("crop_pct", 0.875)))
    ds = ds.batch(local_batch, drop_remainder=True)
    return to_iter_dataset(ds, config.get("num_workers", 0))


def num_corrupt(batch) -> int:
    """Number of undecodable images in a train batch (rows with valid == 0)."""
    return int(np.sum(np.asarray(batch["valid"]) == 0))
