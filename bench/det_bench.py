#!/usr/bin/env python
"""Mask R-CNN-vHeat inference throughput at 800x1333 (mmdetection's test scale), JSON on stdout.

    python bench/det_bench.py                       # vHeat-T, COCO widths, random weights, batch 1
    python bench/det_bench.py --backbone vheat_small --batch 2 --runs 5

Times the whole jitted test-time forward (backbone, FPN, RPN + NMS, RoIAlign, box head +
class-wise NMS, mask head) on a padded 800x1344 input, after one compilation run, plus
the host-side mask pasting of the 100 detections at 800x1333. Random weights make
NMS keep about as many boxes as trained ones (the capacities are static anyway).
"""

import argparse
import json
import os
import platform
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="vheat_tiny")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    args = parser.parse_args()

    import jax
    import numpy as np

    from vheat_jax.arch import Arch
    from vheat_jax.det import detector, masks, training
    from vheat_jax.det.model import MaskRCNN
    from vheat_jax.det.model_config import MaskRCNNConfig
    from vheat_jax.variants import VARIANTS

    v = VARIANTS[args.backbone]
    arch = Arch(dims=v["dims"], depths=tuple(v["depths"]), post_norm=v["post_norm"], layer_scale=v["layer_scale"],
                img_size=224, num_classes=None)
    config = MaskRCNNConfig()
    model = MaskRCNN(config, arch)
    params = jax.jit(lambda k: training.init_params(model, k))(jax.random.key(0))
    pad_h, pad_w = (-(-args.height // 32) * 32, -(-args.width // 32) * 32)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.batch, pad_h, pad_w, 3)).astype(np.float32)
    img_hw = np.tile([[args.height, args.width]], (args.batch, 1)).astype(np.float32)
    predict = jax.jit(lambda p, x, hw: detector.predict(model, {"params": p}, x, hw))
    start = time.perf_counter()
    out = jax.block_until_ready(predict(params, images, img_hw))
    first = time.perf_counter() - start
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        out = jax.block_until_ready(predict(params, images, img_hw))
        times.append(time.perf_counter() - start)
    out = jax.device_get(out)
    start = time.perf_counter()
    keep = out["valid"][0]
    masks.paste_masks_numpy(out["mask_probs"][0][keep], out["boxes"][0][keep], (args.height, args.width))
    paste = time.perf_counter() - start
    step = float(np.median(times))
    print(json.dumps({
        "benchmark": "maskrcnn_inference", "backbone": args.backbone, "input": [pad_h, pad_w],
        "batch": args.batch, "params_M": round(sum(x.size for x in jax.tree.leaves(params)) / 1e6, 2),
        "compile_and_first_run_s": round(first, 2), "forward_s_median": round(step, 3),
        "images_per_s": round(args.batch / step, 4), "detections": int(keep.sum()),
        "mask_paste_host_s": round(paste, 3), "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "overflow": bool(out["overflow"].any()),
    }))


if __name__ == "__main__":
    main()
