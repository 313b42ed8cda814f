"""Embedded detection demo: a tiny Mask R-CNN-vHeat on procedurally generated shapes, through the same code.

    python det_train.py --config configs/det_demo_shapes.py --workdir /tmp/det_demo

600 train / 100 val images of 128x128 (ellipses, rectangles, triangles on textured
backgrounds, COCO JSON + PNG, fixed seed) are written once to
``<workdir>/data/shapes``. bench/det_demo.py runs it and reports box / mask mAP and
the training time.

Differences from the COCO recipe, and why: a tiny backbone trained from scratch
(no ImageNet weights on the demo) needs a larger learning rate and a short
warm-up; images are already at their test size (scale (128, 128)); smaller heads
and fewer proposals / sampled RoIs keep a CPU step short.
"""

from vheat_jax.det.config import default_config


def get_config():
    config = default_config()
    config.dataset = "shapes"
    config.train_split = "train"
    config.eval_split = "val"
    config.train_scales = ((128, 128),)
    config.test_scale = (128, 128)
    config.max_gt = 4
    config.global_batch_size = 8
    config.num_workers = 2

    config.model.name = "vheat_tiny"
    config.model.dims = 16
    config.model.depths = (1, 1, 2, 1)
    config.model.img_size = 128
    config.model.drop_path_rate = 0.0
    config.num_classes = 3
    config.model.fpn_channels = 48
    config.model.rpn_feat_channels = 48
    config.model.fc_channels = 128
    config.model.mask_channels = 48

    config.rpn_proposal_nms_pre = 1000
    config.rpn_proposal_max_per_img = 300
    config.rcnn_sampler_num = 64
    config.rpn_test_nms_pre = 1000
    config.rpn_test_max_per_img = 300

    config.optimizer.lr = 2e-3
    config.optimizer.warmup_iters = 50
    config.optimizer.warmup_factor = 0.01
    config.optimizer.milestones_epochs = (6, 7)
    config.optimizer.grad_clip_norm = 10.0
    config.num_epochs = 8.0
    config.eval_every_epochs = 4.0
    config.log_every_steps = 25
    config.checkpoint_every_steps = 300
    return config
