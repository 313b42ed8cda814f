#!/usr/bin/env python
"""Training-step throughput of a vHeat variant: forward + backward + clipping + AdamW + EMA, one device.

    python bench/train_step.py                                   # vHeat-T, 224 px, batch 8, float32
    python bench/train_step.py --model vheat_base --batch 64 --dtype bfloat16

Prints JSON: images/s and seconds per step (median of the timed steps, each run
to completion), compile seconds, and the setup. The
step is the trainer's own jitted step (state donated), fed a fixed batch that
is already on the device, so this is the model+optimizer cost without input.
"""

import argparse
import json
import statistics
import time

import jax
import ml_collections
import numpy as np

from vheat_jax import runtime
from vheat_jax.cls import optim
from vheat_jax.cls.config import default_config
from vheat_jax.cls.training import StateFactory, build_model, jit_train_step, train_batch_spec
from vheat_jax.train import sharding


def synthetic_batch(config, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A training batch as the loader yields it (uint8 images; every row erased and mixed, the costliest case)."""
    s = config.image_size
    fill = {
        "label": lambda shape: np.full(shape, 1.0 / config.num_classes, np.float32),
        "valid": lambda shape: np.ones(shape, np.float32),
        "erase_box": lambda shape: np.tile(np.array([s // 4, s // 4, s // 2, s // 2], np.int32), (shape[0], 1)),
        "erase_seed": lambda shape: np.arange(shape[0], dtype=np.uint32),
        "mix_weight": lambda shape: np.full(shape, 0.5, np.float32),
        "mix_box": lambda shape: np.zeros(shape, np.int32),
    }
    return {name: rng.integers(0, 256, shape, np.uint8) if name == "image" else fill[name](shape)
            for name, (shape, _) in train_batch_spec(config, batch_size).items()}


def build_step(model_name: str, image_size: int, batch_size: int, *, dtype: str = "float32", remat: bool = False,
               hco_form: str = "auto", scan_blocks: bool = False):
    """``(model, jitted step, fresh state, device batch)``: the trainer's step on one device, a fixed batch."""
    config: ml_collections.ConfigDict = default_config()
    config.model.name = model_name
    config.image_size = image_size
    config.compute_dtype = dtype
    config.remat = remat
    config.model.hco_form = hco_form
    config.model.scan_blocks = scan_blocks
    model = build_model(config)
    tx, schedule = optim.create_optimizer(
        config.optimizer, global_batch_size=batch_size, warmup_steps=10, total_steps=1000
    )
    mesh = sharding.make_mesh(jax.devices()[:1])
    factory = StateFactory(model, tx, mesh, config)
    step = jit_train_step(config, model, tx, schedule, mesh, factory.shardings)
    rng = np.random.default_rng(0)
    batch = sharding.global_batch(synthetic_batch(config, batch_size, rng), mesh)
    return model, step, factory.fresh(), batch


def main() -> None:
    runtime.reexec_with_huge_pages()  # as train.py does
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vheat_tiny")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", help="compute dtype: float32, bfloat16 or auto")
    parser.add_argument("--steps", type=int, default=7, help="timed steps after one warm-up step (median reported)")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--hco-form", default="auto", help="heat operator layout (vheat_jax.heat.HCO_FORMS)")
    parser.add_argument("--scan-blocks", action="store_true",
                        help="each stage's blocks as one lax.scan (config.model.scan_blocks=True)")
    args = parser.parse_args()

    model, step, state, batch = build_step(args.model, args.image_size, args.batch, dtype=args.dtype,
                                           remat=args.remat, hco_form=args.hco_form, scan_blocks=args.scan_blocks)

    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    print(
        json.dumps(
            {
                "model": args.model,
                "image_size": args.image_size,
                "batch": args.batch,
                "compute_dtype": str(np.dtype(model.dtype)),
                "remat": args.remat,
                "hco_form": args.hco_form,
                "scan_blocks": args.scan_blocks,
                "device": jax.devices()[0].device_kind,
                "images_per_s": round(args.batch / step_s, 2),
                "step_s": round(step_s, 3),
                "first_step_s_incl_compile": round(compile_s, 1),
                "timed_steps": args.steps,
                "step_s_min": round(min(times), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
