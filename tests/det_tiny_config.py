"""A tiny detection config for the trainer tests: 8-wide Mask R-CNN on 16 shapes images of 64x64 (CPU, seconds)."""

from vheat_jax.det.config import default_config


def get_config():
    config = default_config()
    config.dataset = "shapes"
    config.shapes = {"num_train": 16, "num_val": 2, "size": 64}
    config.train_split, config.eval_split = "train", "val"
    config.train_scales, config.test_scale = ((64, 64),), (64, 64)
    config.max_gt = 4
    config.global_batch_size, config.loss_group_size, config.num_workers = 4, 2, 1
    config.num_classes = 3
    config.model.dims, config.model.depths = 8, (1, 1, 1, 1)
    config.model.img_size = 64
    config.model.fpn_channels = config.model.rpn_feat_channels = config.model.mask_channels = 16
    config.model.fc_channels = 32
    config.compute_dtype = "float32"
    config.rpn_proposal_nms_pre, config.rpn_proposal_max_per_img, config.rcnn_sampler_num = 300, 100, 32
    config.rpn_test_nms_pre, config.rpn_test_max_per_img = 300, 100
    config.optimizer.lr, config.optimizer.warmup_iters, config.optimizer.warmup_factor = 1e-3, 2, 0.1
    config.num_steps, config.eval_every_steps, config.checkpoint_every_steps = 6, 1000, 2
    config.log_every_steps, config.keep_checkpoints = 1, 10
    return config
