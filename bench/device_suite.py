#!/usr/bin/env python
"""vHeat measured on the device at hand: the paper's throughput protocol, high resolution, training, HCO forms.

    bench/device_suite.sh [OUT_DIR]          # the wrapper: full mode on a GPU/TPU, reduced on CPU
    python bench/device_suite.py --mode cpu --out /tmp/suite.json

Sections (each a list of rows in the JSON):

* ``matmul_peak``: a square matmul per dtype, TFLOP/s; the scale for the paper's figures.
* ``throughput``: the paper's protocol (inference form, batch 128, 224 px, warm-up, then timed
  iterations run to completion) for vHeat-T/S/B in float32 and bfloat16; images/s, and the paper's
  A100 figure scaled by (measured bf16 matmul peak / A100's 312 TFLOP/s).
* ``high_resolution``: vHeat-T at 512/768/1024 beside the ViT baseline of ``bench/scaling.py``
  (DeiT-S shape): latency, compiled memory, and the device's peak memory where it reports one.
* ``train_step``: vHeat-T/S/B forward + backward + clipping + AdamW at batch 128 in bfloat16: images/s,
  peak memory, and MFU: the model's FLOPs (``vheat_jax.flops``: 2 x the forward's MACs, training
  3 x the forward) / time / measured bf16 matmul peak. XLA's ``cost_analysis()`` is not used for it:
  on GPU it leaves out cuBLAS and fused calls (143.8 GFLOP counted for a ~3.5 TFLOP step).
* ``train_step_scanned``: the same with each stage's blocks as one ``lax.scan``
  (``model.scan_blocks``): its ``compile_s`` and images/s beside ``train_step``'s decide the default.
  The first variant only (vHeat-T by default), as for ``train_step_fused``.
* ``train_step_fused``: the same with the fused Pallas HCO on every stage: ``fused_kron`` on the
  maps it takes (vHeat's last two at 224 px), ``fused_separable`` on the others.
* ``hco_forms`` / ``dwconv_forms``: the heat operator in each form of ``vheat_jax.heat.HCO_FORMS``
  and the depthwise 3x3 conv as shifted multiply-adds vs. XLA's grouped convolution, forward +
  backward at vHeat-T's stage shapes: what a per-backend choice would pick.

Needs only jax, flax, optax and this tree (``PYTHONPATH=.``): no grain, TFDS or ml_collections, so it
runs on a bare accelerator image. ``--mode cpu`` shrinks batches, sizes and variants so the whole
suite runs in about a minute on a laptop-class CPU (CI runs it so); its numbers are not the paper's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).parent))
from vit_baseline import ViT  # noqa: E402

from vheat_jax import create_model, hco_fused  # noqa: E402
from vheat_jax.benchmark import live_bytes, time_jitted  # noqa: E402
from vheat_jax.flops import model_macs  # noqa: E402
from vheat_jax.heat import forms_for, heat_diffuse  # noqa: E402
from vheat_jax.model import stage_resolutions  # noqa: E402
from vheat_jax.ops import depthwise_conv3x3  # noqa: E402

PAPER_A100_IMG_S = {"vheat_tiny": 1514, "vheat_small": 945, "vheat_base": 661}
"""The paper's inference throughput (A100, batch 128, 224 px)."""
A100_BF16_TFLOPS = 312.0

MODES = {
    "full": {"variants": ("vheat_tiny", "vheat_small", "vheat_base"), "batch": 128, "size": 224, "iters": 20,
             "high_res": (512, 768, 1024), "high_res_batch": 8, "train_batch": 128, "matmul": 8192,
             "stages": ((56, 96), (28, 192), (14, 384), (7, 768)), "stage_batch": 128, "model": {},
             "train_dtype": "bfloat16"},
    # CI's smoke run: every code path, shrunken models (compiles dominate on CPU), numbers meaningless.
    "cpu": {"variants": ("vheat_tiny",), "batch": 2, "size": 32, "iters": 2,
            "high_res": (64,), "high_res_batch": 1, "train_batch": 2, "matmul": 256,
            "stages": ((8, 32),), "stage_batch": 2, "model": {"dims": 8, "depths": (2, 1)},
            "train_dtype": "float32"},
}


def timed(fn, *args, iters: int) -> dict:
    """``time_jitted`` with the compiled memory as one number (arguments + outputs + temporaries)."""
    result = time_jitted(fn, *args, warmup=2, iters=iters)
    memory = result.pop("compiled_memory")
    return {**result, "compiled_bytes": live_bytes(memory) if memory else None}


def matmul_peak(n: int, iters: int) -> list[dict]:
    rows = []
    for dtype in ("float32", "bfloat16"):
        a = jnp.ones((n, n), dtype)
        result = timed(lambda x, y: x @ y, a, a, iters=max(iters, 3))
        rows.append({"dtype": dtype, "n": n, "tflops": 2 * n**3 / result["median_s"] / 1e12, **result})
    return rows


