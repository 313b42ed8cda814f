#!/usr/bin/env python
"""Evaluates UperNet-vHeat (aAcc, mIoU, mAcc) with mmseg's test pipeline; prints JSON. See docs/segmentation.md.

    python seg_eval.py --config configs/upernet_vheat_tiny_ade20k.py --checkpoint upernet_vheat_tiny.pth \
        --config.data_dir=/data/ADEChallengeData2016
    python seg_eval.py --config configs/seg_demo.py --checkpoint /tmp/seg_demo     # a training workdir

--checkpoint is an mmseg .pth (official or exported) or a workdir of seg_train.py (its latest checkpoint).
The test mode, crop, stride and resize scale come from config.test (e.g. --config.test.mode=whole).
"""

import json

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/upernet_vheat_tiny_ade20k.py", "Config (data and test settings).",
                                lock_config=True)
flags.DEFINE_string("checkpoint", None, "mmseg .pth or training workdir.")
flags.DEFINE_bool("per_class", False, "Also print per-class IoU and accuracy.")
flags.mark_flags_as_required(["checkpoint"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from vheat_jax.seg.evaluation import evaluate, inference_config, load_for_evaluation
    from vheat_jax.seg.inference import Segmenter
    from vheat_jax.train import distributed

    config = flags.FLAGS.config
    distributed.maybe_initialize(config.distributed)
    model, variables = load_for_evaluation(config, flags.FLAGS.checkpoint)
    results = evaluate(Segmenter(model, variables, inference_config(config)), config, per_class=flags.FLAGS.per_class)
    print(json.dumps(results))


if __name__ == "__main__":
    app.run(main)
