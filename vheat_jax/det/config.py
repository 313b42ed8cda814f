"""Every field the detection trainer reads, with the official vHeat Mask R-CNN 1x recipe as defaults.

The recipe is mmdetection's ``mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py``, which the
official vHeat detection configs follow: 12 epochs, global batch 16 (8 GPUs x 2),
AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05 except parameters whose name
contains ``norm``, ``LinearLR(start_factor=0.001)`` over the first 1000
iterations, ``MultiStepLR`` x0.1 at epochs 8 and 11, train scale (1333, 800)
keep-ratio with horizontal flip 0.5, test scale (1333, 800). ``configs/`` holds
the 1x and 3x (multi-scale) recipes and the embedded demo.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from vheat_jax.train.config import base_config

# mmdetection's 3x multi-scale recipe: short side from 480 to 800 in steps of 32, long side 1333.
MULTISCALE_3X = tuple((1333, short) for short in range(480, 801, 32))


def default_config() -> ml_collections.ConfigDict:
    config = base_config("detection")

    # --- Data ---
    config.dataset = "coco"  # "coco" (COCO layout, pycocotools) | "shapes" (embedded demo)
    config.train_split = "train2017"  # data_dir is the COCO root: train2017/, val2017/, annotations/
    config.eval_split = "val2017"
    config.num_classes = 80
    config.train_scales = ((1333, 800),)  # keep-ratio resize, one chosen at random per image
    config.test_scale = (1333, 800)
    config.flip_prob = 0.5
    config.max_gt = 100  # ground-truth slots per image (COCO's largest image has 93 non-crowd objects)
    config.global_batch_size = 16
    config.loss_group_size = 2  # images per loss normalisation group: mmdetection's images per GPU
    config.num_workers = 8  # loader threads per process

    # --- Model: config.model.name is the backbone variant; dims, depths, post_norm, layer_scale override it ---
    config.model.update(dict(
        img_size=224,  # frequency-embedding size of the backbone (its pre-training size)
        drop_path_rate=0.1,
        fpn_channels=256,
        rpn_feat_channels=256,
        fc_channels=1024,
        mask_channels=256,
    ))
    # init_from: an mmdetection checkpoint (whole detector), else an ImageNet vHeat checkpoint
    # (backbone only; .pth / converted); empty: random.
    config.init_adapt_method = "zero_pad"  # the official interpolate4downstream.py recipe

    # --- Optimizer and schedule ---
    config.optimizer = ml_collections.ConfigDict(dict(
        lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
        warmup_iters=1000, warmup_factor=0.001, milestones_epochs=(8, 11), gamma=0.1,
        grad_clip_norm=0.0,
    ))
    config.num_epochs = 12.0

    # --- Static capacities of the training graph (mmdetection's train_cfg otherwise) ---
    config.rpn_proposal_nms_pre = 2000
    config.rpn_proposal_max_per_img = 1000
    config.rcnn_sampler_num = 512
    config.rpn_test_nms_pre = 1000
    config.rpn_test_max_per_img = 1000

    # --- Evaluation ---
    config.eval_max_images = config_dict.placeholder(int)
    return config