def throughput(setup: dict, bf16_tflops: float) -> list[dict]:
    rows = []
    scale = bf16_tflops / A100_BF16_TFLOPS
    for name in setup["variants"]:
        for dtype in ("float32", "bfloat16"):
            model = create_model(name, img_size=setup["size"], infer_mode=True, dtype=jnp.dtype(dtype),
                                 **setup["model"])
            images = jnp.ones((setup["batch"], setup["size"], setup["size"], 3), jnp.float32)
            params = jax.jit(model.init)(jax.random.key(0), images[:1])
            result = timed(lambda p, x: model.apply(p, x), params, images, iters=setup["iters"])
            flops = forward_flops(model, params["params"], setup["batch"], setup["size"])
            rows.append({"model": name, "dtype": dtype, "batch": setup["batch"], "size": setup["size"],
                         "img_s": setup["batch"] / result["median_s"], "model_flops": flops,
                         "mfu_vs_measured_bf16_peak": flops / result["median_s"] / (bf16_tflops * 1e12),
                         "paper_a100_img_s": PAPER_A100_IMG_S[name],
                         "paper_scaled_to_this_device_img_s": PAPER_A100_IMG_S[name] * scale, **result})
    return rows


def high_resolution(setup: dict) -> list[dict]:
    rows = []
    batch = setup["high_res_batch"]
    for size in setup["high_res"]:
        vit = ViT(dtype=jnp.bfloat16) if not setup["model"] else ViT(width=32, depth=2, heads=2, dtype=jnp.bfloat16)
        for name, model in (("vheat_tiny", create_model("vheat_tiny", img_size=size, infer_mode=True,
                                                         dtype=jnp.bfloat16, **setup["model"])),
                            ("vit_deit_s", vit)):
            images = jnp.ones((batch, size, size, 3), jnp.float32)
            params = jax.jit(model.init)(jax.random.key(0), images[:1])
            result = timed(lambda p, x, m=model: m.apply(p, x), params, images, iters=setup["iters"])
            rows.append({"model": name, "size": size, "batch": batch, "latency_s": result["median_s"], **result})
    return rows


def forward_flops(model, params, batch: int, size: int) -> float:
    """The model's FLOPs for one forward pass of ``batch`` images: 2 x its multiply-accumulates."""
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    return 2.0 * model_macs(model, shapes, batch=batch, img_hw=(size, size))


def fused_forms(setup: dict) -> str:
    """A per-stage ``hco_form``: the fused Kronecker kernel on the maps it takes, the fused separable elsewhere."""
    depths = setup["model"].get("depths", (2, 2, 6, 2))
    return ",".join("fused_kron" if hco_fused.supports("kron", res, res) else "fused_separable"
                    for res in stage_resolutions(setup["size"], num_stages=len(depths)))


def train_step(setup: dict, bf16_tflops: float, *, scan_blocks: bool = False, hco_form: str = "auto",
               first_variant_only: bool = False) -> list[dict]:
    variants = setup["variants"][:1] if first_variant_only else setup["variants"]
    return [row for name in variants for row in _train_step(name, setup, bf16_tflops, scan_blocks, hco_form)]


def _train_step(name: str, setup: dict, bf16_tflops: float, scan_blocks: bool, hco_form: str) -> list[dict]:
    """The trainer's step without its input pipeline: CE loss, grads, clip, AdamW, on one device."""
    size, batch = setup["size"], setup["train_batch"]
    dtype = jnp.dtype(setup["train_dtype"])
    model = create_model(name, img_size=size, dtype=dtype, drop_path_rate=0.0, scan_blocks=scan_blocks,
                         hco_form=hco_form, **setup["model"])
    images = jnp.ones((batch, size, size, 3), jnp.float32)
    labels = jnp.zeros((batch,), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), images[:1])["params"]
    tx = optax.chain(optax.clip_by_global_norm(5.0), optax.adamw(1e-3, weight_decay=0.05))
    opt_state = tx.init(params)

    def step(params, opt_state, images, labels):
        def loss_fn(p):
            logits = model.apply({"params": p}, images).astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    result = timed(step, params, opt_state, images, labels, iters=setup["iters"])
    flops = 3 * forward_flops(model, params, batch, size)  # forward + backward (2 x forward)
    return [{"model": name, "dtype": jnp.dtype(dtype).name, "batch": batch, "size": size, "scan_blocks": scan_blocks,
             "hco_form": hco_form, "img_s": batch / result["median_s"], "model_flops": flops,
             "mfu_vs_measured_bf16_peak": flops / result["median_s"] / (bf16_tflops * 1e12), **result}]


