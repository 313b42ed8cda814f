"""grain input pipelines for segmentation: the training stream and the per-process evaluation images.

Training, for process p of P: global shuffle (reshuffled every epoch, the same on every
process) -> repeat -> every P-th example from p -> decode + :class:`SegTrainTransform`
(rng from (seed, position in the global stream), as the classification stream:
:func:`vheat_jax.train.streams.augmented_process_shard`) -> batches of ``global_batch_size // P``. Batching
happens before the worker processes, so batch i does not depend on ``num_workers``, and the
iterator state (``get_state``/``set_state``) is what the checkpoint stores.

Evaluation: each process takes a contiguous shard of the split and yields one image at a
time (images differ in size); the metric histograms are summed across processes afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import grain
import numpy as np

from vheat_jax.seg.sources import make_seg_source
from vheat_jax.seg.transforms import SegAugmentation, SegTrainTransform, load_example
from vheat_jax.train.streams import augmented_process_shard, eval_shard_bounds, to_iter_dataset


def augmentation(config) -> SegAugmentation:
    aug = config.aug
    return SegAugmentation(scale=tuple(aug.scale), ratio_range=tuple(aug.ratio_range), crop_size=tuple(aug.crop_size),
                           cat_max_ratio=aug.cat_max_ratio, flip_prob=aug.flip_prob, photometric=aug.photometric,
                           reduce_zero_label=config.reduce_zero_label)


def create_seg_train_loader(config, *, process_index: int, process_count: int) -> grain.IterDataset:
    """Infinite stream of ``{"image": f32 (B, h, w, 3), "label": i32 (B, h, w)}``, B = global batch / P."""
    if config.global_batch_size % process_count:
        raise ValueError(f"global_batch_size={config.global_batch_size} is not a multiple of the "
                         f"{process_count} processes")
    ds = augmented_process_shard(make_seg_source(config, config.train_split), SegTrainTransform(augmentation(config)),
                                 seed=config.seed, process_index=process_index, process_count=process_count)
    ds = ds.batch(config.global_batch_size // process_count, drop_remainder=True)
    return to_iter_dataset(ds, config.num_workers)


class _LoadEvalExample:
    def __init__(self, reduce_zero: bool):
        self.reduce_zero = reduce_zero

    def map(self, element: dict) -> dict:
        example = load_example(element, self.reduce_zero)
        return {"name": element.get("name", "?"), "example": example}

    __call__ = map


def eval_examples(config, *, process_index: int, process_count: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """This process's share of the evaluation split: ``(name, BGR uint8 image, uint8 label)``,
    labels after ``reduce_zero_label`` when configured. Undecodable examples are skipped (logged)."""
    source = make_seg_source(config, config.eval_split)
    start, end = eval_shard_bounds(len(source), process_index, process_count)
    ds = grain.MapDataset.source(source)[start:end].map(_LoadEvalExample(config.reduce_zero_label))
    for item in ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)):
        if item["example"] is not None:
            yield item["name"], *item["example"]
