"""Every field the segmentation trainer reads; defaults are the official UperNet-vHeat-T ADE20K recipe.

Official: ``segmentation/configs/vheat/upernet_vheat_160k_ade20k_512x512_tiny.py`` of
MzeroMiko/vHeat (its latest version: pre-norm, no layer scale, drop path 0.3; small
0.4 and base 0.5 in their files), on mmseg's ``upernet_swin`` model, ADE20K data,
160k schedule and the Swin UperNet optimizer (see :mod:`vheat_jax.seg.optim`): 8 GPUs x 2
images = global batch 16, 512 x 512 crops, 160,000 iterations, evaluation and
checkpoints every 16,000, slide inference 512 / 341.
"""

from __future__ import annotations

import ml_collections

from vheat_jax.train.config import base_config


def default_config() -> ml_collections.ConfigDict:
    config = base_config("segmentation")

    # --- Data ---
    config.dataset = "ade20k"  # "ade20k" (ADEChallengeData2016 folder) | "tfds" | "synthetic"
    config.tfds_name = "scene_parse150"
    config.num_classes = 150
    config.reduce_zero_label = True  # ADE20K: label 0 ("other") is ignored, 1..150 -> 0..149
    config.synthetic = ml_collections.ConfigDict()  # ShapesSource arguments when dataset == "synthetic"
    config.global_batch_size = 16
    config.num_workers = 4  # grain worker processes per host
    config.aug = ml_collections.ConfigDict({
        "scale": (2048, 512), "ratio_range": (0.5, 2.0), "crop_size": (512, 512), "cat_max_ratio": 0.75,
        "flip_prob": 0.5, "photometric": True})

    # --- Model: config.model.name is the backbone variant; dims, depths, post_norm, layer_scale override it ---
    config.model.update({
        "img_size": 512,  # frequency embeddings are sized for this input
        "channels": 512, "aux_channels": 256, "pool_scales": (1, 2, 3, 6), "dropout_ratio": 0.1,
        "drop_path_rate": 0.3})
    config.aux_loss_weight = 0.4

    # --- Optimizer (vheat_jax.seg.optim) ---
    config.optimizer = ml_collections.ConfigDict({
        "lr": 6e-5, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.01, "no_decay_keys": ("norm",),
        "warmup_steps": 1500, "warmup_start_factor": 1e-6, "power": 1.0, "grad_clip_norm": 0.0})

    # --- Durations ---
    config.num_steps = 160_000
    config.eval_every_steps = 16_000
    config.checkpoint_every_steps = 16_000
    config.log_every_steps = 50

    # --- Evaluation (mmseg test_cfg and test pipeline) ---
    config.test = ml_collections.ConfigDict({
        "mode": "slide", "crop_size": (512, 512), "stride": (341, 341), "scale": (2048, 512)})

    # --- Initialisation: init_from is an ImageNet checkpoint (ours: Orbax dir / .msgpack; official .pth)
    # or an mmseg UperNet .pth ---
    config.init_adapt_method = "zero_pad"  # the official interpolate4downstream.py recipe
    return config
