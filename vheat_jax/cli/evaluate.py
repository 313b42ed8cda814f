"""``eval.py``: top-1/top-5 of a trained or converted vHeat, or its throughput.

    python eval.py --config configs/vheat_t.py --checkpoint vHeat_tiny.pth --config.data_dir=/data/imagenet
    python eval.py --config configs/vheat_t.py --checkpoint WORKDIR --ema     # a trainer workdir
    python eval.py --config configs/vheat_t.py --checkpoint vHeat_tiny.pth --throughput --batch_size=128

Accuracy: the config gives the data (dataset, data_dir, eval_split, image_size,
crop_pct, eval_batch_size); the weights give the architecture (for a workdir,
the config's model). The inference form (decay folded into k_exp) is used
unless --form=train. Prints one JSON object and writes it to --out if given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
from absl import flags

from vheat_jax import paths, runtime
from vheat_jax.cli import common

flags.DEFINE_string("checkpoint", None, "Trainer workdir, convert_torch.py output (dir or .msgpack), or official .pth. "
                    "Optional with --throughput: random weights of the config's model.")
flags.DEFINE_bool("ema", False, "Evaluate the EMA weights (workdir: ema_params; .pth: model_ema).")
flags.DEFINE_enum("post_norm", "auto", ["auto", "true", "false"], "Pre/post-norm when the checkpoint has no config.")
flags.DEFINE_enum("form", "infer", ["infer", "train"], "Inference form (k_exp constants) or training form.")
flags.DEFINE_bool("throughput", False, "Measure images/s on a fixed random batch instead of accuracy.")
flags.DEFINE_integer("batch_size", 64, "Batch for --throughput.")
flags.DEFINE_integer("img_size", None, "Input size (default: config.image_size).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (parameters stay float32).")
flags.DEFINE_integer("warmup", 3, "Warm-up iterations for --throughput.")
flags.DEFINE_integer("iters", 10, "Timed iterations for --throughput (the median is reported).")
flags.DEFINE_string("out", None, "Also write the JSON result to this file.")
flags.DEFINE_string("workdir", "/tmp/vheat_eval", "Where data sets that are materialised on demand (digits) go "
                    "(default: the --checkpoint trainer workdir's own copy, else this).")


def main(argv):
    if len(argv) > 1:
        common.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
    # Before anything creates the JAX backend (see vheat_jax/runtime.py).
    xla_flags = runtime.add_xla_flags(runtime.INFERENCE_XLA_FLAGS)
    from vheat_jax.cls import evaluation  # after flag parsing, as train.py

    FLAGS = flags.FLAGS
    if FLAGS.out:
        paths.check_output(paths.as_path(FLAGS.out), "--out")
    config = FLAGS.config
    if config.get("compilation_cache", False):
        runtime.enable_compilation_cache(runtime.LOCAL_CACHE)
    img_size = FLAGS.img_size or config.image_size
    post_norm = {"auto": None, "true": True, "false": False}[FLAGS.post_norm]
    if FLAGS.checkpoint:
        arch, params, source = evaluation.load_for_eval(FLAGS.checkpoint, config, ema=FLAGS.ema, post_norm=post_norm)
    elif FLAGS.throughput:
        arch, params, source = evaluation.random_init(config)
    else:
        common.fail("--checkpoint is required to measure accuracy (or pass --throughput)")
    model, params = evaluation.prepare_model(arch, params, form=FLAGS.form, img_size=img_size,
                                           dtype=jnp.dtype(FLAGS.dtype))
    result = {"checkpoint": source, "form": FLAGS.form, "img_size": img_size, "dtype": FLAGS.dtype,
              **evaluation.model_cost(model, params, img_size)}
    if FLAGS.throughput:
        result.update(batch_size=FLAGS.batch_size, **evaluation.throughput(
            model, params, batch=FLAGS.batch_size, img_size=img_size, warmup=FLAGS.warmup, iters=FLAGS.iters))
        # What the process ran with, so a number can be reproduced.
        result.update(xla_flags=xla_flags, glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""))
    else:
        if img_size != config.image_size:
            config.unlock().image_size = img_size
        result.update(evaluation.accuracy(model, params, config, Path(_data_root(FLAGS))))
    text = json.dumps(result)
    print(text, flush=True)
    if FLAGS.out:
        Path(FLAGS.out).write_text(text + "\n")


def _data_root(FLAGS) -> str:
    """--workdir, or the trainer workdir being evaluated (its digits copy is reused, not written again)."""
    if not FLAGS["workdir"].present and FLAGS.checkpoint and (Path(FLAGS.checkpoint) / "checkpoints").is_dir():
        return FLAGS.checkpoint
    return FLAGS.workdir


def run() -> None:
    common.run(main, doc=__doc__, module_name=__name__, config_default="configs/vheat_t.py", reexec_huge_pages=True)
