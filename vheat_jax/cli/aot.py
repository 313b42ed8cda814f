"""``aot_compile.py``: compiles the train step for a TPU slice on this machine; prints per-chip memory and FLOPs (JSON).

    pip install -e ".[tpu-aot]"
    python aot_compile.py --config configs/vheat_b.py --topology v5e:16x16 --config.global_batch_size=4096
    python aot_compile.py --config configs/vheat_t.py --topology v4:2x2x4      # a v4-32 slice

libtpu prints warnings about missing TPU environment variables; they are harmless here.
"""

from __future__ import annotations

import json

from absl import flags

from vheat_jax.cli import common

flags.DEFINE_string("topology", "v5e:4x4", "TPU topology name, e.g. v5e:16x16, v4:2x2x4, v5p:4x4x4.")
flags.DEFINE_string("compute_dtype", "bfloat16", "Compute dtype on the TPU (the config's 'auto' means CPU here).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        common.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
    from vheat_jax.cls.aot import compile_for_topology

    config = flags.FLAGS.config
    config.compute_dtype = flags.FLAGS.compute_dtype
    print(json.dumps(compile_for_topology(config, flags.FLAGS.topology)), flush=True)


def run() -> None:
    common.run(main, doc=__doc__, module_name=__name__, config_default="configs/vheat_t.py", lock_config=False)
