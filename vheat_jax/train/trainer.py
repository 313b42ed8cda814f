"""``train_and_evaluate``: the classification training loop.

One step, per optimizer update (``grad_accum_steps`` micro-batches):

1. each process loads its slice of the global batch (grain, numpy) and
   :func:`~vheat_jax.train.sharding.global_batch` assembles them into arrays
   split over the ``data`` mesh axis;
2. the jitted :func:`make_train_step` runs forward + backward in
   ``config.compute_dtype``, clips, applies AdamW, updates the EMA; XLA inserts
   the gradient all-reduce (or the FSDP gathers / reduce-scatters) from the
   shardings; the old state's buffers are donated to the new one;
3. the host fetches the *previous* step's scalar metrics (the current step is
   already queued), checks them for NaN/Inf and logs.

Evaluation (raw and EMA params, top-1/top-5) runs every ``eval_every`` steps and
at the end; checkpoints are written every ``checkpoint_every_steps``, at every
evaluation (with its metrics, for best-checkpoint retention), at the end and on
preemption. Before any save, the pending step's metrics are checked, so a
checkpoint never follows a non-finite loss.
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from vheat_jax.data import create_eval_loader, create_train_loader, make_source
from vheat_jax.model import VHeat
from vheat_jax.train import distributed, optim, sharding
from vheat_jax.train import metrics as metrics_lib
from vheat_jax.train.checkpointing import Checkpointer
from vheat_jax.train.preemption import PreemptionWatcher
from vheat_jax.train.pretrained import load_pretrained
from vheat_jax.train.state import TrainState, ema_update, new_train_state
from vheat_jax.variants import create_model

# Libraries whose INFO logs (several lines per checkpoint) would drown the progress lines.
_CHATTY_LIBRARIES = ("/orbax/", "/grain/")


def _drop_library_chatter(record: std_logging.LogRecord) -> bool:
    """Keeps orbax's and grain's warnings and errors (they log through absl), drops their INFO lines."""
    return record.levelno >= std_logging.WARNING or not any(lib in record.pathname for lib in _CHATTY_LIBRARIES)


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class RunLength:
    """Durations and intervals in optimizer updates, resolved from ``*_steps`` / ``*_epochs``."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_every_steps: int
    checkpoint_every_steps: int
    log_every_steps: int


def _steps(config, name: str, steps_per_epoch: int) -> int:
    steps = config.get(f"{name}_steps")
    if steps is not None:
        return int(steps)
    return round(config.get(f"{name}_epochs") * steps_per_epoch)


def resolve_run_length(config, num_train_examples: int) -> RunLength:
    steps_per_epoch = num_train_examples // config.global_batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training split has {num_train_examples} images, fewer than one global batch "
            f"({config.global_batch_size})"
        )
    total = _steps(config, "num", steps_per_epoch)
    if total < 1:
        raise ValueError(f"the run would have {total} steps; set config.num_steps or config.num_epochs")
    return RunLength(
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=_steps(config, "warmup", steps_per_epoch),
        eval_every_steps=max(1, _steps(config, "eval_every", steps_per_epoch)),
        checkpoint_every_steps=max(1, config.checkpoint_every_steps),
        log_every_steps=max(1, config.log_every_steps),
    )


def compute_dtype(name: str):
    """``config.compute_dtype`` -> dtype; ``"auto"`` is bfloat16 on TPU/GPU, float32 on CPU."""
    if name == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return jnp.dtype(name)


def build_model(config) -> VHeat:
    overrides = {key: value for key, value in config.model.items() if key != "name"}
    if "depths" in overrides:
        overrides["depths"] = tuple(overrides["depths"])
    return create_model(
        config.model.name,
        num_classes=config.num_classes,
        img_size=config.image_size,
        dtype=compute_dtype(config.compute_dtype),
        remat=config.remat,
        **overrides,
    )


def data_config(config, workdir: Path) -> ml_collections.ConfigDict:
    """The config the input pipeline sees: its batch is one micro-batch (one per accumulation step)."""
    data = config.copy_and_resolve_references()
    data.global_batch_size = config.global_batch_size // config.grad_accum_steps
    if data.dataset == "digits" and not data.data_dir:
        data.data_dir = str(workdir / "data" / "digits")
    if data.dataset == "imagefolder" and not data.data_dir:
        raise ValueError("config.data_dir is required for dataset='imagefolder' (a folder with train/ and val/)")
    return data


