#!/usr/bin/env python
"""Inference throughput of UperNet-vHeat (official T/S/B configuration, 150 classes) at 512 x 512; prints JSON.

    python bench/seg_throughput.py [--variant vheat_tiny] [--batch 1] [--iters 3] [--dtype float32]

Random weights (speed does not depend on them). Times the decode network on a batch of
512 x 512 inputs (one slide window each, the unit of mmseg's slide inference), after one
compile + warm-up call, and one whole ``Segmenter.predict`` of a 512 x 683 image (two
windows, the typical ADE20K shape after the test resize), which adds the window
assembly, the final resize and the argmax.
"""

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from vheat_jax.seg.inference import InferenceConfig, Segmenter
from vheat_jax.seg.model import upernet_config


def timed(fn, *args, iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="vheat_tiny")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    config = upernet_config(args.variant)
    model = config.build(dtype=jnp.dtype(args.dtype))
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 512, 512, 3)))
    images = jax.random.normal(jax.random.key(1), (args.batch, 512, 512, 3))
    decode = jax.jit(functools.partial(model.apply, method="decode"))
    compile_s, step_s = timed(decode, variables, images, iters=args.iters)

    segmenter = Segmenter(model, variables, InferenceConfig(mode="slide"))
    image = np.asarray(jax.random.normal(jax.random.key(2), (512, 683, 3)))
    predict_first_s, predict_s = timed(segmenter.predict, image, iters=args.iters)
    print(json.dumps({
        "variant": args.variant, "dtype": args.dtype, "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind, "batch": args.batch,
        "windows_512_per_s": round(args.batch / step_s, 3), "seconds_per_batch": round(step_s, 3),
        "first_call_s_incl_compile": round(compile_s, 1),
        "predict_512x683_s": round(predict_s, 3), "predict_first_call_s": round(predict_first_s, 1),
        "command": f"python bench/seg_throughput.py --variant {args.variant} --batch {args.batch} --dtype {args.dtype}",
    }))


if __name__ == "__main__":
    main()
