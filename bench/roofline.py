#!/usr/bin/env python
"""How fast vHeat could possibly run here: measured matmul peak against the model's MACs.

    python bench/roofline.py                       # vHeat-T, 224 px, batch 8, float32

Measures float32 matmul throughput on this machine (a 2048^3 product, and the
dense layers of vHeat-T at batch 8 with their real shapes), then divides by
the model's multiply-accumulates (vheat_jax.flops, the count that reproduces the
paper's GFLOPs table). The result is a ceiling: images/s if every matmul ran at
the measured peak and everything else (LayerNorm, GELU, the DCT, the depthwise
conv, copies) were free. A training step costs about 3x the forward MACs
(forward, plus the input and weight gradients of every dot and conv). Also the
bandwidth of an elementwise op in cache (4 MB) and on large arrays (64 MB);
``VHEAT_HUGE_PAGES=0`` shows the large-array figure without huge pages.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp

from vheat_jax import runtime
from vheat_jax.benchmark import time_jitted
from vheat_jax.cls.pretrained import arch_of
from vheat_jax.flops import model_macs
from vheat_jax.forms import to_inference_form
from vheat_jax.variants import create_model


def matmul_gflops(m: int, k: int, n: int, iters: int) -> float:
    a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
    seconds = time_jitted(jnp.matmul, a, b, warmup=2, iters=iters)["median_s"]
    return 2 * m * k * n / seconds / 1e9


def elementwise_gb_per_s(megabytes: int, iters: int) -> float:
    """Memory traffic of ``a * 1.5 + b`` (read two arrays, write one) on float32 arrays of this size."""
    n = megabytes * 2**20 // 4
    a, b = jnp.ones((n,), jnp.float32), jnp.ones((n,), jnp.float32)
    seconds = time_jitted(lambda a, b: a * 1.5 + b, a, b, warmup=2, iters=iters)["median_s"]
    return 3 * n * 4 / seconds / 1e9


def main() -> None:
    runtime.reexec_with_huge_pages()  # as eval.py and train.py run
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vheat_tiny")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    model = create_model(args.model, img_size=args.image_size)
    size = (args.image_size, args.image_size)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *size, 3)))["params"]
    # Per image at this batch (the training form's to_k runs once per batch, not per image).
    train_macs = model_macs(model, params, batch=args.batch, img_hw=size) / args.batch
    infer_arch, infer_params = to_inference_form(params, arch_of(model))
    infer_macs = model_macs(infer_arch.build(), infer_params, batch=args.batch, img_hw=size) / args.batch

    # The four dense layers of each stage at this batch: tokens x in -> out.
    tokens = [args.batch * (args.image_size // (4 * 2**i)) ** 2 for i in range(len(model.depths))]
    widths = [model.dims * 2**i for i in range(len(model.depths))]
    dense = {}
    for t, c in zip(tokens, widths, strict=True):
        for k, n in ((c, 2 * c), (c, c), (c, 4 * c), (4 * c, c)):
            dense[f"{t}x{k}x{n}"] = round(matmul_gflops(t, k, n, args.iters), 1)
    peak = matmul_gflops(2048, 2048, 2048, args.iters)
    best = max(peak, *dense.values())
    # In cache vs. large arrays whose output buffers the allocator hands out fresh each call.
    bandwidth = {f"{mb}MB": round(elementwise_gb_per_s(mb, args.iters), 1) for mb in (4, 64)}

    def ceiling(macs: float, factor: float) -> float:
        return best * 1e9 / (2 * factor * macs)

    print(json.dumps({
        "device": jax.devices()[0].device_kind, "model": args.model, "image_size": args.image_size,
        "batch": args.batch, "matmul_gflops_2048": round(peak, 1), "dense_layer_gflops": dense,
        "elementwise_gb_per_s": bandwidth, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "gmacs_per_image_inference_form": round(infer_macs / 1e9, 3),
        "gmacs_per_image_training_form": round(train_macs / 1e9, 3),
        "ceiling_inference_images_per_s": round(ceiling(infer_macs, 1), 2),
        "ceiling_train_step_images_per_s": round(ceiling(train_macs, 3), 2),
    }))


if __name__ == "__main__":
    main()
