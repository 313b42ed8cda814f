"""Classification training: the classifier from ``config.model``, its state, and the jitted train / eval steps.

The train step: the loader's uint8 batch finished on the device (:mod:`vheat_jax.cls.on_device`),
forward + backward in ``config.compute_dtype``, soft-target cross-entropy over the valid rows,
clipping and AdamW (:mod:`vheat_jax.cls.optim`; ``grad_accum_steps`` micro-batches per update
through ``optax.MultiSteps``), then the EMA of the weights. The eval step sums top-1/top-5 hits
and the loss of the raw and the EMA weights. :class:`StateFactory` builds the state directly
in its shardings, fresh or from ``init_from`` (:mod:`vheat_jax.cls.pretrained`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from vheat_jax.cls import on_device, optim
from vheat_jax.cls.data import make_mixup
from vheat_jax.cls.pretrained import load_pretrained
from vheat_jax.model import VHeat
from vheat_jax.train import loop, sharding
from vheat_jax.train.backbone import backbone_arch, runtime_fields


def build_model(config) -> VHeat:
    arch = backbone_arch(config, img_size=config.image_size, num_classes=config.num_classes)
    return arch.build(**runtime_fields(config))


# --------------------------------------------------------------------------- steps


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example cross-entropy against soft targets (mixup / label smoothing), as timm's SoftTargetCrossEntropy."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def make_train_step(model: VHeat, tx, schedule, *, ema_decay: float, seed: int, grad_accum_steps: int,
                    erase_mode: str = "pixel"):
    """``train_step(state, batch) -> (state, metrics)``, to be jitted.

    The batch is the loader's (uint8 images and their erasing/mixup draws); the
    step finishes the augmentation (``on_device.train_images``) before the model.
    The loss is the mean over valid rows (undecodable images have ``valid == 0``).
    Drop-path randomness is a function of (seed, update, micro-batch), so a
    resumed run draws exactly what the interrupted one would have.
    """
    base_key = jax.random.key(seed)

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        micro_index = state.step * grad_accum_steps
        if grad_accum_steps > 1:
            micro_index = micro_index + state.opt_state.mini_step
        dropout_key = jax.random.fold_in(base_key, micro_index)

        images = on_device.train_images(batch, erase_mode)

        def loss_fn(params):
            logits = model.apply({"params": params}, images, train=True, rngs={"dropout": dropout_key})
            per_example = soft_cross_entropy(logits, batch["label"])
            weights = batch["valid"]
            return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        applied = optim.applied_update(tx, opt_state)
        ema_params = jax.tree.map(
            lambda new, old: jnp.where(applied, new, old),
            ema_update(state.ema_params, params, ema_decay),
            state.ema_params,
        )
        matches = jnp.argmax(logits, -1) == jnp.argmax(batch["label"], -1)
        metrics = {
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "top1": 100.0 * jnp.sum(matches * batch["valid"]) / jnp.maximum(jnp.sum(batch["valid"]), 1.0),  # percent
            "learning_rate": schedule(state.step),
            "undecodable": jnp.sum(1.0 - batch["valid"]),  # images of this batch that could not be decoded
        }
        new_state = TrainState(
            step=state.step + applied.astype(jnp.int32), params=params, opt_state=opt_state, ema_params=ema_params
        )
        return new_state, metrics

    return train_step


def prediction_sums(model: VHeat, params, batch) -> dict[str, jax.Array]:
    """Correct top-1 / top-5 predictions and the summed loss over the batch rows ``batch["mask"]`` keeps."""
    logits = model.apply({"params": params}, batch["image"], train=False)
    labels, mask = batch["label"], batch["mask"]
    _, predictions = jax.lax.top_k(logits, min(5, model.num_classes))
    hits = predictions == labels[:, None]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {"top1": jnp.sum(hits[:, 0] * mask), "top5": jnp.sum(jnp.any(hits, -1) * mask), "loss": jnp.sum(loss * mask)}


def make_eval_step(model: VHeat):
    """``eval_step(params, ema_params, batch) -> sums`` of correct top-1/top-5, loss and count over ``mask``."""
    sums = functools.partial(prediction_sums, model)

    def eval_step(params, ema_params, batch):
        raw, ema = sums(params, batch), sums(ema_params, batch)
        return {**raw, **{f"ema_{k}": v for k, v in ema.items()}, "num_examples": jnp.sum(batch["mask"])}

    return eval_step


def config_train_step(config, model: VHeat, tx, schedule):
    """``make_train_step`` with ``config``'s EMA, seed, accumulation and erasing mode."""
    return make_train_step(
        model, tx, schedule, ema_decay=config.ema_decay, seed=config.seed, grad_accum_steps=config.grad_accum_steps,
        erase_mode=config.aug.get("remode", "pixel"),
    )


def jit_train_step(config, model: VHeat, tx, schedule, mesh, state_shardings):
    """The loop's jitted train step for this model (also compiled by ``aot.py`` and ``bench/``)."""
    return loop.jit_train_step(config_train_step(config, model, tx, schedule), mesh, state_shardings)


def train_batch_spec(config, batch_size: int) -> dict:
    """Shapes and dtypes of ``config``'s training batches of ``batch_size`` rows (for AOT and benchmarks)."""
    return on_device.train_batch_spec(batch_size, config.image_size, config.num_classes,
                                      erase=config.aug.get("reprob", 0.0) > 0, mix=make_mixup(config).active)


def jit_eval_step(model: VHeat, mesh, param_shardings):
    return jax.jit(
        make_eval_step(model),
        in_shardings=(param_shardings, param_shardings, sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )


# --------------------------------------------------------------------------- state


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Any
    opt_state: Any
    ema_params: Any  # exponential moving average of params, float32


def ema_update(ema_params, params, decay: float):
    """``ema = decay * ema + (1 - decay) * params`` (timm ``ModelEmaV2``)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def new_train_state(params, tx) -> TrainState:
    """Step 0: the optimizer's initial state and EMA starting at ``params``."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
    )


class StateFactory:
    """Builds the train state directly in its shardings (no host-side full copy)."""

    def __init__(self, model: VHeat, tx, mesh, config):
        self.model, self.tx, self.mesh, self.config = model, tx, mesh, config
        self._rng = jax.random.key(config.seed)
        self.abstract = jax.eval_shape(self._init_state, self._rng)
        self.shardings = sharding.state_shardings(self.abstract, mesh, config.fsdp)

    def _init_params(self, rng):
        size = self.config.image_size
        return self.model.init({"params": rng}, jnp.zeros((1, size, size, 3)), train=False)["params"]

    def _init_state(self, rng) -> TrainState:
        return new_train_state(self._init_params(rng), self.tx)

    def abstract_with_shardings(self):
        return loop.with_shardings(self.abstract, self.shardings)

    def fresh(self) -> TrainState:
        return jax.jit(self._init_state, out_shardings=self.shardings)(self._rng)

    def from_pretrained(self, path: str, *, ema: bool) -> TrainState:
        """Weights from ``path``; the fresh initialization supplies what fine-tuning replaces (the classifier)."""
        fresh = jax.jit(self._init_params, out_shardings=self.shardings.params)(self._rng)
        params = load_pretrained(path, self.model, jax.device_get(fresh), ema=ema,
                                 post_norm=self.config.init_post_norm, method=self.config.init_adapt_method)
        params = jax.device_put(params, self.shardings.params)
        return jax.jit(lambda p: new_train_state(p, self.tx), out_shardings=self.shardings)(params)
