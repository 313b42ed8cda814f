"""Learning-rate schedule, AdamW with the official weight-decay rule, clipping, accumulation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util


def scaled_lr(lr: float, global_batch_size: int, reference_batch: int) -> float:
    """The linear scaling rule of the official trainer: ``lr * global_batch / reference_batch``."""
    return lr * global_batch_size / reference_batch


def warmup_cosine_schedule(
    base_lr: float, warmup_lr: float, min_lr: float, warmup_steps: int, total_steps: int
) -> optax.Schedule:
    """timm ``CosineLRScheduler(t_in_epochs=False, warmup_prefix=True)``, indexed by update.

    Linear from ``warmup_lr`` (update 0) towards ``base_lr`` over ``warmup_steps``
    updates, then half a cosine from ``base_lr`` to ``min_lr`` over the remaining
    ``total_steps - warmup_steps`` updates; ``min_lr`` afterwards.
    """
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = warmup_lr + count * (base_lr - warmup_lr) / max(warmup_steps, 1)
        progress = jnp.clip((count - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(count < warmup_steps, warm, cosine)

    return schedule


def lr_per_update(timm_schedule: optax.Schedule) -> optax.Schedule:
    """The lr update ``t`` gets in the official loop: ``timm_schedule(max(t - 1, 0))``.

    The official ``train_one_epoch`` steps the optimizer first and calls
    ``lr_scheduler.step_update(t)`` after update ``t``, and timm's scheduler starts at
    ``warmup_lr``; so updates 0 and 1 both use ``lr(0)`` and update ``t >= 1`` uses ``lr(t - 1)``.
    """
    return lambda count: timm_schedule(jnp.maximum(jnp.asarray(count) - 1, 0))


def weight_decay_mask(params):
    """True where weight decay applies.

    The official optimizer (Swin's ``set_weight_decay``) skips 1-D parameters,
    names ending in ``.bias`` and the model's ``no_weight_decay()`` keywords. vHeat
    declares no keywords, so its frequency embeddings (3-D) are decayed; in Flax
    the rule reads: decay every parameter with more than one dimension that is
    not called ``bias``.
    """
    flat = traverse_util.flatten_dict(params)
    mask = {path: value.ndim > 1 and path[-1] != "bias" for path, value in flat.items()}
    return traverse_util.unflatten_dict(mask)


def create_optimizer(
    opt_config, *, global_batch_size: int, warmup_steps: int, total_steps: int, grad_accum_steps: int = 1
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(tx, schedule)``: clip -> AdamW(schedule, masked decay), wrapped in ``MultiSteps`` to accumulate.

    ``schedule`` gives the lr of optimizer update ``count`` (not of a micro-batch, as
    ``MultiSteps`` advances the inner optimizer's count only when it applies an update), in the
    official call order (:func:`lr_per_update`).
    """

    def scale(lr):
        return scaled_lr(lr, global_batch_size, opt_config.lr_reference_batch)

    schedule = lr_per_update(warmup_cosine_schedule(
        scale(opt_config.base_lr), scale(opt_config.warmup_lr), scale(opt_config.min_lr), warmup_steps, total_steps
    ))
    chain = []
    if opt_config.grad_clip_norm:
        chain.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
    chain.append(
        optax.adamw(
            schedule,
            b1=opt_config.b1,
            b2=opt_config.b2,
            eps=opt_config.eps,
            weight_decay=opt_config.weight_decay,
            mask=weight_decay_mask,
        )
    )
    tx = optax.chain(*chain)
    if grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=grad_accum_steps)
    return tx, schedule


def applied_update(tx: optax.GradientTransformation, opt_state) -> jax.Array:
    """Whether the last ``tx.update`` changed the parameters (False mid-accumulation)."""
    if isinstance(tx, optax.MultiSteps):
        return tx.has_updated(opt_state)
    return jnp.array(True)
