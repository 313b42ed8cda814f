"""``seg_eval.py``: aAcc, mIoU and mAcc of UperNet-vHeat with mmseg's test pipeline; prints JSON.

    python seg_eval.py --config configs/upernet_vheat_tiny_ade20k.py --checkpoint upernet_vheat_tiny.pth \\
        --config.data_dir=/data/ADEChallengeData2016
    python seg_eval.py --config configs/seg_demo.py --checkpoint /tmp/seg_demo     # a training workdir

--checkpoint is an mmseg .pth (official or exported) or a workdir of seg_train.py (its latest checkpoint).
The test mode, crop, stride and resize scale come from config.test (e.g. --config.test.mode=whole).
"""

from __future__ import annotations

import json

from absl import flags

from vheat_jax import runtime
from vheat_jax.cli import common
from vheat_jax.paths import as_path, check_supported

flags.DEFINE_string("checkpoint", None, "mmseg .pth, or a training workdir (its latest checkpoint). Required.")
flags.DEFINE_bool("per_class", False, "Also print per-class IoU and accuracy.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        common.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
    checkpoint = flags.FLAGS.checkpoint
    if not checkpoint:
        common.fail("--checkpoint is required (an mmseg .pth or a seg_train.py workdir)")
    check_supported(checkpoint, "--checkpoint")
    if not as_path(checkpoint).exists():
        common.fail(f"--checkpoint {checkpoint}: no such file or directory")
    from vheat_jax.seg.evaluation import evaluate, inference_config, load_for_evaluation
    from vheat_jax.seg.inference import Segmenter
    from vheat_jax.train import distributed

    config = flags.FLAGS.config
    if config.get("compilation_cache", False):
        runtime.enable_compilation_cache(runtime.LOCAL_CACHE)
    distributed.maybe_initialize(config.distributed)
    model, variables = load_for_evaluation(config, checkpoint)
    results = evaluate(Segmenter(model, variables, inference_config(config)), config, per_class=flags.FLAGS.per_class)
    print(json.dumps(results))


def run() -> None:
    common.run(main, doc=__doc__, module_name=__name__, config_default="configs/upernet_vheat_tiny_ade20k.py")
