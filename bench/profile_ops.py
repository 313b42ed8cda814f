#!/usr/bin/env python
"""Where the time of a vHeat forward or training step goes, per XLA op, from a profiler trace.

    python bench/profile_ops.py --what infer     # eval.py's jitted forward (inference form, its XLA flags)
    python bench/profile_ops.py --what infer --xla-defaults   # the same under XLA:CPU's default fusion
    python bench/profile_ops.py --what train     # the trainer's jitted step (as bench/train_step.py)

Traces a few iterations with ``jax.profiler`` (``--xla_cpu_enable_xprof_traceme``
so XLA:CPU records every op), reads the trace back with jaxlib's profile-data
reader, and sums the ops' durations per (fusion kind, the model path in the op's
metadata). Prints JSON: wall time per iteration, the sum of op times, and the top
groups. On 2 cores ops may overlap, so the sum can exceed the wall time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import tempfile
import time
from pathlib import Path

from vheat_jax import runtime


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", choices=("infer", "train"), default="infer")
    parser.add_argument("--model", default="vheat_tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--xla-defaults", action="store_true",
                        help="infer: leave out eval.py's XLA flags (vheat_jax.runtime.INFERENCE_XLA_FLAGS)")
    return parser.parse_args()


def build_infer(args):
    import jax

    from vheat_jax.cls.pretrained import arch_of
    from vheat_jax.forms import to_inference_form
    from vheat_jax.variants import create_model

    model = create_model(args.model, img_size=args.image_size)
    images = jax.random.normal(jax.random.key(0), (args.batch, args.image_size, args.image_size, 3))
    params = jax.jit(model.init)(jax.random.key(1), images[:1])["params"]
    arch, params = to_inference_form(params, arch_of(model))
    infer_model = arch.build()
    forward = jax.jit(lambda p, x: infer_model.apply({"params": p}, x))
    compiled = forward.lower(params, images).compile()

    def run():
        jax.block_until_ready(compiled(params, images))

    return run, compiled.as_text()


def build_train(args):
    import jax
    from train_step import build_step  # bench/, on sys.path when run as a script

    _, step, state, batch = build_step(args.model, args.image_size, args.batch)
    holder = {"state": state}
    hlo = step.lower(state, batch).compile().as_text()

    def run():
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready(metrics)

    return run, hlo


def op_metadata(hlo_text: str) -> dict[str, str]:
    """Instruction name -> model path of its ``op_name`` metadata (numbers folded to *)."""
    paths = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]+)\"", line)
        if match:
            parts = [p for p in match.group(2).split("/") if p]
            paths[match.group(1)] = re.sub(r"_\d+", "_*", "/".join(parts[-3:]))
    return paths


def op_times(trace_dir: str) -> collections.Counter:
    from jax._src.lib import _profile_data  # jaxlib's reader of the xplane protobuf

    path = sorted(Path(trace_dir).rglob("*.xplane.pb"))[-1]
    times = collections.Counter()
    for plane in _profile_data.ProfileData.from_file(str(path)).planes:
        for line in plane.lines:
            if "python" in line.name:
                continue
            for event in line.events:
                if not any(skip in event.name for skip in ("ThunkExecutor", "Await", "$", "end:")):
                    times[event.name] += event.duration_ns
    return times


def main() -> None:
    runtime.reexec_with_huge_pages()  # as the entry points run
    args = parse_args()
    if args.what == "infer" and not args.xla_defaults:
        runtime.add_xla_flags(runtime.INFERENCE_XLA_FLAGS)
    runtime.add_xla_flags(("--xla_cpu_enable_xprof_traceme=true",))
    import jax

    run, hlo = (build_infer if args.what == "infer" else build_train)(args)
    for _ in range(2):
        run()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(args.iters):
            run()
        jax.profiler.stop_trace()
        wall_ms = (time.perf_counter() - start) / args.iters * 1e3
        times = op_times(trace_dir)
    paths = op_metadata(hlo)
    groups = collections.Counter()
    for name, ns in times.items():
        groups[f"{name.split('.')[0]} | {paths.get(name, '')}"] += ns / args.iters / 1e6
    print(json.dumps({
        "what": args.what, "model": args.model, "batch": args.batch, "image_size": args.image_size,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "wall_ms_per_iter_while_tracing": round(wall_ms, 1),
        "sum_of_op_ms_per_iter": round(sum(times.values()) / args.iters / 1e6, 1),
        "top_groups_ms": {key: round(ms, 2) for key, ms in groups.most_common(args.top)},
    }, indent=1))


if __name__ == "__main__":
    main()
