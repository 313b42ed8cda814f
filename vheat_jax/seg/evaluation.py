"""mmseg-style evaluation of a model over a split, and loading weights to evaluate.

``evaluate`` runs :class:`~vheat_jax.seg.inference.Segmenter` (mmseg's test pipeline) on
this process's share of ``config.eval_split`` and sums the IoU histograms over
processes. ``load_for_evaluation`` reads either an mmseg checkpoint (``.pth``) or the
latest Orbax checkpoint of a training ``workdir``.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from vheat_jax.paths import as_path
from vheat_jax.seg import training
from vheat_jax.seg.convert import read_mmseg_checkpoint
from vheat_jax.seg.data import eval_examples
from vheat_jax.seg.inference import InferenceConfig, Segmenter
from vheat_jax.seg.metrics import IoUAccumulator
from vheat_jax.seg.model import UperNet
from vheat_jax.train.checkpointing import restore_latest


def inference_config(config) -> InferenceConfig:
    t = config.test
    return InferenceConfig(mode=t.mode, crop_size=tuple(t.crop_size), stride=tuple(t.stride),
                           scale=None if t.scale is None else tuple(t.scale))


def evaluate(segmenter: Segmenter, config, per_class: bool = False) -> dict:
    """aAcc / mIoU / mAcc (percent) over ``config.eval_split``, summed over processes."""
    accumulator = IoUAccumulator(config.num_classes)
    start, count = time.perf_counter(), 0
    for _, image, label in eval_examples(config, process_index=jax.process_index(),
                                         process_count=jax.process_count()):
        accumulator.add(segmenter.predict_bgr(image), label)
        count += 1
    results = accumulator.compute()
    if jax.process_count() > 1:
        count = int(np.sum(multihost_utils.process_allgather(np.array(count))))
    out = {"aAcc": results["aAcc"], "mIoU": results["mIoU"], "mAcc": results["mAcc"], "num_images": count,
           "seconds": time.perf_counter() - start}
    if per_class:
        out.update(IoU=results["IoU"].tolist(), Acc=results["Acc"].tolist())
    return out


def load_for_evaluation(config, checkpoint: str | Path) -> tuple[UperNet, dict]:
    """``(model, variables)`` from an mmseg ``.pth`` or from the latest checkpoint in a training workdir."""
    checkpoint = as_path(checkpoint)  # local or gs://
    if checkpoint.is_file():
        ckpt = read_mmseg_checkpoint(checkpoint, post_norm=config.init_post_norm)
        return ckpt.model, ckpt.variables
    cfg, model = training.build_model(config)
    *_, abstract = training.abstract_state(config, model, total_steps=1)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    step, state = restore_latest(checkpoint, jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract))
    logging.info("restored step %d from %s", step, checkpoint)
    return cfg.build(), {"params": state.params, "batch_stats": state.batch_stats}
