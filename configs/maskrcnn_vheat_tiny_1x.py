"""Mask R-CNN 1x on COCO with the vHeat-T backbone: the official recipe (paper: 45.1 box mAP).

    python det_train.py --config configs/maskrcnn_vheat_tiny_1x.py --workdir /ckpt/mrcnn_t_1x \
        --config.data_dir=/data/coco --config.init_from=vHeat_tiny.pth

mmdetection's ``mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py`` schedule with the vHeat
backbone: 12 epochs, 16 images per step (mmdetection: 8 GPUs x 2; our loss is
normalised over groups of ``loss_group_size = 2`` images exactly as mmdetection's
per-GPU loss), AdamW lr 1e-4 / wd 0.05 (none on parameters named ``norm``),
linear warm-up from 0.001x over 1000 iterations, x0.1 at epochs 8 and 11;
(1333, 800) keep-ratio resize + horizontal flip; backbone drop path 0.1.
Pass ``:small`` or ``:base`` for vHeat-S / vHeat-B (drop path 0.3 / 0.5, paper 46.8 / 47.7).
"""

from vheat_jax.det.config import default_config

BACKBONES = {"tiny": ("vheat_tiny", 0.1), "small": ("vheat_small", 0.3), "base": ("vheat_base", 0.5)}


def get_config(variant: str = "tiny"):
    config = default_config()
    config.model.name, config.model.drop_path_rate = BACKBONES[variant]
    return config
