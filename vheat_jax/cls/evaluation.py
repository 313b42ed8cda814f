"""Evaluation of trained or converted vHeat classifiers: accuracy and throughput.

Weights come from a trainer workdir (``WORKDIR/checkpoints``, raw or EMA params
of the latest step), a directory or ``.msgpack`` written by ``convert_torch.py``,
or an official ``.pth`` converted on the fly. Accuracy uses the trainer's eval
pipeline (short side to size/crop_pct, bicubic, center crop, ImageNet mean/std)
over all local devices, padded batches with masks so every host runs the same
number of steps.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vheat_jax import paths
from vheat_jax.arch import Arch
from vheat_jax.benchmark import time_jitted
from vheat_jax.cls.data import create_eval_loader, num_eval_batches
from vheat_jax.cls.pretrained import arch_of
from vheat_jax.cls.sources import make_source
from vheat_jax.cls.task import data_config
from vheat_jax.cls.training import build_model, prediction_sums
from vheat_jax.convert import load_any
from vheat_jax.flops import model_macs
from vheat_jax.forms import to_inference_form
from vheat_jax.train import sharding
from vheat_jax.train.checkpointing import restore_latest
from vheat_jax.train.streams import iterating


def load_for_eval(checkpoint: str, config, *, ema: bool, post_norm: bool | None = None) -> tuple[Arch, dict, str]:
    """``(arch, params, description)`` from any supported checkpoint."""
    paths.check_supported(checkpoint, "--checkpoint")
    path = paths.as_path(checkpoint)
    if (path / "checkpoints").is_dir():
        step, state = restore_latest(path)
        params = state["ema_params" if ema else "params"]
        return arch_of(build_model(config)), params, f"{path} step {step} ({'EMA' if ema else 'raw'} params)"
    arch, params = load_any(path, ema=ema, post_norm=post_norm)
    if arch.dense:
        raise ValueError(f"{path} is a dense-prediction backbone (no classifier); eval.py needs a classifier")
    return arch, params, f"{path} ({'model_ema' if ema else 'model'})"


def random_init(config) -> tuple[Arch, dict, str]:
    """Randomly initialised weights of the config's model (for throughput only)."""
    model = build_model(config)
    size = config.image_size
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
    return arch_of(model), params, f"random init of {config.model.name}"


def prepare_model(arch: Arch, params: dict, *, form: str, img_size: int, dtype) -> tuple[Any, dict]:
    """The module and parameters to run: inference form (default) or training form, at ``img_size``."""
    if form == "infer" and not arch.infer_mode:
        arch, params = to_inference_form(params, arch, img_size=img_size)
    elif form == "train" and arch.infer_mode:
        raise ValueError("these weights are in inference form (k_exp only); the training form needs "
                         "the frequency embeddings: use --form=infer or a training-form checkpoint")
    return arch.build(dtype=dtype), params


def accuracy(model, params: dict, config, workdir: Path, *, log_every: int = 20) -> dict[str, float]:
    """Top-1 / top-5 (percent) over the configured eval split, on all local devices."""
    mesh = sharding.make_mesh()
    data_cfg = data_config(config, workdir)

    @jax.jit
    def batch_sums(params, batch):
        sums = prediction_sums(model, params, batch)
        return jnp.stack([sums["top1"], sums["top5"], jnp.sum(batch["mask"])])

    params = jax.device_put(params, sharding.replicated(mesh))
    num_examples = len(make_source(data_cfg, data_cfg.eval_split))
    local_batch = data_cfg.eval_batch_size // jax.process_count()
    total_batches = num_eval_batches(num_examples, local_batch, jax.process_count())
    loader = create_eval_loader(data_cfg, process_index=jax.process_index(), process_count=jax.process_count())
    totals, start = np.zeros(3), time.perf_counter()
    with iterating(loader) as batches:
        for index, local in enumerate(batches, 1):
            totals += np.asarray(batch_sums(params, sharding.global_batch(local, mesh)))
            if index % log_every == 0 or index == total_batches:
                elapsed = time.perf_counter() - start
                logging.info("eval %d/%d batches | %.1f images/s | ETA %.0fs", index, total_batches,
                             index * data_cfg.eval_batch_size / elapsed, elapsed / index * (total_batches - index))
    count = max(totals[2], 1.0)
    return {"top1": 100.0 * totals[0] / count, "top5": 100.0 * totals[1] / count, "images": int(totals[2])}


def model_cost(model, params: dict, img_size: int) -> dict[str, float]:
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.float32), params)
    return {"params": int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params))),
            "gmacs": model_macs(model, shapes, img_hw=(img_size, img_size)) / 1e9}


def throughput(model, params: dict, *, batch: int, img_size: int, warmup: int, iters: int) -> dict[str, Any]:
    """The official throughput protocol on a fixed random batch: images/s of the jitted forward."""
    images = jax.random.normal(jax.random.key(0), (batch, img_size, img_size, 3), jnp.float32)
    params = jax.device_put(params)
    timing = time_jitted(lambda p, x: model.apply({"params": p}, x), params, images, warmup=warmup, iters=iters)
    return {"images_per_s": batch / timing["median_s"], "latency_ms_per_batch": 1e3 * timing["median_s"],
            "compile_s": timing["compile_s"], "compiled_memory": timing["compiled_memory"],
            "device_peak_bytes": timing["device_peak_bytes"], "iters": iters, "warmup": warmup}
