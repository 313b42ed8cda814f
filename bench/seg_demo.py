#!/usr/bin/env python
"""Runs the embedded segmentation demo (configs/seg_demo.py) end to end and prints JSON.

    python bench/seg_demo.py [--workdir DIR] [--steps N]

Trains a tiny UperNet-vHeat from scratch on the procedurally generated shapes (same
trainer, pipeline and mmseg-style slide evaluation as ADE20K) and reports the final
validation mIoU / mAcc / aAcc and the wall time. A fresh temporary workdir is used
unless --workdir is given (an existing one resumes).
"""

import argparse
import importlib.util
import json
import logging
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--steps", type=int, default=None, help="override config.num_steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    spec = importlib.util.spec_from_file_location("seg_demo", ROOT / "configs" / "seg_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    if args.steps:
        config.num_steps = args.steps
        config.eval_every_steps = config.checkpoint_every_steps = args.steps

    from vheat_jax.train.loop import train_and_evaluate

    workdir = args.workdir or tempfile.mkdtemp(prefix="seg_demo_")
    start = time.perf_counter()
    result = train_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
    print(json.dumps({
        "steps": result["step"], "mIoU": round(result["mIoU"], 2), "mAcc": round(result["mAcc"], 2),
        "aAcc": round(result["aAcc"], 2), "val_images": result["num_images"], "wall_seconds": round(wall, 1),
        "eval_seconds": round(result["seconds"], 1), "workdir": str(workdir),
        "command": "python bench/seg_demo.py" + (f" --steps {args.steps}" if args.steps else ""),
    }))


if __name__ == "__main__":
    main()
