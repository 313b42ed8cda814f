#!/usr/bin/env python
"""vHeat on TPUs by the TPU compiler's own cost model (libtpu, no TPU needed). JSON out.

    pip install -e ".[tpu-aot]"
    python bench/tpu_cost.py --out docs/tpu_cost.json
    python bench/tpu_cost.py --tables docs/tpu_cost.json   # the tables of docs/tpu_cost.md

For each chip (v3, v4, v5e) the program is compiled for *one* of its devices (libtpu's
topologies list v3 and v4 TensorCores, two per chip, and v5e chips): the trainer's train step
(bf16 compute, AdamW, EMA, on-device augmentation) for vHeat-T/S/B at 224 and vHeat-T at 512,
the same kind of step for the ViT-S/16 baseline of ``bench/scaling.py`` (whose real TPU speed
is published, to calibrate), and the HCO and depthwise-conv forms, forward + backward, at the
vHeat-T stage shapes. From each compiled program: XLA's ``flops`` and ``bytes accessed``; from
the optimized HLO, the HBM bytes each top-level operation moves (operands + result, arrays the
compiler placed in on-chip memory left out), grouped by the part of the model its ``op_name``
names; and a roofline time ``max(flops / peak, HBM bytes / HBM bandwidth)`` from the published
per-chip peaks. (XLA's ``bytes accessed`` also counts on-chip traffic: on v5e it is more than
twice the HBM bytes.)  With ``--hlo-dir`` every program's HLO is kept, and ``--reread`` recomputes
a report's HLO-derived figures from it without compiling again.

**This is a model of the chip, not a measurement.** XLA's byte count includes operand
re-reads of its tiling, and a real step also pays for what the model ignores (latency,
imperfect overlap, the host); the calibration row says how far the model is from a published
measurement.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import topologies

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vit_baseline import ViT  # noqa: E402

from vheat_jax import heat  # noqa: E402
from vheat_jax.heat import HCO_FORMS, heat_diffuse, select_form  # noqa: E402
from vheat_jax.ops import depthwise_conv3x3  # noqa: E402

# Published per-chip figures (cloud.google.com/tpu/docs/system-architecture-tpu-vm): bf16 peak
# and HBM bandwidth; per device = per chip / devices per chip.
CHIPS = {
    "v3": {"topology": "v3:2x2", "devices_per_chip": 2, "chip_bf16_tflops": 123.0, "chip_hbm_gbs": 900.0},
    "v4": {"topology": "v4:2x2x1", "devices_per_chip": 2, "chip_bf16_tflops": 275.0, "chip_hbm_gbs": 1200.0},
    "v5e": {"topology": "v5e:2x2", "devices_per_chip": 1, "chip_bf16_tflops": 197.0, "chip_hbm_gbs": 819.0},
}
# big_vision's ViT-S/16 ImageNet training (README, "about 1.1-1.3k img/s per v3 chip"): the
# calibration point for the model (per chip, so two v3 devices).
PUBLISHED_VIT_S16_V3_IMG_S_PER_CHIP = (1100.0, 1300.0)
STAGES_T = ((56, 96), (28, 192), (14, 384), (7, 768))  # vHeat-T at 224: (resolution, channels)

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# An array shape with its layout: f32[64,56,56,96]{3,2,1,0:T(8,128)S(1)}. A layout without S(n) is
# in HBM (memory space 0); S(1) is VMEM and S(2) SMEM (openxla.org/xla/shapes), and S(3), which
# only v4's programs use, as the destination of the compiler's prefetches, is taken to be v4's
# on-chip CMEM (the public docs do not name it).
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128)\[([\d,]*)\](\{[^}]*\})?")
_ON_CHIP = re.compile(r"S\([1-9]\d*\)")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$")
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call",
               "after-all", "partition-id", "replica-id"}


def hbm_bytes(shape_text: str) -> int:
    """Bytes of the HBM-resident arrays in an HLO shape (tuples summed; on-chip arrays skipped)."""
    total = 0
    for dtype, dims, layout in _ARRAY.findall(shape_text):
        if not _ON_CHIP.search(layout or ""):
            total += _DTYPE_BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    return total


def category(op_name: str, opcode: str = "") -> str:
    """The part of the model (or of the step) an HLO op's ``op_name`` metadata names."""
    name = op_name.lower()
    if "vheat" not in name and "vit" not in name:
        if opcode.endswith("-start") or opcode in ("copy", "custom-call"):
            return "compiler's copies and slices (no model op named)"
        return "optimizer, EMA, loss, augmentation"
    for key, label in (("dwconv", "depthwise conv"), ("norm", "LayerNorm"), ("to_k", "decay (to_k, pow)"),
                       ("/op/linear", "dense (HCO in/out)"), ("out_linear", "dense (HCO in/out)"),
                       ("mlp", "MLP"), ("/op/", "HCO (DCT, decay, IDCT)"), ("conv", "stem/downsample conv"),
                       ("attention", "attention"), ("head", "head")):
        if key in name:
            return label
    return "other model ops"


