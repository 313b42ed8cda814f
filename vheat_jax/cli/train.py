"""``train.py`` (and ``seg_train.py`` / ``det_train.py``): one command for every task; the config picks it.

    python train.py --config configs/digits_demo.py --workdir /tmp/digits          # classification
    python train.py --config configs/seg_demo.py --workdir /tmp/seg_demo           # segmentation (config.task)
    python train.py --config configs/det_demo_shapes.py --workdir /tmp/det_demo    # detection
    python train.py --config configs/vheat_t.py --workdir gs-or-nfs/runs/vheat_t \\
        --config.data_dir=/data/imagenet --config.global_batch_size=1024

Re-running the same command resumes from the latest checkpoint in --workdir. SIGTERM or
Ctrl-C saves a checkpoint and exits 0 (a second Ctrl-C stops at once). With several
processes, every process runs the same command with the same --workdir, on a file
system they all see.
"""

from __future__ import annotations

import json

from absl import flags, logging

from vheat_jax.cli import common

flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, metrics.jsonl and exports go here "
                    "(required; an existing one is resumed).")


def _summary(result: dict) -> str:
    return json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()
                       if isinstance(v, (int, float, bool, str))})


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        common.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
    if not flags.FLAGS.workdir:
        common.fail("--workdir is required (where checkpoints and logs go; an existing one is resumed)")
    # Imported after flag parsing: nothing may touch a JAX device before jax.distributed.initialize,
    # which train_and_evaluate calls first.
    from vheat_jax.train.loop import train_and_evaluate

    result = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    if result.get("preempted"):
        logging.info("stopped by preemption at step %d; re-run the same command to resume", result["step"])
    else:
        logging.info("final: %s", _summary(result))


def run(default_config: str = "configs/digits_demo.py", doc: str = __doc__) -> None:
    common.run(main, doc=doc, module_name=__name__, config_default=default_config, reexec_huge_pages=True)