def hco_forms(setup: dict) -> list[dict]:
    rows = []
    for resolution, channels in setup["stages"]:
        keys = jax.random.split(jax.random.key(0), 2)
        x = jax.random.normal(keys[0], (setup["stage_batch"], resolution, resolution, channels), jnp.bfloat16)
        decay = jax.random.uniform(keys[1], (resolution, resolution, channels))
        reference = heat_diffuse(x.astype(jnp.float32), decay, "einsum")
        for form in forms_for(resolution, resolution):

            def loss(x, decay, form=form):
                return jnp.sum(heat_diffuse(x, decay, form).astype(jnp.float32) ** 2)

            error = float(jnp.max(jnp.abs(heat_diffuse(x.astype(jnp.float32), decay, form) - reference)))
            result = timed(jax.grad(loss, argnums=(0, 1)), x, decay, iters=setup["iters"])
            rows.append({"resolution": resolution, "channels": channels, "batch": setup["stage_batch"],
                         "form": form, "forward_backward_ms": 1e3 * result["median_s"],
                         "max_abs_diff_vs_einsum_f32": error, **result})
    return rows


def _grouped_conv(x, kernel, bias):
    out = jax.lax.conv_general_dilated(x, kernel[:, :, None, :], (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       feature_group_count=x.shape[-1])
    return out + bias


def dwconv_forms(setup: dict) -> list[dict]:
    rows = []
    for resolution, channels in setup["stages"]:
        x = jnp.ones((setup["stage_batch"], resolution, resolution, channels), jnp.bfloat16)
        kernel = jnp.full((3, 3, channels), 0.1, jnp.bfloat16)
        bias = jnp.zeros((channels,), jnp.bfloat16)
        reference = _grouped_conv(x, kernel, bias).astype(jnp.float32)
        for form, fn in (("shifted", depthwise_conv3x3), ("grouped_conv", _grouped_conv)):
            def loss(x, kernel, bias, fn=fn):
                return jnp.sum(fn(x, kernel, bias).astype(jnp.float32) ** 2)

            error = float(jnp.max(jnp.abs(fn(x, kernel, bias).astype(jnp.float32) - reference)))
            result = timed(jax.grad(loss, argnums=(0, 1, 2)), x, kernel, bias, iters=setup["iters"])
            rows.append({"resolution": resolution, "channels": channels, "batch": setup["stage_batch"],
                         "form": form, "forward_backward_ms": 1e3 * result["median_s"],
                         "max_abs_diff_vs_grouped": error, **result})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("auto", "full", "cpu"), default="auto",
                        help="auto: full on a GPU/TPU, cpu (reduced) otherwise")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--variants", help="comma-separated vHeat variants (default: the mode's)")
    parser.add_argument("--sections", default="matmul_peak,throughput,high_resolution,train_step,hco_forms,"
                        "dwconv_forms,train_step_scanned,train_step_fused", help="comma-separated subset")
    args = parser.parse_args(argv)
    backend = jax.default_backend()
    mode = args.mode if args.mode != "auto" else ("cpu" if backend == "cpu" else "full")
    setup = dict(MODES[mode])
    if args.variants:
        setup["variants"] = tuple(args.variants.split(","))
    device = jax.devices()[0]
    report = {"date": datetime.date.today().isoformat(), "mode": mode, "backend": backend,
              "device": getattr(device, "device_kind", str(device)), "jax": jax.__version__,
              "python": platform.python_version(), "command": " ".join(sys.argv), "sections": {}}
    sections = args.sections.split(",")
    started = time.perf_counter()
    peak = matmul_peak(setup["matmul"], setup["iters"])
    bf16_tflops = next(row["tflops"] for row in peak if row["dtype"] == "bfloat16")
    runners = {"matmul_peak": lambda: peak, "throughput": lambda: throughput(setup, bf16_tflops),
               "high_resolution": lambda: high_resolution(setup),
               "train_step": lambda: train_step(setup, bf16_tflops),
               # The variants of the step: the first variant only (a cold compile each: ~2 minutes on the H200).
               "train_step_scanned": lambda: train_step(setup, bf16_tflops, scan_blocks=True, first_variant_only=True),
               "train_step_fused": lambda: train_step(setup, bf16_tflops, hco_form=fused_forms(setup),
                                                      first_variant_only=True),
               "hco_forms": lambda: hco_forms(setup), "dwconv_forms": lambda: dwconv_forms(setup)}
    for name in sections:
        section_start = time.perf_counter()
        report["sections"][name] = runners[name]()
        print(f"{name}: {time.perf_counter() - section_start:.1f} s", file=sys.stderr, flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1))  # what is done survives a later timeout
    report["total_s"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
