#!/usr/bin/env python
"""Trains UperNet-vHeat for semantic segmentation. See docs/segmentation.md.

    python seg_train.py --config configs/seg_demo.py --workdir /tmp/seg_demo
    python seg_train.py --config configs/upernet_vheat_tiny_ade20k.py --workdir /ckpt/upernet_t \
        --config.data_dir=/data/ADEChallengeData2016 --config.init_from=/ckpt/vHeat_tiny.pth

Re-running the same command resumes from the latest checkpoint in --workdir.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/seg_demo.py", "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, metrics.jsonl and the exported .pth go here.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Imported after flag parsing: nothing may touch a device before jax.distributed.initialize.
    from vheat_jax.seg.trainer import train_and_evaluate
    from vheat_jax.train.trainer import TrainingDivergedError

    try:
        result = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except TrainingDivergedError as err:
        sys.exit(f"error: {err}")
    logging.info("final: %s", json.dumps(result))


if __name__ == "__main__":
    from vheat_jax import runtime

    runtime.reexec_with_huge_pages()  # faster XLA:CPU steps; see vheat_jax/runtime.py
    app.run(main)
