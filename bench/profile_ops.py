#!/usr/bin/env python
"""Where the time of a vHeat forward or training step goes, per XLA op, from a profiler trace.

    python bench/profile_ops.py --what infer     # eval.py's jitted forward (inference form, its XLA flags)
    python bench/profile_ops.py --what infer --xla-defaults   # the same under XLA:CPU's default fusion
    python bench/profile_ops.py --what train     # the trainer's jitted step (as bench/train_step.py)
    python bench/profile_ops.py --what train --dtype bfloat16 --batch 128 --out profile.json   # on a GPU

Traces a few iterations with ``jax.profiler`` (``--xla_cpu_enable_xprof_traceme``
so XLA:CPU records every op), reads the trace back with jaxlib's profile-data
reader (the device's planes where there are any, else the host's), and sums the
ops' durations per (fusion kind, the model path in the op's metadata) and per part
of the model or step (``bench/tpu_cost.py``'s categories: HCO, decay, depthwise
conv, LayerNorm, MLP, the dense layers around the HCO, optimizer/EMA/loss/augmentation,
the compiler's copies), beside each part's memory ceiling: the bytes its ops move in the
compiled program at the device's measured copy rate. Prints JSON (and writes it with
``--out``, to compare a later run with): wall time per iteration, the sum of op times,
the categories, their ceilings and the top groups. On 2 cores ops may overlap, so the sum
can exceed the wall time.
"""

from __future__ import annotations

import argparse
import collections
import datetime
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
    parser.add_argument("--dtype", default="float32", help="compute dtype: float32 or bfloat16")
    parser.add_argument("--scan-blocks", action="store_true", help="each stage's blocks as one lax.scan")
    parser.add_argument("--hco-form", default="auto", help="the heat operator's form, or one per stage (a,b,c,d)")
    parser.add_argument("--out", help="also write the JSON here")
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
    infer_model = arch.build(dtype=jax.numpy.dtype(args.dtype), scan_blocks=args.scan_blocks, hco_form=args.hco_form)
    forward = jax.jit(lambda p, x: infer_model.apply({"params": p}, x))
    compiled = forward.lower(params, images).compile()

    def run():
        jax.block_until_ready(compiled(params, images))

    return run, compiled.as_text()


def build_train(args):
    import jax
    from train_step import build_step  # bench/, on sys.path when run as a script

    _, step, state, batch = build_step(args.model, args.image_size, args.batch, dtype=args.dtype,
                                       scan_blocks=args.scan_blocks, hco_form=args.hco_form)
    holder = {"state": state}
    compiled = step.lower(state, batch).compile()  # run this one: calling `step` would compile it again

    def run():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)

    return run, compiled.as_text()


def op_metadata(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (its ``op_name`` metadata, its opcode)."""
    ops = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(.*?op_name=\"([^\"]+)\"", line)
        if match:
            ops[match.group(1)] = (match.group(3), match.group(2))
    return ops


def short_path(op_name: str) -> str:
    """The last three parts of an ``op_name``, numbers folded to *."""
    parts = [p for p in op_name.split("/") if p]
    return re.sub(r"_\d+", "_*", "/".join(parts[-3:]))


# Lines of a device plane that span or re-label kernels instead of being kernels: summing them would count
# the same time twice (tsl/profiler/utils/xplane_schema's line names).
AGGREGATE_LINES = ("XLA Modules", "Steps", "Framework ", "TensorFlow ", "Source code", "Launch Stats", "_counters_",
                   "Async XLA Ops", "Sparse Core")


def _instruction(name: str) -> str:
    """Some planes name an op by its HLO text (``%fusion.3 = ...``): the instruction name alone."""
    return re.match(r"%?([^\s=]+)", name).group(1)


def device_op_times(plane) -> collections.Counter:
    """A GPU/TPU plane: the ``XLA Ops`` line where the profiler derived one, else every kernel stream, each
    kernel under its HLO instruction (its ``hlo_op`` stat; cuBLAS and Triton kernels have their own names)."""
    lines = [line for line in plane.lines if not line.name.startswith(AGGREGATE_LINES)]
    xla_ops = [line for line in lines if line.name == "XLA Ops"]
    times = collections.Counter()
    for line in xla_ops or lines:
        for event in line.events:
            stats = dict(stat for stat in event.stats if stat[0] is not None)
            times[_instruction(str(stats.get("hlo_op") or event.name))] += event.duration_ns
    return times


def host_op_times(planes) -> collections.Counter:
    """XLA:CPU's ops, traced on the host (``--xla_cpu_enable_xprof_traceme``)."""
    times = collections.Counter()
    for plane in planes:
        for line in plane.lines:
            if "python" in line.name:
                continue
            for event in line.events:
                if not any(skip in event.name for skip in ("ThunkExecutor", "Await", "$", "end:")):
                    times[_instruction(event.name)] += event.duration_ns
    return times


def op_times(planes) -> collections.Counter:
    """Op name -> traced nanoseconds: the devices' planes where there are any, else the host's."""
    devices = [plane for plane in planes if plane.name.startswith("/device:")]
    if not devices:
        return host_op_times(planes)
    return sum((device_op_times(plane) for plane in devices), collections.Counter())


def copy_rate_gb_s() -> float:
    """The device's copy rate (read + write of a 256 MiB array), GB/s: the scale of the memory ceiling."""
    import jax.numpy as jnp

    from vheat_jax.benchmark import time_jitted

    array = jnp.ones((64 * 2**20,), jnp.float32)
    return 2 * array.nbytes / time_jitted(lambda a: a * 2.0, array, warmup=2, iters=5)["median_s"] / 1e9


def read_planes(trace_dir: str) -> list:
    from jax._src.lib import _profile_data  # jaxlib's reader of the xplane protobuf

    path = sorted(Path(trace_dir).rglob("*.xplane.pb"))[-1]
    return list(_profile_data.ProfileData.from_file(str(path)).planes)


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
        times = op_times(read_planes(trace_dir))
    from tpu_cost import bytes_by_category, category  # bench/, on sys.path when run as a script

    rate = round(copy_rate_gb_s(), 2)  # as reported: the ceilings below are computed from this figure
    part_bytes = bytes_by_category(hlo)
    ops = op_metadata(hlo)
    groups, categories = collections.Counter(), collections.Counter()
    for name, ns in times.items():
        op_name, opcode = ops.get(name, ("", ""))
        groups[f"{name.split('.')[0]} | {short_path(op_name)}"] += ns / args.iters / 1e6
        categories[category(op_name, opcode) if op_name else "ops without metadata"] += ns / args.iters / 1e6
    report = {
        "date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
        "what": args.what, "model": args.model, "batch": args.batch, "image_size": args.image_size,
        "dtype": args.dtype, "scan_blocks": args.scan_blocks, "hco_form": args.hco_form,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "wall_ms_per_iter_while_tracing": round(wall_ms, 1),
        "sum_of_op_ms_per_iter": round(sum(times.values()) / args.iters / 1e6, 1),
        "categories_ms": {key: round(ms, 2) for key, ms in categories.most_common()},
        # The memory ceiling per part: the bytes its top-level ops read and write (compiled HLO; a scanned
        # stage's loop body counted once), at the copy rate measured here. ms / ceiling = how far from it.
        "copy_rate_gb_s": rate,
        "hbm_mb": {key: round(b / 1e6, 3) for key, b in part_bytes.items()},
        "memory_ceiling_ms": {key: round(b / rate / 1e6, 3) for key, b in part_bytes.items()},
        "top_groups_ms": {key: round(ms, 2) for key, ms in groups.most_common(args.top)},
    }
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
