#!/usr/bin/env python
"""Input-pipeline throughput on JPEGs with the ImageNet training recipe (decode, RandomResizedCrop,
flip, RandAugment, normalize, random erasing, mixup/cutmix), in images/s.

    python bench/input_pipeline.py                      # 1 worker process, 224 px
    python bench/input_pipeline.py --workers 0 2        # in-process, then 2 worker processes

Writes ``--images`` synthetic 500x375 JPEGs (ImageNet's typical size, ~100 KB:
smooth colour fields plus noise, so the decoder does real work) into a
temporary image folder, then times ``create_train_loader`` batches after the
first (which includes worker start-up). Prints one JSON line per setting.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vheat_jax.data import create_train_loader
from vheat_jax.train.config import default_config


def write_jpegs(root: Path, count: int, num_classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500] / 100.0
    for i in range(count):
        folder = root / "train" / f"class_{i % num_classes}"
        folder.mkdir(parents=True, exist_ok=True)
        phases = rng.uniform(0, 6.3, (3, 2))
        smooth = np.stack([np.sin(x + a) * np.cos(y + b) for a, b in phases], -1) * 80 + 128
        pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="grain worker processes (0: in-process)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12, help="timed batches after the first")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_jpegs(root, args.images)
        mean_kb = np.mean([p.stat().st_size for p in root.rglob("*.jpg")]) / 1024
        for workers in args.workers:
            config = default_config()
            config.data_dir = str(root)
            config.num_classes = 4
            config.image_size = args.image_size
            config.global_batch_size = args.batch
            config.num_workers = workers
            iterator = iter(create_train_loader(config, process_index=0, process_count=1))
            next(iterator)
            start = time.perf_counter()
            for _ in range(args.batches):
                next(iterator)
            images_per_s = args.batches * args.batch / (time.perf_counter() - start)
            print(
                json.dumps(
                    {
                        "workers": workers,
                        "image_size": args.image_size,
                        "batch": args.batch,
                        "mean_jpeg_kb": round(mean_kb, 1),
                        "images_per_s": round(images_per_s, 1),
                        "images_per_s_per_worker": round(images_per_s / max(workers, 1), 1),
                        "augmentation": "rrc+flip+randaug(m9,mstd0.5,inc1)+reprob0.25+mixup0.8/cutmix1.0",
                    }
                ),
                flush=True,
            )
            del iterator


if __name__ == "__main__":
    main()