def check_batch_sizes(config, num_devices: int, num_processes: int) -> None:
    micro, remainder = divmod(config.global_batch_size, config.grad_accum_steps)
    if remainder:
        raise ValueError(
            f"global_batch_size={config.global_batch_size} is not a multiple of "
            f"grad_accum_steps={config.grad_accum_steps}"
        )
    for what, size in (("global_batch_size / grad_accum_steps", micro), ("eval_batch_size", config.eval_batch_size)):
        if size % num_devices or size % num_processes:
            raise ValueError(
                f"{what} = {size} must be a multiple of the number of devices ({num_devices}) "
                f"and of processes ({num_processes})"
            )


# --------------------------------------------------------------------------- steps


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example cross-entropy against soft targets (mixup / label smoothing), as timm's SoftTargetCrossEntropy."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def make_train_step(model: VHeat, tx, schedule, *, ema_decay: float, seed: int, grad_accum_steps: int):
    """``train_step(state, batch) -> (state, metrics)``, to be jitted.

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

        def loss_fn(params):
            logits = model.apply({"params": params}, batch["image"], train=True, rngs={"dropout": dropout_key})
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
            "top1": jnp.sum(matches * batch["valid"]) / jnp.maximum(jnp.sum(batch["valid"]), 1.0),
            "learning_rate": schedule(state.step),
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


def jit_train_step(config, model: VHeat, tx, schedule, mesh, state_shardings):
    """The jitted train step: state sharded as ``state_shardings`` and donated, batch split over ``data``."""
    batch_shardings = {name: sharding.batch_sharding(mesh) for name in ("image", "label", "valid")}
    step = make_train_step(
        model, tx, schedule, ema_decay=config.ema_decay, seed=config.seed, grad_accum_steps=config.grad_accum_steps
    )
    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


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
        return jax.tree.map(
            lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), self.abstract, self.shardings
        )

    def fresh(self) -> TrainState:
        return jax.jit(self._init_state, out_shardings=self.shardings)(self._rng)

    def from_pretrained(self, path: str, *, ema: bool) -> TrainState:
        """Weights from ``path``; the fresh initialization supplies what fine-tuning replaces (the classifier)."""
        fresh = jax.jit(self._init_params, out_shardings=self.shardings.params)(self._rng)
        params = load_pretrained(path, self.model, jax.device_get(fresh), ema=ema)
        params = jax.device_put(params, self.shardings.params)
        return jax.jit(lambda p: new_train_state(p, self.tx), out_shardings=self.shardings)(params)


# --------------------------------------------------------------------------- loop


def evaluate(eval_step, state: TrainState, data_cfg, mesh) -> dict[str, float]:
    """Top-1/top-5 (percent) and mean loss of raw and EMA params over the whole eval split."""
    loader = create_eval_loader(data_cfg, process_index=jax.process_index(), process_count=jax.process_count())
    totals = None
    for local_batch in loader:
        batch_sums = eval_step(state.params, state.ema_params, sharding.global_batch(local_batch, mesh))
        totals = batch_sums if totals is None else jax.tree.map(jnp.add, totals, batch_sums)
    totals = {k: float(v) for k, v in jax.device_get(totals).items()}
    count = max(totals["num_examples"], 1.0)
    out = {"num_examples": totals["num_examples"]}
    for prefix in ("", "ema_"):
        out[f"{prefix}top1"] = 100.0 * totals[f"{prefix}top1"] / count
        out[f"{prefix}top5"] = 100.0 * totals[f"{prefix}top5"] / count
        out[f"{prefix}loss"] = totals[f"{prefix}loss"] / count
    return out


def _check_finite(step: int, scalars: dict[str, float]) -> None:
    bad = [name for name in ("loss", "grad_norm") if not math.isfinite(scalars[name])]
    if bad:
        raise TrainingDivergedError(
            f"training diverged: {' and '.join(f'{n} = {scalars[n]}' for n in bad)} at step {step}; "
            "nothing from this step on is saved (the last checkpoint is the last good state). "
            "Lower the learning rate (config.optimizer.base_lr / warmup) or check the input data."
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds checkpoints) and evaluates; returns the final metrics."""
    workdir = Path(workdir).absolute()
    std_logging.getLogger("absl").addFilter(_drop_library_chatter)  # adding the same filter twice is a no-op
    multiprocess = distributed.maybe_initialize(config.distributed)
    is_process0 = jax.process_index() == 0
    mesh = sharding.make_mesh()
    check_batch_sizes(config, mesh.size, jax.process_count())
    data_cfg = data_config(config, workdir)
    num_train = len(make_source(data_cfg, data_cfg.train_split))
    run = resolve_run_length(config, num_train)

    model = build_model(config)
    tx, schedule = optim.create_optimizer(
        config.optimizer,
        global_batch_size=config.global_batch_size,
        warmup_steps=run.warmup_steps,
        total_steps=run.total_steps,
        grad_accum_steps=config.grad_accum_steps,
    )
    factory = StateFactory(model, tx, mesh, config)
    train_step = jit_train_step(config, model, tx, schedule, mesh, factory.shardings)
    eval_step = jit_eval_step(model, mesh, factory.shardings.params)

    train_iter = iter(
        create_train_loader(
            data_cfg, process_index=jax.process_index(), process_count=jax.process_count(), seed=config.seed
        )
    )
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    latest = checkpointer.latest_step()
    if latest is not None:
        logging.info("resuming from the checkpoint at step %d in %s", latest, workdir / "checkpoints")
        state = checkpointer.restore(latest, factory.abstract_with_shardings(), train_iter)
    elif config.init_from:
        logging.info("initializing from %s%s", config.init_from, " (EMA weights)" if config.init_from_ema else "")
        state = factory.from_pretrained(config.init_from, ema=config.init_from_ema)
    else:
        state = factory.fresh()
    step = int(jax.device_get(state.step))
    best = checkpointer.best()

    writer = metrics_lib.MetricWriter(workdir, enabled=is_process0)
    watcher = PreemptionWatcher(multiprocess)
    window = metrics_lib.WindowAverage()
    timer = metrics_lib.StepTimer(config.global_batch_size, mesh.size)
    if is_process0:
        num_params = sum(x.size for x in jax.tree.leaves(factory.abstract.params))
        logging.info(
            "%s: %.2fM params, %d devices (%d processes), %d images/step, %d steps/epoch, "
            "%d steps (%d warm-up), compute dtype %s",
            config.model.name,
            num_params / 1e6,
            mesh.size,
            jax.process_count(),
            config.global_batch_size,
            run.steps_per_epoch,
            run.total_steps,
            run.warmup_steps,
            jnp.dtype(model.dtype).name,
        )

    def record(done_step: int, micro_step_metrics: list) -> None:
        # With accumulation, the update's scalars are means over its micro-batches.
        fetched = jax.device_get(micro_step_metrics)
        scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        _check_finite(done_step, scalars)
        timer.mark(done_step)
        window.add(scalars)
        if done_step % run.log_every_steps == 0 or done_step == run.total_steps:
            logged = {**window.pop(), **timer.pop(), "epoch": done_step / run.steps_per_epoch}
            writer.write(done_step, {f"train/{k}": v for k, v in logged.items()})
            if is_process0:
                logging.info("%s", metrics_lib.progress_line(done_step, run.total_steps, logged))

    final: dict[str, Any] = {"step": step, "preempted": False}
    pending = None
    try:
        if step >= run.total_steps:
            logging.info("the run is already complete (step %d); evaluating its final state", step)
            final.update(evaluate(eval_step, state, data_cfg, mesh))
        while step < run.total_steps:
            micro_step_metrics = []
            for _ in range(config.grad_accum_steps):
                state, step_metrics = train_step(state, sharding.global_batch(next(train_iter), mesh))
                micro_step_metrics.append(step_metrics)
            step += 1
            if pending is not None:
                record(*pending)
            pending = (step, micro_step_metrics)

            preempted = watcher.should_stop(step)
            eval_due = (step % run.eval_every_steps == 0 or step == run.total_steps) and not preempted
            save_due = eval_due or preempted or step % run.checkpoint_every_steps == 0 or step == run.total_steps
            if not (eval_due or save_due):
                continue
            record(*pending)
            pending = None
            eval_metrics = None
            if eval_due:
                eval_metrics = evaluate(eval_step, state, data_cfg, mesh)
                if best is None or eval_metrics["ema_top1"] >= best[0]:  # ties: the later one, as retention
                    best = (eval_metrics["ema_top1"], step)
                writer.write(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
                if is_process0:
                    logging.info("%s", metrics_lib.eval_line(step, eval_metrics, best))
                final.update(eval_metrics)
            checkpointer.save(step, state, train_iter, metrics=eval_metrics)
            timer.reset()
            if preempted:
                logging.warning("preempted: saved the checkpoint at step %d; exiting", step)
                final["preempted"] = True
                break
        final["step"] = step
        if best is not None:
            final["best_ema_top1"], final["best_step"] = best
        return final
    finally:
        checkpointer.close()  # waits for every started save to be committed
        train_iter.close()  # stops grain's worker processes
        watcher.close()
        writer.close()
