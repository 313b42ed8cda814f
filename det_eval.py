#!/usr/bin/env python
"""COCO box / mask mAP of an mmdetection Mask R-CNN-vHeat checkpoint, through pycocotools.

    python det_eval.py --checkpoint mask_rcnn_vheat_tiny_1x.pth --data_dir /data/coco
    python det_eval.py --checkpoint demo.pth --data_dir /tmp/det_demo/data/shapes --split val --scale 128,128

Images go through mmdetection's test pipeline (keep-ratio resize into --scale, pad to 32);
results are written as COCO result JSON (--results) and scored with COCOeval.
"""

import argparse
import json
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="mmdetection .pth (or one written by det_train.py --export)")
    parser.add_argument("--data_dir", required=True, help="COCO root with <split>/ and annotations/")
    parser.add_argument("--split", default="val2017")
    parser.add_argument("--scale", default="1333,800", help="test scale (long,short)")
    parser.add_argument("--max_images", type=int, default=None)
    parser.add_argument("--post_norm", choices=["auto", "true", "false"], default="auto",
                        help="backbone blocks (dense checkpoints do not say; auto: post-norm iff layer scale)")
    parser.add_argument("--results", default=None, help="write the COCO results JSON here")
    args = parser.parse_args()

    import jax

    from vheat_jax.det import detector
    from vheat_jax.det.checkpoint import read_mmdet_checkpoint
    from vheat_jax.det.data import CocoSource
    from vheat_jax.det.evaluate import run_coco_eval
    from vheat_jax.det.model import MaskRCNN

    post_norm = {"auto": None, "true": True, "false": False}[args.post_norm]
    config, arch, params, _ = read_mmdet_checkpoint(args.checkpoint, post_norm=post_norm)
    model = MaskRCNN(config, arch)
    predict = jax.jit(lambda p, x, hw: detector.predict(model, {"params": p}, x, hw))
    source = CocoSource(args.data_dir, args.split, train=False)
    scale = tuple(int(v) for v in args.scale.split(","))
    start = time.perf_counter()
    metrics, results = run_coco_eval(lambda x, hw: jax.device_get(predict(params, x, hw)), source, scale=scale,
                                     mask_thr=config.rcnn_test.mask_thr_binary, max_images=args.max_images)
    metrics["seconds"] = time.perf_counter() - start
    if args.results:
        with open(args.results, "w") as f:
            json.dump(results, f)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
