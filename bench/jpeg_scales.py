#!/usr/bin/env python
"""Why the DCT-scaled decode uses only the 1/2, 1/4 and 1/8 scales. JSON out.

    pip install -e ".[bench]"
    python bench/jpeg_scales.py --out bench_out/jpeg_scales.json

Pinned to one core, on the bench's photos (``bench/input_pipeline.py``: the sample photos
resized to 500x375, and at their own size), in alternating rounds:
- milliseconds per ``simplejpeg`` decode at each M/8 scale of a 500x375 photo;
- milliseconds per 224 crop for the library's rule (``transforms.scaled_decode_crop``),
  for the rule it replaced (the smallest of all eight M/8 scales that keeps the box at least
  224 on both sides), and for PIL's full decode + crop + resize, with the same boxes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from input_pipeline import encoded_photos  # noqa: E402

from vheat_jax.cls import transforms as T  # noqa: E402

SIZE = 224


def any_eighth_crop(data: bytes, size: int, rng: np.random.Generator) -> Image.Image:
    """The replaced rule: the decoder picks the smallest M/8 (M = 1..8) keeping the box >= size."""
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    i, j, h, w = T.rrc_params(width, height, rng)
    pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=math.ceil(size * height / h),
                                    min_width=math.ceil(size * width / w))
    return T.resize_box(pixels, (height, width), (i, j, h, w), size)


def full_decode_crop(data: bytes, size: int, rng: np.random.Generator) -> Image.Image:
    return T.random_resized_crop(T.decode_image(data), size, rng)


def ms_per_call(fn, items, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return (time.perf_counter() - start) / (repeat * len(items)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--crops", type=int, default=30, help="crops per photo per round")
    parser.add_argument("--core", type=int, default=0, help="CPU this process is pinned to")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})

    imagenet_sized = list(encoded_photos((500, 375)).values())
    decode_ms: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for m in range(1, 9):
            decode = lambda data, m=m: simplejpeg.decode_jpeg(data, "RGB", min_height=math.ceil(375 * m / 8),  # noqa: E731
                                                              min_width=math.ceil(500 * m / 8))
            decode_ms.setdefault(f"{m}/8", []).append(ms_per_call(decode, imagenet_sized, 10))

    rules = {"library (1/2, 1/4, 1/8)": T.scaled_decode_crop, "any M/8": any_eighth_crop,
             "PIL full decode": full_decode_crop}
    crop_ms: dict[str, dict[str, list[float]]] = {}
    for label, photos in (("500x375", imagenet_sized), ("own size", list(encoded_photos(None).values()))):
        jobs = [(data, k) for k in range(args.crops) for data in photos]
        for _ in range(args.rounds):
            for name, fn in rules.items():
                run = lambda job, fn=fn: fn(job[0], SIZE, np.random.default_rng(job[1]))  # noqa: E731
                crop_ms.setdefault(label, {}).setdefault(name, []).append(ms_per_call(run, jobs, 1))

    span = lambda values: [round(min(values), 3), round(max(values), 3)]  # noqa: E731
    report = {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d"), "core": args.core,
              "decode_ms_500x375_min_max": {k: span(v) for k, v in decode_ms.items()},
              "crop_ms_min_max": {label: {k: span(v) for k, v in rows.items()} for label, rows in crop_ms.items()}}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
