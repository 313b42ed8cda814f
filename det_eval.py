#!/usr/bin/env python
"""COCO box / mask mAP of an mmdetection Mask R-CNN-vHeat checkpoint. See --help and docs/detection.md."""

from vheat_jax.cli.det_eval import run

if __name__ == "__main__":
    run()
