#!/usr/bin/env python
"""Trains Mask R-CNN-vHeat (see configs/maskrcnn_*.py, configs/det_demo_shapes.py and docs/detection.md).

    python det_train.py --config configs/det_demo_shapes.py --workdir /tmp/det_demo
    python det_train.py --config configs/maskrcnn_vheat_tiny_1x.py --workdir /ckpt/mrcnn_t_1x \
        --config.data_dir=/data/coco --config.init_backbone_from=vHeat_tiny.pth

Re-running the same command resumes from the latest checkpoint in --workdir.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/det_demo_shapes.py", "Detection config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs and metrics.jsonl go here.")
flags.DEFINE_string("export", None, "Also write the final detector as an mmdetection checkpoint (.pth).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from vheat_jax.det.trainer import TrainingDivergedError, export, train_and_evaluate

    try:
        result = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except TrainingDivergedError as err:
        sys.exit(f"error: {err}")
    if flags.FLAGS.export:
        export(result, flags.FLAGS.export)
    summary = {k: v for k, v in result.items() if isinstance(v, (int, float, bool))}
    logging.info("final: %s", json.dumps(summary))


if __name__ == "__main__":
    from vheat_jax import runtime

    runtime.reexec_with_huge_pages()  # faster XLA:CPU steps; see vheat_jax/runtime.py
    app.run(main)
