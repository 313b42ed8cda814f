#!/usr/bin/env python
"""Trains the embedded detection demo (configs/det_demo_shapes.py) and prints its box / mask mAP and time as JSON.

    python bench/det_demo.py --workdir /tmp/det_demo       # fresh workdir: trains from scratch

The same code path as COCO training: COCO JSON + PNG data set (written with a fixed seed),
pycocotools loading, the jitted Mask R-CNN train step, COCOeval on the val split.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/det_demo_bench")
    parser.add_argument("--keep", action="store_true", help="resume from an existing workdir instead of clearing it")
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from absl import logging

    from configs.det_demo_shapes import get_config
    from vheat_jax.train.loop import train_and_evaluate

    logging.set_verbosity(logging.WARNING)
    workdir = Path(args.workdir)
    if workdir.exists() and not args.keep:
        shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    config = get_config()
    for item in overrides:  # --name=value for top-level fields, values as JSON (or plain strings)
        name, value = item.lstrip("-").split("=", 1)
        try:
            config[name] = json.loads(value)
        except json.JSONDecodeError:
            config[name] = value
    start = time.perf_counter()
    result = train_and_evaluate(config, workdir)
    total = time.perf_counter() - start
    print(json.dumps({
        "benchmark": "det_demo_shapes", "steps": result["step"],
        "total_seconds_incl_data_and_eval": round(total, 1),
        **{k: round(v, 4) for k, v in result.items() if k.startswith(("bbox_", "segm_"))},
    }))


if __name__ == "__main__":
    main()