def bytes_by_category(hlo_text: str) -> dict[str, float]:
    """HBM bytes (operands + result) of every top-level op of the optimized HLO, by :func:`category`.

    Fusion bodies and reducers are skipped (their traffic is the fusion's); a while loop's body
    is counted once; an async copy or slice counts at its start (source and destination), not
    again at its done. An operand's bytes are its defining instruction's result bytes.
    """
    fused = set(re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", hlo_text))
    result_bytes: dict[str, int] = {}
    ops = []
    computation = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY\s+)?%([\w.\-]+)\s*\(.*\{\s*$", line)
        if header and " = " not in line:
            computation = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode, rest = match.groups()
        result_bytes[name] = hbm_bytes(shape)
        if computation in fused or opcode in _NO_TRAFFIC or opcode.endswith("-done"):
            continue
        # An async start's result holds its source and destination: the whole transfer, once.
        operands = [] if opcode.endswith("-start") else re.findall(r"%([\w.\-]+)", rest.split("),")[0])
        op_name = re.search(r'op_name="([^"]*)"', line)
        ops.append((name, operands, category(op_name.group(1) if op_name else "", opcode)))
    totals: dict[str, float] = defaultdict(float)
    for name, operands, part in ops:
        totals[part] += result_bytes[name] + sum(result_bytes.get(o, 0) for o in operands)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def device_for(chip: str):
    return topologies.get_topology_desc(topology_name=CHIPS[chip]["topology"], platform="tpu").devices[0]


def _peaks(chip: str) -> tuple[float, float]:
    """bf16 flop/s and HBM bytes/s of one device of ``chip``."""
    spec = CHIPS[chip]
    return (spec["chip_bf16_tflops"] * 1e12 / spec["devices_per_chip"],
            spec["chip_hbm_gbs"] * 1e9 / spec["devices_per_chip"])


def hbm_roofline(row: dict, hlo_text: str) -> dict:
    """The HBM bytes of :func:`bytes_by_category` for a row with XLA's ``flops``, and the roofline
    from them, the one the tables use (``images_per_device`` in the row adds per-image figures)."""
    peak, bandwidth = _peaks(row["chip"])
    parts = bytes_by_category(hlo_text)
    hbm, flops = sum(parts.values()), row["flops"]
    roofline = max(flops / peak, hbm / bandwidth)
    out = {"hbm_bytes": hbm, "hbm_bytes_by_part": parts, "memory_s": hbm / bandwidth, "roofline_s": roofline,
           "bound": "memory" if hbm / bandwidth > flops / peak else "compute"}
    if row.get("images_per_device"):
        images = row["images_per_device"]
        out.update(hbm_bytes_per_image=hbm / images, mfu_bound=flops / peak / roofline,
                   roofline_img_s_per_chip=images / roofline * CHIPS[row["chip"]]["devices_per_chip"])
    return out


HLO_DIR: Path | None = None  # --hlo-dir: where the optimized HLO of each program is kept, for --reread


def cost_row(compiled, chip: str, hlo_name: str, images: int | None = None) -> dict:
    """XLA's flops and bytes with the roofline they give, then :func:`hbm_roofline` of the HLO
    (kept as ``hlo_name`` under ``--hlo-dir``)."""
    peak, bandwidth = _peaks(chip)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops, moved = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    row = {"chip": chip, "hlo": hlo_name, "flops": flops, "xla_bytes_accessed": moved, "compute_s": flops / peak,
           "xla_roofline_s": max(flops / peak, moved / bandwidth), "xla_optimal_seconds": cost.get("optimal_seconds")}
    if images:
        row["images_per_device"] = images
    text = compiled.as_text()
    if HLO_DIR is not None:
        HLO_DIR.mkdir(parents=True, exist_ok=True)
        (HLO_DIR / f"{hlo_name}.hlo.txt").write_text(text)
    return {**row, **hbm_roofline(row, text)}


def reread(report: dict, hlo_dir: Path) -> dict:
    """``report`` with every row's HLO-derived figures recomputed from ``hlo_dir`` (after a change
    to how the HLO is read), and the form choice from them."""
    for key in ("train_step", "vit_calibration", "stage_forms"):
        for row in (r for r in report.get(key, []) if "flops" in r):  # rows without are compiler aborts
            if "hlo" not in row:
                raise ValueError(f"a {key} row for {row['chip']} names no kept HLO (a run without --hlo-dir "
                                 "names none): compile it again with --hlo-dir")
            row.update(hbm_roofline(row, (hlo_dir / f"{row['hlo']}.hlo.txt").read_text()))
    if "stage_forms" in report:
        report["form_choice"] = choose_forms(report["stage_forms"])
    return report


def train_step_vheat(chip: str, model: str, size: int, batch: int, kron_max_tokens: int) -> dict:
    """The trainer's step with ``"auto"`` HCO forms, the Kronecker form up to ``kron_max_tokens``
    (the library's rule is ``heat.KRON_MAX_TOKENS``; other values are what-ifs)."""
    from vheat_jax.cls.aot import compile_train_step  # pylint: disable=import-outside-toplevel
    from vheat_jax.cls.config import default_config  # pylint: disable=import-outside-toplevel

    config = default_config()
    config.model.name, config.image_size, config.global_batch_size = model, size, batch
    config.compute_dtype, config.model.hco_form = "bfloat16", "auto"
    library_rule, heat.KRON_MAX_TOKENS = heat.KRON_MAX_TOKENS, kron_max_tokens  # read when the step is traced
    try:
        start = time.perf_counter()
        compiled = compile_train_step(config, [device_for(chip)])
    finally:
        heat.KRON_MAX_TOKENS = library_rule
    return {"model": model, "size": size, "kron_max_tokens": kron_max_tokens,
            "library_rule": kron_max_tokens == library_rule, "compile_s": time.perf_counter() - start,
            **cost_row(compiled, chip, f"{chip}_{model}_{size}_kron{kron_max_tokens}", batch)}


def train_step_vit(chip: str, size: int, batch: int) -> dict:
    """A ViT-S/16 step of the same kind (bf16 compute, soft-target CE, clip, AdamW), one device."""
    model = ViT(dtype=jnp.bfloat16)
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch, 1000), jnp.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"])
    tx = optax.chain(optax.clip_by_global_norm(5.0), optax.adamw(1e-3, weight_decay=0.05))
    opt_state = jax.eval_shape(tx.init, params)

    def step(params, opt_state, images, labels):
        def loss_fn(p):
            logits = model.apply({"params": p}, images).astype(jnp.float32)
            return optax.softmax_cross_entropy(logits, labels).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    sharding = jax.sharding.SingleDeviceSharding(device_for(chip))
    place = lambda tree: jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)  # noqa: E731
    compiled = jax.jit(step).lower(*place((params, opt_state, images, labels))).compile()
    return {"model": "vit_s16", "size": size, **cost_row(compiled, chip, f"{chip}_vit_s16_{size}", batch)}


