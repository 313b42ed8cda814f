"""Embedded segmentation demo: a tiny UperNet-vHeat on procedurally generated shapes, from scratch, on CPU.

    python seg_train.py --config configs/seg_demo.py --workdir /tmp/seg_demo
    python bench/seg_demo.py            # the same run, timed, printing JSON

Same trainer, pipeline, losses and mmseg-style evaluation as ADE20K; what differs and why:
96 x 128 images and 64 x 64 crops (random resize around (128, 96)), slide inference with
the official crop / stride ratio scaled to 64 / 43; a 16-wide backbone (depths 1-1-2-1)
and 32 / 16-channel heads; no pre-training, so a from-scratch learning rate (2e-3) with a
short warm-up; 5 classes without reduce_zero_label.
"""

from vheat_jax.seg.config import default_config


def get_config():
    config = default_config()
    config.dataset = "synthetic"
    config.synthetic = {"num_train": 2000, "num_val": 100, "height": 96, "width": 128, "seed": 0}
    config.num_classes = 5
    config.reduce_zero_label = False
    config.global_batch_size = 16
    config.num_workers = 0

    config.aug.scale = (128, 96)
    config.aug.crop_size = (64, 64)

    config.model.name = "vheat_tiny"
    config.model.dims, config.model.depths = 16, (1, 1, 2, 1)
    config.model.img_size = 64
    config.model.channels = 32
    config.model.aux_channels = 16
    config.model.drop_path_rate = 0.1

    config.optimizer.lr = 2e-3
    config.optimizer.warmup_steps = 50
    config.num_steps = 600
    config.eval_every_steps = 300
    config.checkpoint_every_steps = 300
    config.log_every_steps = 50
    config.keep_checkpoints = 1

    config.test.crop_size = (64, 64)
    config.test.stride = (43, 43)
    config.test.scale = (128, 96)
    return config
