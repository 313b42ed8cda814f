"""Classification on the shared loop: vHeat, soft-target cross-entropy, AdamW + EMA, top-1/top-5.

The task (:class:`ClassificationTask`, ``config.task = "classification"``) supplies to
:mod:`vheat_jax.train.loop`: the grain image pipeline (image folder, TFDS or the digits
demo), the model and its :class:`~vheat_jax.train.state.TrainState`, the train step (forward +
backward in ``config.compute_dtype``, clip, AdamW, EMA; ``grad_accum_steps``
micro-batches per update through ``optax.MultiSteps``), evaluation of the raw and EMA
parameters (top-1/top-5, the best checkpoint by EMA top-1), and ``init_from`` (a
converted or official checkpoint; the classifier is re-initialised when the class count
differs).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from vheat_jax import paths
from vheat_jax.data import create_eval_loader, create_train_loader, iterating, make_source, on_device
from vheat_jax.data.pipeline import make_mixup
from vheat_jax.errors import DataReadError
from vheat_jax.model import VHeat
from vheat_jax.train import loop, optim, sharding
from vheat_jax.train.backbone import backbone_arch, runtime_fields
from vheat_jax.train.config import ConfigError
from vheat_jax.train.pretrained import load_pretrained
from vheat_jax.train.state import TrainState, ema_update, new_train_state


def build_model(config) -> VHeat:
    arch = backbone_arch(config, img_size=config.image_size, num_classes=config.num_classes)
    return arch.build(**runtime_fields(config))


def data_config(config, workdir: Path) -> ml_collections.ConfigDict:
    """The config the input pipeline sees: its batch is one micro-batch (one per accumulation step)."""
    data = config.copy_and_resolve_references()
    data.global_batch_size = config.global_batch_size // config.grad_accum_steps
    if data.dataset == "digits" and not data.data_dir:
        # Written once by each host; a gs:// workdir keeps it on the local disk instead.
        local = Path.home() / ".cache" / "vheat_jax" if paths.is_remote(workdir) else Path(workdir)
        data.data_dir = str(local / "data" / "digits")
    if data.dataset == "imagefolder" and not data.data_dir:
        raise ConfigError("config.data_dir is required for dataset='imagefolder' (a folder with train/ and val/)")
    return data


def check_batch_sizes(config, num_devices: int, num_processes: int) -> None:
    micro, remainder = divmod(config.global_batch_size, config.grad_accum_steps)
    if remainder:
        raise ConfigError(
            f"global_batch_size={config.global_batch_size} is not a multiple of "
            f"grad_accum_steps={config.grad_accum_steps}"
        )
    for what, size in (("global_batch_size / grad_accum_steps", micro), ("eval_batch_size", config.eval_batch_size)):
        if size % num_devices or size % num_processes:
            raise ConfigError(
                f"{what} = {size} must be a multiple of the number of devices ({num_devices}) "
                f"and of processes ({num_processes})"
            )


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


def make_eval_step(model: VHeat):
    """``eval_step(params, ema_params, batch) -> sums`` of correct top-1/top-5, loss and count over ``mask``."""
    top_k = min(5, model.num_classes)

    def sums(params, batch):
        logits = model.apply({"params": params}, batch["image"], train=False)
        labels, mask = batch["label"], batch["mask"]
        _, predictions = jax.lax.top_k(logits, top_k)
        hits = predictions == labels[:, None]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return {
            "top1": jnp.sum(hits[:, 0] * mask),
            "top5": jnp.sum(jnp.any(hits, -1) * mask),
            "loss": jnp.sum(loss * mask),
        }

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


# --------------------------------------------------------------------------- task


class UndecodableCount:
    """The training images that could not be decoded, counted per epoch from each update's ``undecodable``.

    Reported once per epoch; the run stops (one line, exit 1) as soon as an epoch's count passes
    ``max_fraction`` of the epoch, or when none of the images read so far decoded: a folder of
    empty files must not train to the end on nothing.
    """

    def __init__(self, max_fraction: float, steps_per_epoch: int, global_batch: int):
        self.max_fraction, self.steps_per_epoch, self.global_batch = max_fraction, steps_per_epoch, global_batch
        self.bad = self.read = 0

    def add(self, step: int, bad: float) -> None:
        self.bad += round(bad)
        self.read += self.global_batch
        epoch = (step - 1) // self.steps_per_epoch + 1
        epoch_images = self.steps_per_epoch * self.global_batch
        if self.bad > self.max_fraction * epoch_images or (self.bad and self.bad == self.read):
            raise DataReadError(
                f"{self.bad} of the {self.read} training images read in epoch {epoch} could not be decoded, "
                f"more than config.max_undecodable_fraction = {self.max_fraction} of the epoch's {epoch_images} "
                "allows; check the image files (empty or truncated ones: find DATA_DIR -size 0), or raise the "
                "fraction")
        if step % self.steps_per_epoch == 0:
            if self.bad:
                logging.warning("epoch %d: %d of %d training images could not be decoded (skipped)", epoch,
                                self.bad, self.read)
            self.bad = self.read = 0


def check_undecodable_eval(bad: int, total: int, max_fraction: float) -> None:
    """The evaluation's counterpart of :class:`UndecodableCount`, over the whole split."""
    if bad > max_fraction * total or (total and bad == total):
        raise DataReadError(f"{bad} of the {total} evaluation images could not be decoded, more than "
                            f"config.max_undecodable_fraction = {max_fraction} allows; check the image files "
                            "(empty or truncated ones: find DATA_DIR -size 0), or raise the fraction")
    if bad:
        logging.warning("evaluation: %d of %d images could not be decoded (left out)", bad, total)