def _grouped_conv(x, kernel, bias):
    out = jax.lax.conv_general_dilated(x, kernel[:, :, None, :], (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
    return out + bias


def stage_form(chip: str, op: str, form: str, resolution: int, channels: int, batch: int) -> dict:
    """One HCO or depthwise-conv form, forward + backward in bf16, at one stage shape."""
    sharding = jax.sharding.SingleDeviceSharding(device_for(chip))
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)  # noqa: E731
    x = spec((batch, resolution, resolution, channels), jnp.bfloat16)
    if op == "hco":
        loss = lambda x, d: jnp.sum(heat_diffuse(x, d, form).astype(jnp.float32) ** 2)  # noqa: E731
        args = (x, spec((resolution, resolution, channels), jnp.float32))
    else:
        fn = depthwise_conv3x3 if form == "shifted" else _grouped_conv
        loss = lambda x, k, b: jnp.sum(fn(x, k, b).astype(jnp.float32) ** 2)  # noqa: E731
        args = (x, spec((3, 3, channels), jnp.bfloat16), spec((channels,), jnp.bfloat16))
    compiled = jax.jit(jax.grad(loss, argnums=tuple(range(len(args))))).lower(*args).compile()
    return {"op": op, "form": form, "resolution": resolution, "channels": channels, "batch": batch,
            **cost_row(compiled, chip, f"{chip}_{op}_{form}_{resolution}")}


def stage_forms(chip: str, batch: int) -> list[dict]:
    """Every form at every vHeat-T stage shape, each compiled in a child process: libtpu aborts the
    whole process on some programs (0.0.42.1: the grouped conv's backward), which is then a row
    with the compiler's last words instead of a cost."""
    rows = []
    for resolution, channels in STAGES_T:
        # The fused_* forms are Pallas Triton kernels: GPU only (their interpreter mode says nothing of a TPU).
        candidates = [("hco", f) for f in HCO_FORMS
                      if not f.startswith("fused_") and (f != "kron" or resolution * resolution <= 28 * 28)]
        for op, form in candidates + [("dwconv", "shifted"), ("dwconv", "grouped_conv")]:
            spec = dict(chip=chip, op=op, form=form, resolution=resolution, channels=channels, batch=batch)
            keep = ["--hlo-dir", str(HLO_DIR)] if HLO_DIR is not None else []
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec), *keep], capture_output=True,
                                  text=True, check=False, timeout=1200)
            if proc.returncode == 0:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            else:
                checks = [line for line in proc.stderr.splitlines() if "Check failed" in line or "Error" in line]
                rows.append({**spec, "compiler_error": (checks or proc.stderr.splitlines() or ["?"])[-1][-300:]})
    return rows


