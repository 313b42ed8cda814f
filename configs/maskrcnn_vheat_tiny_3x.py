"""Mask R-CNN 3x multi-scale on COCO with the vHeat-T backbone (official 3x recipe; ``:small`` for vHeat-S).

    python det_train.py --config configs/maskrcnn_vheat_tiny_3x.py --workdir /ckpt/mrcnn_t_3x \
        --config.data_dir=/data/coco --config.init_from=vHeat_tiny.pth

mmdetection's ``mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py`` schedule: 36 epochs,
x0.1 at epochs 27 and 33, same optimizer and warm-up as 1x; the training image is
resized keeping its ratio to a short side drawn from 480, 512, ..., 800 (long side
<= 1333) with horizontal flip. Not reproduced: mmdetection's second branch of
that recipe (half of the images are first resized to a short side of 400-600,
randomly cropped to 384-600 px and resized again); the crop changes the GT set
per image, which our static-shape loader does not implement yet.
Two padded shapes cover every scale: (800, 1344) and (1344, 800).
"""

from vheat_jax.det.config import MULTISCALE_3X, default_config

BACKBONES = {"tiny": ("vheat_tiny", 0.1), "small": ("vheat_small", 0.3), "base": ("vheat_base", 0.5)}


def get_config(variant: str = "tiny"):
    config = default_config()
    config.model.name, config.model.drop_path_rate = BACKBONES[variant]
    config.train_scales = MULTISCALE_3X
    config.num_epochs = 36.0
    config.optimizer.milestones_epochs = (27, 33)
    return config
