"""``predict.py``: what a model sees in your images: top-5 classes, or segmentation / detection overlays.

    python predict.py --checkpoint vHeat_tiny.pth cat.jpg dog.jpg                    # top-5 per image (JSON)
    python predict.py --config configs/digits_demo.py --checkpoint /tmp/vheat_digits some_digit.png
    python predict.py --checkpoint /tmp/seg_demo/upernet_mmseg.pth --out /tmp/pred photo.png
    python predict.py --checkpoint /tmp/det_demo/maskrcnn_mmdet.pth --out /tmp/pred photo.png

The checkpoint says the task: an mmsegmentation UperNet .pth writes OUT/<image>_seg.png (the
class map blended over the image), an mmdetection Mask R-CNN .pth writes OUT/<image>_det.png
(masks, boxes, class and score); anything eval.py reads (official classification .pth,
convert_torch.py output, a train.py workdir with its --config) prints one JSON line per image
with the top-5 classes (--labels names them).
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import flags

from vheat_jax.cli import common
from vheat_jax.paths import as_path, check_output, check_supported

flags.DEFINE_string("checkpoint", None, "A classification checkpoint (as eval.py), an mmseg UperNet .pth or an "
                    "mmdet Mask R-CNN .pth. Required.")
flags.DEFINE_string("out", "predictions", "Folder for the segmentation and detection overlays.")
flags.DEFINE_integer("top_k", 5, "Classes listed per image (classification).")
flags.DEFINE_string("labels", None, "Text file with one class name per line (classification).")
flags.DEFINE_float("score_thr", 0.3, "Smallest score of a drawn detection.")
flags.DEFINE_bool("ema", False, "Use the EMA weights (classification checkpoints that have them).")
flags.DEFINE_string("scale", "1333,800", "Detection test scale, long,short (the demo's: 128,128).")


def main(argv: list[str]) -> None:
    images = argv[1:]
    FLAGS = flags.FLAGS
    if not FLAGS.checkpoint:
        common.fail("--checkpoint is required (see --help)")
    if not images:
        common.fail("give one or more image files after the flags (see --help)")
    check_supported(FLAGS.checkpoint, "--checkpoint")
    if not as_path(FLAGS.checkpoint).exists():
        common.fail(f"--checkpoint {FLAGS.checkpoint}: no such file or directory")
    missing = [image for image in images if not Path(image).is_file()]
    if missing:
        common.fail(f"no such image file: {', '.join(missing)}")
    try:
        scale = tuple(int(v) for v in FLAGS.scale.split(","))
    except ValueError:
        common.fail(f"--scale={FLAGS.scale}: expected two integers, long,short (e.g. 1333,800)")
    from vheat_jax.cli import predictions
    from vheat_jax.convert import checkpoint_kind

    kind = checkpoint_kind(FLAGS.checkpoint)
    if kind == "classification":
        labels = Path(FLAGS.labels).read_text().splitlines() if FLAGS.labels else None
        classifier = predictions.Classifier.load(FLAGS.checkpoint, FLAGS.config, ema=FLAGS.ema)
        for image in images:
            print(json.dumps({"image": image, "top": classifier.top_k(image, FLAGS.top_k, labels)}), flush=True)
        return
    out = as_path(FLAGS.out)
    check_output(out / "overlay.png", "--out")
    draw = predictions.segmentation_overlays if kind == "segmentation" else predictions.detection_overlays
    for image, written in zip(images, draw(FLAGS.checkpoint, images, out, score_thr=FLAGS.score_thr,
                                           scale=scale)):
        print(json.dumps({"image": image, "overlay": str(written)}), flush=True)


def run() -> None:
    common.run(main, doc=__doc__, module_name=__name__, config_default="configs/vheat_t.py")
