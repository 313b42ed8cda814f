"""A tiny segmentation config for the trainer tests: 8-wide UperNet on 16 synthetic 48x64 images (CPU, seconds)."""

from vheat_jax.seg.config import default_config


def get_config():
    config = default_config()
    config.dataset = "synthetic"
    config.synthetic = {"num_train": 16, "num_val": 2, "height": 48, "width": 64}
    config.num_classes, config.reduce_zero_label = 5, False
    config.global_batch_size, config.num_workers = 4, 0
    config.aug.scale, config.aug.crop_size = (64, 48), (32, 32)
    config.model.dims, config.model.depths = 8, (1, 1, 1, 1)
    config.model.img_size, config.model.channels, config.model.aux_channels = 32, 8, 4
    config.compute_dtype = "float32"
    config.optimizer.lr, config.optimizer.warmup_steps = 1e-3, 1
    config.num_steps, config.eval_every_steps, config.checkpoint_every_steps = 6, 1000, 2
    config.log_every_steps, config.keep_checkpoints = 1, 10
    config.test.crop_size, config.test.stride, config.test.scale = (32, 32), (21, 21), (64, 48)
    return config
