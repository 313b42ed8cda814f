#!/usr/bin/env python
"""Trains a vHeat classifier. See configs/*.py for recipes and README "Training" for launches.

    python train.py --config configs/digits_demo.py --workdir /tmp/digits
    python train.py --config configs/vheat_t.py --workdir /shared/runs/vheat_t \
        --config.data_dir=/data/imagenet --config.global_batch_size=1024

Re-running the same command resumes from the latest checkpoint in --workdir. With
several processes, every process passes the same --workdir, on a file system they
all see (NFS, Filestore, a gcsfuse mount).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file(
    "config", "configs/digits_demo.py", "Training config file (path[:argument]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs and metrics.jsonl go here.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Imported after flag parsing: nothing may touch a JAX device before
    # jax.distributed.initialize, which train_and_evaluate calls first.
    from vheat_jax.train.trainer import TrainingDivergedError, train_and_evaluate

    try:
        result = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except TrainingDivergedError as err:
        sys.exit(f"error: {err}")  # one line on stderr, exit status 1
    if result.get("preempted"):
        logging.info("stopped by preemption at step %d; re-run the same command to resume", result["step"])
    elif "top1" in result:
        logging.info(
            "final: step %d | top-1 %.2f%% top-5 %.2f%% | EMA top-1 %.2f%% top-5 %.2f%%",
            result["step"],
            result["top1"],
            result["top5"],
            result["ema_top1"],
            result["ema_top5"],
        )


if __name__ == "__main__":
    from vheat_jax import runtime

    runtime.reexec_with_huge_pages()  # faster XLA:CPU steps; see vheat_jax/runtime.py
    app.run(main)
