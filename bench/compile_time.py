#!/usr/bin/env python
"""Compile time of the trainer's train and eval steps: unrolled vs scanned stages, cold vs from the cache.

    python bench/compile_time.py --out bench_out/compile_time.json                  # vHeat-T and -S, twice
    python bench/compile_time.py --variants vheat_base --repeats 1 --dtype bfloat16 --out B.json
    python bench/compile_time.py --variants vheat_tiny --repeats 1 --dtype bfloat16 --batch 128 \
        --stages unrolled --xla-flags=--xla_gpu_autotune_level=0    # a compiler setting, on a GPU

Every measurement is a fresh process (nothing compiled in memory): the trainer's jitted train step
(``vheat_jax.cls.training``, the full recipe: augmentation finished on the device, clipping, AdamW, EMA)
and eval step (raw and EMA weights) are lowered and compiled for a batch at 224 px, once with an
empty persistent compilation cache (cold) and once more from the cache that run wrote (warm); the
train step then runs a few times for its step time. Scanned and unrolled runs alternate, so the
machine's drift falls on both; ``--repeats`` gives the range. ``--xla-flags`` is given to every
child as XLA_FLAGS (and recorded), so compiler settings that trade compile time for step time can be
measured side by side, one run each.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(model_name: str, scan_blocks: bool, dtype: str, batch: int, steps: int) -> dict:
    """One process's figures (run with the persistent cache already configured)."""
    import jax
    import numpy as np

    sys.path.insert(0, str(ROOT / "bench"))
    from train_step import build_step  # noqa: PLC0415 - the bench's own helper

    from vheat_jax.cls.training import jit_eval_step  # noqa: PLC0415
    from vheat_jax.train import sharding  # noqa: PLC0415

    model, step, state, batch_arrays = build_step(model_name, 224, batch, dtype=dtype, scan_blocks=scan_blocks)
    result = {}
    start = time.perf_counter()
    lowered = step.lower(state, batch_arrays)
    result["train_lower_s"] = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    result["train_compile_s"] = time.perf_counter() - start

    mesh = sharding.make_mesh(jax.devices()[:1])
    eval_step = jit_eval_step(model, mesh, sharding.replicated(mesh))
    images = np.zeros((batch, 224, 224, 3), np.float32)
    eval_batch = {"image": images, "label": np.zeros(batch, np.int32), "mask": np.ones(batch, np.float32)}
    start = time.perf_counter()
    eval_lowered = eval_step.lower(state.params, state.ema_params, eval_batch)
    result["eval_lower_s"] = time.perf_counter() - start
    start = time.perf_counter()
    eval_lowered.compile()
    result["eval_compile_s"] = time.perf_counter() - start

    times = []
    for _ in range(steps + 1):  # the first call is a warm-up
        start = time.perf_counter()
        state, metrics = compiled(state, batch_arrays)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    result["train_step_s"] = statistics.median(times[1:])
    return result


def run_one(model_name: str, scan_blocks: bool, args, cache: str) -> dict:
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
    if args.xla_flags:
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
    command = [sys.executable, __file__, "--one", model_name, "--scan" if scan_blocks else "--no-scan",
               "--dtype", args.dtype, "--batch", str(args.batch), "--steps", str(args.steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "runs": [round(v, 2) for v in values]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="vheat_tiny,vheat_small")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed train steps per process (median)")
    parser.add_argument("--stages", default="unrolled,scanned", help="unrolled, scanned or both (comma-separated)")
    parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS in every measuring process")
    parser.add_argument("--out", help="JSON file to write (also printed)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--scan", dest="scan", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-scan", dest="scan", action="store_false", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.scan, args.dtype, args.batch, args.steps)))
        return 0

    import jax  # only for the device's name

    modes = {"unrolled": False, "scanned": True}
    scan_settings = [modes[name] for name in args.stages.split(",")]
    rows = []
    for model_name in args.variants.split(","):
        figures = {scan_blocks: {} for scan_blocks in scan_settings}
        for _ in range(args.repeats):
            for scan_blocks in scan_settings:
                with tempfile.TemporaryDirectory() as cache:
                    for when in ("cold", "warm"):
                        for key, value in run_one(model_name, scan_blocks, args, cache).items():
                            figures[scan_blocks].setdefault(f"{when}_{key}", []).append(value)
        for scan_blocks, values in figures.items():
            rows.append({"model": model_name, "scan_blocks": scan_blocks,
                         **{key: summary(v) for key, v in sorted(values.items())}})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report = {"date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
              "command": " ".join(sys.argv), "dtype": args.dtype, "batch": args.batch,
              "xla_flags": args.xla_flags, "rows": rows}
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
