#!/usr/bin/env python
"""Trains Mask R-CNN-vHeat (the same command as train.py, with the detection demo as default).

    python det_train.py --config configs/det_demo_shapes.py --workdir /tmp/det_demo
    python det_train.py --config configs/maskrcnn_vheat_tiny_1x.py --workdir /ckpt/mrcnn_t_1x \\
        --config.data_dir=/data/coco --config.init_from=vHeat_tiny.pth

A finished run writes WORKDIR/maskrcnn_mmdet.pth (mmdetection layout; det_eval.py reads it).
"""

from vheat_jax.cli.train import run

if __name__ == "__main__":
    run("configs/det_demo_shapes.py", __doc__)