class ClassificationTask(loop.Task):
    best_metric = "ema_top1"

    def prepare_data(self) -> int:
        config = self.config
        check_batch_sizes(config, self.mesh.size, jax.process_count())
        self.data_cfg = data_config(config, self.workdir)
        num_train = len(make_source(self.data_cfg, self.data_cfg.train_split))
        steps_per_epoch = num_train // config.global_batch_size
        if steps_per_epoch < 1:
            raise ConfigError(
                f"the training split has {num_train} images, fewer than one global batch "
                f"({config.global_batch_size}); lower config.global_batch_size"
            )
        self.micro_steps = config.grad_accum_steps
        self.num_eval = len(make_source(self.data_cfg, self.data_cfg.eval_split))
        self.undecodable = UndecodableCount(config.max_undecodable_fraction, steps_per_epoch,
                                            config.global_batch_size)
        return steps_per_epoch

    def build(self):
        config = self.config
        self.model = build_model(config)
        self.name = config.model.name
        tx, schedule = optim.create_optimizer(
            config.optimizer,
            global_batch_size=config.global_batch_size,
            warmup_steps=loop.resolve_steps(config, "warmup", self.run.steps_per_epoch),
            total_steps=self.run.total_steps,
            grad_accum_steps=config.grad_accum_steps,
        )
        self.factory = StateFactory(self.model, tx, self.mesh, config)
        self._train_step = config_train_step(config, self.model, tx, schedule)
        self._eval_step = jit_eval_step(self.model, self.mesh, self.factory.shardings.params)
        return self.factory.abstract

    def initial_state(self, shardings) -> TrainState:
        del shardings  # the factory's, from the same abstract state and config.fsdp
        if self.config.init_from:
            return self.factory.from_pretrained(self.config.init_from, ema=self.config.init_from_ema)
        return self.factory.fresh()

    def train_step(self, state, batch):
        return self._train_step(state, batch)

    def train_loader(self):
        return iter(create_train_loader(
            self.data_cfg, process_index=jax.process_index(), process_count=jax.process_count(), seed=self.config.seed
        ))

    def evaluate(self, state: TrainState) -> dict[str, float]:
        """Top-1/top-5 (percent) and mean loss of raw and EMA params over the whole eval split."""
        loader = create_eval_loader(self.data_cfg, process_index=jax.process_index(),
                                    process_count=jax.process_count())
        totals = None
        with iterating(loader) as batches:
            for local_batch in batches:
                batch_sums = self._eval_step(state.params, state.ema_params,
                                             sharding.global_batch(local_batch, self.mesh))
                totals = batch_sums if totals is None else jax.tree.map(jnp.add, totals, batch_sums)
        totals = {k: float(v) for k, v in jax.device_get(totals).items()}
        check_undecodable_eval(self.num_eval - int(totals["num_examples"]), self.num_eval,
                               self.config.max_undecodable_fraction)
        count = max(totals["num_examples"], 1.0)
        out = {"num_examples": totals["num_examples"]}
        for prefix in ("", "ema_"):
            out[f"{prefix}top1"] = 100.0 * totals[f"{prefix}top1"] / count
            out[f"{prefix}top5"] = 100.0 * totals[f"{prefix}top5"] / count
            out[f"{prefix}loss"] = totals[f"{prefix}loss"] / count
        return out

    def after_update(self, step: int, scalars: dict[str, float]) -> None:
        self.undecodable.add(step, scalars["undecodable"] * self.micro_steps)

    def eval_summary(self, m: dict[str, float]) -> str:
        return (f"top-1 {m['top1']:.2f}% top-5 {m['top5']:.2f}% loss {m['loss']:.4f} | "
                f"EMA top-1 {m['ema_top1']:.2f}% top-5 {m['ema_top5']:.2f}% | {int(m['num_examples'])} images")

    def progress_fields(self, scalars: dict[str, float]) -> list[str]:
        return [f"train top-1 {scalars['top1']:.1f}%"]
