"""Detection training pieces: the model from ``config.model``, optimizer with mmdetection's parameter rules,
schedule, state, ``train_step``.

* AdamW (torch semantics = ``optax.adamw``), weight decay skipped exactly where
  mmdetection's ``paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)})``
  skips it: parameters whose *mmdetection key* contains ``norm`` (so the official
  backbone's downsampling LayerNorm, ``layers.{i}.{d}.1``, is decayed like in
  mmdetection, and biases are decayed too).
* Learning rate: ``LinearLR(start_factor, end=warmup_iters)`` then
  ``MultiStepLR(milestones in epochs, gamma)``, per iteration.
* Gradient clipping by global norm when configured (none in the official recipe).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct, traverse_util

from vheat_jax.arch import Arch
from vheat_jax.det.checkpoint import key_table
from vheat_jax.det.losses import detection_loss
from vheat_jax.det.model import MaskRCNN
from vheat_jax.det.model_config import MaskRCNNConfig, RPNTestConfig, SamplerConfig, TrainConfig
from vheat_jax.train.backbone import backbone_arch, runtime_fields


def build_model(config) -> tuple[MaskRCNN, MaskRCNNConfig, Arch]:
    arch = backbone_arch(config, img_size=config.model.img_size, num_classes=None)
    det = MaskRCNNConfig(
        num_classes=config.num_classes, fpn_channels=config.model.fpn_channels,
        rpn_feat_channels=config.model.rpn_feat_channels, fc_channels=config.model.fc_channels,
        mask_channels=config.model.mask_channels,
        train=TrainConfig(
            rpn_proposal=RPNTestConfig(nms_pre=config.rpn_proposal_nms_pre,
                                       max_per_img=config.rpn_proposal_max_per_img, iou_threshold=0.7),
            rcnn_sampler=SamplerConfig(config.rcnn_sampler_num, 0.25, True), max_gt=config.max_gt))
    det = det.replace(rpn_test=RPNTestConfig(nms_pre=config.rpn_test_nms_pre, max_per_img=config.rpn_test_max_per_img))
    model = MaskRCNN(det, arch, **runtime_fields(config))
    return model, det, arch


@struct.dataclass
class DetTrainState:
    step: jax.Array  # int32: optimizer updates so far
    params: Any
    opt_state: Any


def warmup_multistep_schedule(base_lr: float, *, warmup_iters: int, warmup_factor: float,
                              milestones: Sequence[int], gamma: float) -> optax.Schedule:
    """mmengine ``LinearLR(start_factor=warmup_factor, end=warmup_iters, by_epoch=False)`` followed by
    ``MultiStepLR(milestones, gamma)``, both multiplicative, indexed by iteration (milestones in iterations)."""
    milestones = jnp.asarray(list(milestones) or [np.iinfo(np.int32).max], jnp.int32)

    def schedule(count):
        count = jnp.asarray(count, jnp.int32)
        warm = jnp.where(count < warmup_iters,
                         warmup_factor + (1.0 - warmup_factor) * count.astype(jnp.float32) / max(warmup_iters, 1),
                         1.0)
        decay = gamma ** jnp.sum(count >= milestones).astype(jnp.float32)
        return base_lr * warm * decay

    return schedule


def weight_decay_mask(params, config: MaskRCNNConfig, arch: Arch):
    """True where weight decay applies: the mmdetection key does not contain ``norm``."""
    by_path = {path: key for key, (path, _, _) in key_table(config, arch).items()}
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: "norm" not in by_path[path] for path in flat})


def create_optimizer(opt_cfg, config: MaskRCNNConfig, arch: Arch, params, *, steps_per_epoch: int):
    """``(tx, schedule)`` for ``opt_cfg`` (lr, betas, eps, weight_decay, warmup_iters, warmup_factor,
    milestones_epochs, gamma, grad_clip_norm)."""
    schedule = warmup_multistep_schedule(
        opt_cfg.lr, warmup_iters=opt_cfg.warmup_iters, warmup_factor=opt_cfg.warmup_factor,
        milestones=[int(e * steps_per_epoch) for e in opt_cfg.milestones_epochs], gamma=opt_cfg.gamma)
    mask = weight_decay_mask(params, config, arch)
    chain = []
    if opt_cfg.get("grad_clip_norm"):
        chain.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
    chain.append(optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                             weight_decay=opt_cfg.weight_decay, mask=mask))
    return optax.chain(*chain), schedule


def new_state(params, tx) -> DetTrainState:
    return DetTrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def make_train_step(model: MaskRCNN, tx, schedule, *, seed: int, group_size: int):
    """``train_step(state, batch) -> (state, metrics)``, to be jitted (any sharding of the batch).

    The randomness (drop path, samplers) is a function of (seed, step, image index
    in the global batch), so it does not depend on the number of devices.
    """
    base_key = jax.random.key(seed)

    def train_step(state: DetTrainState, batch):
        key = jax.random.fold_in(base_key, state.step)

        def loss_fn(params):
            return detection_loss(model, params, batch, key, group_size=group_size, train=True)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "learning_rate": schedule(state.step),
                   **aux}
        return DetTrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def init_params(model: MaskRCNN, key: jax.Array, image_shape: tuple[int, int] = (64, 64)):
    images = jnp.zeros((1, *image_shape, 3), jnp.float32)
    return model.init({"params": key}, images)["params"]
