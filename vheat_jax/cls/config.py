"""Every field the classification trainer reads; defaults are the official ImageNet-1k recipe.

The recipe is the official ``classification/configs`` of vHeat (which follow the Swin
Transformer trainer): 300 epochs, 20 warm-up epochs, AdamW (0.9, 0.999,
eps 1e-8), base lr 5e-4 / warm-up lr 5e-7 / min lr 5e-6 per 512 images (scaled
linearly with the global batch), cosine decay per step, weight decay 0.08,
gradient clipping at global norm 5, label smoothing 0.1, RandAugment
``rand-m9-mstd0.5-inc1``, mixup 0.8 / cutmix 1.0, random erasing 0.25, EMA
0.9999, global batch 2048 at 224 px. Config files (``configs/*.py``) start from
:func:`default_config` and change what differs.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from vheat_jax.train.config import base_config


def default_config() -> ml_collections.ConfigDict:
    """The official ImageNet-1k classification recipe (vHeat-T's drop path)."""
    config = base_config("classification")

    # --- Data (the names vheat_jax.cls.data reads) ---
    config.dataset = "imagefolder"  # "imagefolder" | "tfds" | "digits"
    config.tfds_name = "imagenet2012"
    config.num_classes = 1000
    config.image_size = 224
    config.global_batch_size = 2048
    config.eval_batch_size = 1024
    config.num_workers = 8  # grain worker processes per host
    config.max_undecodable_fraction = 0.01  # of an epoch's (or the eval split's) images; past it the run stops
    config.aug = ml_collections.ConfigDict(
        dict(
            random_resized_crop=True,
            hflip=True,
            randaug="rand-m9-mstd0.5-inc1",
            color_jitter=0.4,  # ignored by the pipeline while randaug is on (as timm)
            reprob=0.25,
            remode="pixel",
            mixup=0.8,
            cutmix=1.0,
            mixup_prob=1.0,
            mixup_switch_prob=0.5,
            mixup_mode="batch",
            label_smoothing=0.1,
            crop_pct=0.875,
        )
    )

    # --- Optimizer ---
    config.optimizer = ml_collections.ConfigDict(
        dict(
            base_lr=5e-4,  # per lr_reference_batch images
            warmup_lr=5e-7,
            min_lr=5e-6,
            lr_reference_batch=512,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.08,
            grad_clip_norm=5.0,  # 0 disables clipping
        )
    )
    config.grad_accum_steps = 1
    config.ema_decay = 0.9999

    # --- Durations ---
    config.num_epochs = 300.0
    config.warmup_epochs = 20.0
    config.warmup_steps = config_dict.placeholder(int)
    config.log_every_steps = 100
    return config


def imagenet_config(model_name: str, drop_path_rate: float, data: str = "imagefolder") -> ml_collections.ConfigDict:
    """The official recipe for one variant; ``data`` is "imagefolder" (class folders) or "tfds" (imagenet2012)."""
    config = default_config()
    if data == "tfds":
        config.dataset = "tfds"
        config.tfds_name = "imagenet2012"
        config.eval_split = "validation"
    elif data != "imagefolder":
        raise ValueError(f"unknown data preset {data!r}; append :imagefolder or :tfds to the config path")
    config.model.name = model_name
    config.model.drop_path_rate = drop_path_rate
    return config
