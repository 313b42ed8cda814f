"""A tiny, deterministic training config for the trainer tests (CPU, seconds per run).

Set ``--config.data_dir`` to a folder written by ``train_support.write_image_folder``.
Augmentation is off so a batch's content does not depend on which process loaded it.
"""

from vheat_jax.cls.config import default_config


def get_config():
    config = default_config()
    config.dataset = "imagefolder"
    config.num_classes = 4
    config.image_size = 32
    config.global_batch_size = 8
    config.eval_batch_size = 8
    config.num_workers = 0
    for name in ("random_resized_crop", "hflip"):
        config.aug[name] = False
    config.aug.randaug = ""
    config.aug.color_jitter = 0.0
    config.aug.reprob = 0.0
    config.aug.mixup = 0.0
    config.aug.cutmix = 0.0
    config.aug.crop_pct = 1.0

    config.model.name = "vheat_tiny"
    config.model.dims = 8
    config.model.depths = (1, 1)  # two stages: downsampling is covered, compiles in half the time
    config.model.drop_path_rate = 0.1
    config.compute_dtype = "float32"

    config.optimizer.base_lr = 1e-3
    config.optimizer.lr_reference_batch = 8
    config.ema_decay = 0.9
    config.num_steps = 6
    config.warmup_steps = 2
    config.eval_every_steps = 1000  # only at the end
    config.checkpoint_every_steps = 2
    config.log_every_steps = 1
    config.keep_checkpoints = 10
    return config
