#!/usr/bin/env python
"""Compiles the train step for a TPU slice on this machine and prints per-chip memory and FLOPs (JSON).

    pip install -e ".[tpu-aot]"
    python aot_compile.py --config configs/vheat_b.py --topology v5e:16x16 --config.global_batch_size=4096
    python aot_compile.py --config configs/vheat_t.py --topology v4:2x2x4      # a v4-32 slice

libtpu prints warnings about missing TPU environment variables; they are harmless here.
"""

import json

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Training config file (path[:argument]).", lock_config=False)
flags.DEFINE_string("topology", "v5e:4x4", "TPU topology name, e.g. v5e:16x16, v4:2x2x4, v5p:4x4x4.")
flags.DEFINE_string("compute_dtype", "bfloat16", "Compute dtype on the TPU (the config's 'auto' means CPU here).")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    from vheat_jax.train.aot import compile_for_topology

    config = flags.FLAGS.config
    config.compute_dtype = flags.FLAGS.compute_dtype
    print(json.dumps(compile_for_topology(config, flags.FLAGS.topology)), flush=True)


if __name__ == "__main__":
    app.run(main)
