"""``det_eval.py``: COCO box / mask mAP of an mmdetection Mask R-CNN-vHeat checkpoint, through pycocotools.

    python det_eval.py --checkpoint mask_rcnn_vheat_tiny_1x.pth --data_dir /data/coco
    python det_eval.py --checkpoint /tmp/det_demo/maskrcnn_mmdet.pth --data_dir /tmp/det_demo/data/shapes \\
        --split val --scale 128,128

Images go through mmdetection's test pipeline (keep-ratio resize into --scale, pad to 32);
results are written as COCO result JSON (--results) and scored with COCOeval.
"""

from __future__ import annotations

import json
import time

from absl import flags

from vheat_jax import heartbeat
from vheat_jax.cli import common
from vheat_jax.paths import as_path, check_supported, is_remote

flags.DEFINE_string("checkpoint", None, "mmdetection .pth (or WORKDIR/maskrcnn_mmdet.pth of det_train.py). Required.")
flags.DEFINE_string("data_dir", None, "COCO root with <split>/ and annotations/. Required.")
flags.DEFINE_string("split", "val2017", "Split to evaluate.")
flags.DEFINE_string("scale", "1333,800", "Test scale (long,short).")
flags.DEFINE_integer("max_images", None, "Evaluate only the first N images.")
flags.DEFINE_enum("post_norm", "auto", ["auto", "true", "false"],
                  "Backbone blocks (dense checkpoints do not say; auto: post-norm iff layer scale).")
flags.DEFINE_string("results", None, "Also write the COCO results JSON here.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        common.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
    FLAGS = flags.FLAGS
    for name in ("checkpoint", "data_dir"):
        if not FLAGS[name].value:
            common.fail(f"--{name} is required (see --help)")
        check_supported(FLAGS[name].value, f"--{name}")
        if not as_path(FLAGS[name].value).exists():
            common.fail(f"--{name} {FLAGS[name].value}: no such file or directory")
    if is_remote(FLAGS.data_dir):
        common.fail(f"--data_dir {FLAGS.data_dir}: the COCO reader reads local files only; "
                    "copy the data set to this disk")
    try:
        scale = tuple(int(v) for v in FLAGS.scale.split(","))
    except ValueError:
        common.fail(f"--scale={FLAGS.scale}: expected two integers, long,short (e.g. 1333,800)")

    import jax

    from vheat_jax.det import detector
    from vheat_jax.det.checkpoint import read_mmdet_checkpoint
    from vheat_jax.det.data import CocoSource
    from vheat_jax.det.evaluation import run_coco_eval
    from vheat_jax.det.model import MaskRCNN

    post_norm = {"auto": None, "true": True, "false": False}[FLAGS.post_norm]
    config, arch, params, _ = read_mmdet_checkpoint(FLAGS.checkpoint, post_norm=post_norm)
    model = MaskRCNN(config, arch)
    predict = jax.jit(lambda p, x, hw: detector.predict(model, {"params": p}, x, hw))
    source = CocoSource(FLAGS.data_dir, FLAGS.split, train=False)
    start = time.perf_counter()
    count = len(source) if FLAGS.max_images is None else min(FLAGS.max_images, len(source))
    with heartbeat.phase(f"evaluating {count} images of {FLAGS.split} (the first one compiles)"):
        metrics, results = run_coco_eval(lambda x, hw: jax.device_get(predict(params, x, hw)), source, scale=scale,
                                         mask_thr=config.rcnn_test.mask_thr_binary, max_images=FLAGS.max_images)
    metrics["seconds"] = time.perf_counter() - start
    if FLAGS.results:
        with open(FLAGS.results, "w") as f:
            json.dump(results, f)
    print(json.dumps(metrics, indent=1))


def run() -> None:
    common.run(main, doc=__doc__, module_name=__name__)