def choose_forms(rows: list[dict]) -> dict:
    """Per chip and stage: the form with the smallest roofline time, beside the CPU choice."""
    best: dict = {}
    for row in (r for r in rows if "roofline_s" in r):
        key = (row["chip"], row["op"], row["resolution"])
        if key not in best or row["roofline_s"] < best[key]["roofline_s"]:
            best[key] = row
    out: dict = defaultdict(dict)
    for (chip, op, resolution), row in sorted(best.items()):
        cpu = select_form(resolution, resolution) if op == "hco" else "shifted"
        cpu_row = next(r for r in rows if "roofline_s" in r
                       and (r["chip"], r["op"], r["resolution"], r["form"]) == (chip, op, resolution, cpu))
        out[chip][f"{op}@{resolution}"] = {"form": row["form"], "roofline_s": row["roofline_s"], "cpu_form": cpu,
                                           "cpu_form_roofline_s": cpu_row["roofline_s"],
                                           "modelled_gain": cpu_row["roofline_s"] / row["roofline_s"]}
    return dict(out)


def _table(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: (f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}") if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows])


def _compiler_words(line: str) -> str:
    """A libtpu log line without its severity, time and thread: 'fusion_emitter.cc:4581] Check failed: ...'."""
    return re.sub(r"^[FEWI]\d{4} [\d:.]+\s+\d+\s+", "", line)[:90]


def markdown_tables(reports: list[dict]) -> str:
    """The docs' tables from one or more reports of this script (``--tables``)."""
    steps = [r for report in reports for r in report.get("train_step", [])]
    vit = [r for report in reports for r in report.get("vit_calibration", [])]
    forms = [r for report in reports for r in report.get("stage_forms", [])]
    choice = {chip: c for report in reports for chip, c in report.get("form_choice", {}).items()}
    out = ["### Train steps (per chip, bf16, library rule unless marked)", _table(
        ["chip", "model", "Kronecker up to", "GFLOP/img", "HBM MB/img", "XLA MB/img", "compute ms", "HBM ms",
         "roofline img/s/chip", "MFU bound"],
        [[r["chip"], f"{r['model']}@{r['size']}", r["kron_max_tokens"], r["flops"] / r["images_per_device"] / 1e9,
          r["hbm_bytes_per_image"] / 1e6, r["xla_bytes_accessed"] / r["images_per_device"] / 1e6,
          r["compute_s"] * 1e3, r["memory_s"] * 1e3, r["roofline_img_s_per_chip"], r["mfu_bound"]] for r in steps])]
    out += ["### ViT-S/16 calibration (same kind of step)", _table(
        ["chip", "GFLOP/img", "HBM MB/img", "roofline img/s/chip", "published img/s/chip", "model / published"],
        [[r["chip"], r["flops"] / r["images_per_device"] / 1e9, r["hbm_bytes_per_image"] / 1e6,
          r["roofline_img_s_per_chip"], "-".join(f"{v:.0f}" for v in r.get("published_img_s_per_chip", [])) or "-",
          "-".join(f"{v:.2f}" for v in r.get("model_over_published", [])) or "-"] for r in vit])]
    library = [r for r in steps if r["library_rule"]]
    parts = sorted({p for r in library for p in r["hbm_bytes_by_part"]},
                   key=lambda p: -max(r["hbm_bytes_by_part"].get(p, 0) / r["hbm_bytes"] for r in library))
    out += ["### HBM bytes by part of the step (share of the step's HBM bytes)", _table(
        ["part"] + [f"{r['chip']} {r['model']}@{r['size']}" for r in library],
        [[p] + [f"{r['hbm_bytes_by_part'].get(p, 0) / r['hbm_bytes']:.0%}" for r in library] for p in parts])]
    out += ["### Forms per stage (vHeat-T shapes, forward + backward, bf16)", _table(
        ["chip", "op", "stage", "form", "HBM MB", "roofline us"],
        [[r["chip"], r["op"], f"{r['resolution']}x{r['resolution']}x{r['channels']}", r["form"],
          r["hbm_bytes"] / 1e6 if "hbm_bytes" in r else "-",
          r["roofline_s"] * 1e6 if "roofline_s" in r else "compiler abort: " + _compiler_words(r["compiler_error"])]
         for r in forms])]
    out += ["### Form chosen per stage by the model", _table(
        ["chip", "stage", "model's pick", "CPU rule", "modelled gain (per op)"],
        [[chip, stage, c["form"], c["cpu_form"], c["modelled_gain"]] for chip, picks in choice.items()
         for stage, c in picks.items()])]
    return "\n\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chips", nargs="+", default=["v4", "v5e"], choices=sorted(CHIPS))
    parser.add_argument("--models", nargs="+", default=["vheat_tiny@224", "vheat_small@224", "vheat_base@224",
                                                        "vheat_tiny@512"], help="model@size")
    parser.add_argument("--batch", type=int, default=64, help="images per device at 224 (a quarter at 512)")
    parser.add_argument("--stage-batch", type=int, default=64)
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "vit", "forms"])
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--kron-max-tokens", type=int, nargs="+", default=[heat.KRON_MAX_TOKENS, 28 * 28],
                        help="train-step variants: the Kronecker HCO form up to this many tokens (default: the "
                             "library's rule and the per-stage winner's)")
    parser.add_argument("--hlo-dir", type=Path, help="keep each program's optimized HLO text here")
    parser.add_argument("--tables", nargs="+", type=Path, metavar="JSON",
                        help="print the docs' markdown tables from these reports and exit")
    parser.add_argument("--reread", nargs="+", type=Path, metavar="JSON",
                        help="recompute these reports' HLO-derived figures from --hlo-dir; write them to --out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tables or args.reread:
        if args.reread and (args.hlo_dir is None or args.out is None):
            parser.error("--reread needs --hlo-dir (where the HLO was kept) and --out")
        try:
            loaded = [json.loads(path.read_text()) for path in args.tables or args.reread]  # a report, or a list
            reports = [r for item in loaded for r in (item if isinstance(item, list) else [item])]
            if args.tables:
                print(markdown_tables(reports))
            else:
                Path(args.out).write_text(json.dumps([reread(r, args.hlo_dir) for r in reports], indent=1) + "\n")
        except (OSError, ValueError, KeyError) as error:  # a missing file, bad JSON, not this script's report
            parser.error(f"{type(error).__name__}: {error}")
        return
    global HLO_DIR  # pylint: disable=global-statement
    HLO_DIR = args.hlo_dir
    if args.child:
        print(json.dumps(stage_form(**json.loads(args.child))))
        return

    report = {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d"),
              "jax": jax.__version__, "chips": {c: CHIPS[c] for c in args.chips},
              "note": "a model of the chip (XLA's TPU cost analysis + published peaks), not a measurement"}
    if "forms" not in args.skip:
        rows = [row for chip in args.chips for row in stage_forms(chip, args.stage_batch)]
        report["stage_forms"] = rows
        report["form_choice"] = choose_forms(rows)
        print(json.dumps(report["form_choice"]), file=sys.stderr, flush=True)
    if "vit" not in args.skip:
        report["vit_calibration"] = []
        for chip in sorted(set(args.chips) | {"v3"}):
            row = train_step_vit(chip, 224, args.batch)
            if chip == "v3":
                low, high = PUBLISHED_VIT_S16_V3_IMG_S_PER_CHIP
                row["published_img_s_per_chip"] = [low, high]
                row["model_over_published"] = [row["roofline_img_s_per_chip"] / high,
                                               row["roofline_img_s_per_chip"] / low]
            report["vit_calibration"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "hbm_bytes_by_part"}), file=sys.stderr, flush=True)
    if "train" not in args.skip:
        report["train_step"] = []
        for chip in args.chips:
            for item in args.models:
                model, size = item.split("@")
                batch = args.batch if int(size) <= 224 else max(1, args.batch // 4)
                for kron_max_tokens in args.kron_max_tokens:
                    row = train_step_vheat(chip, model, int(size), batch, kron_max_tokens)
                    report["train_step"].append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "hbm_bytes_by_part"}), file=sys.stderr,
                          flush=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
