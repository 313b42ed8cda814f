"""Segmentation training pieces: the model from the config, mmseg's loss, the train step and the state.

The loss is mmseg's: cross-entropy of the decode logits resized (bilinear) to the label
size, averaged over all pixels (``avg_non_ignore=False``: ignored pixels count in the
denominator), plus ``aux_loss_weight`` times the same for the auxiliary head. BatchNorm
statistics are those of the global batch (the mean over the sharded batch axis is a
global reduction), i.e. mmseg's ``SyncBN``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from vheat_jax.seg.metrics import IGNORE_INDEX
from vheat_jax.seg.model import UperNet, UperNetConfig
from vheat_jax.seg.optim import create_optimizer
from vheat_jax.seg.resample import resize_bilinear
from vheat_jax.train.backbone import backbone_arch, runtime_fields


@struct.dataclass
class SegTrainState:
    step: jax.Array  # int32: optimizer updates applied
    params: Any
    batch_stats: Any  # BatchNorm running statistics
    opt_state: Any


def model_config(config) -> UperNetConfig:
    m = config.model
    return UperNetConfig(backbone=backbone_arch(config, img_size=m.img_size, num_classes=None),
                         num_classes=config.num_classes, channels=m.channels, aux_channels=m.aux_channels,
                         pool_scales=tuple(m.pool_scales), dropout_ratio=m.dropout_ratio)


def build_model(config) -> tuple[UperNetConfig, UperNet]:
    cfg = model_config(config)
    return cfg, cfg.build(**runtime_fields(config))


def seg_cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """mmseg ``CrossEntropyLoss`` (``avg_non_ignore=False``): ``(mean over all pixels, resized logits)``;
    the logits are resized bilinearly to the labels first, ignored pixels add 0 but count."""
    logits = resize_bilinear(logits.astype(jnp.float32), labels.shape[1:3])
    valid = labels != IGNORE_INDEX
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    return jnp.mean(per_pixel * valid), logits


def make_train_step(model: UperNet, tx, schedule, *, aux_weight: float, seed: int):
    """``train_step(state, batch) -> (state, metrics)``; randomness is a function of (seed, step)."""
    base_key = jax.random.key(seed)

    def train_step(state: SegTrainState, batch):
        def loss_fn(params):
            (decode, aux), updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
                rngs={"dropout": jax.random.fold_in(base_key, state.step)}, mutable=["batch_stats"])
            decode_loss, decode_logits = seg_cross_entropy(decode, batch["label"])
            aux_loss, _ = seg_cross_entropy(aux, batch["label"])
            loss = decode_loss + aux_weight * aux_loss
            return loss, (updates["batch_stats"], decode_loss, aux_loss, decode_logits)

        (loss, (batch_stats, decode_loss, aux_loss, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        valid = batch["label"] != IGNORE_INDEX
        correct = (jnp.argmax(logits, -1) == batch["label"]) & valid
        metrics = {"loss": loss, "decode_loss": decode_loss, "aux_loss": aux_loss,
                   "acc_seg": 100.0 * jnp.sum(correct) / jnp.maximum(jnp.sum(valid), 1),
                   "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step)}
        new_state = SegTrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  batch_stats=batch_stats, opt_state=opt_state)
        return new_state, metrics

    return train_step


def state_builders(config, model: UperNet, tx):
    """``(init(rng) -> variables, new_state(variables) -> SegTrainState)``."""
    crop = tuple(config.aug.crop_size)
    init = functools.partial(model.init, images=jnp.zeros((1, *crop, 3)), train=False)

    def new_state(variables):
        return SegTrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                             batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]))

    return init, new_state


def abstract_state(config, model: UperNet, total_steps: int):
    """``(tx, schedule, init, new_state, abstract SegTrainState)`` for ``config``."""
    tx, schedule = create_optimizer(config.optimizer, model_config(config), total_steps)
    init, new_state = state_builders(config, model, tx)
    return tx, schedule, init, new_state, jax.eval_shape(lambda r: new_state(init(r)), jax.random.key(config.seed))
