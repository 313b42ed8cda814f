"""The one training loop: classification, segmentation and detection all run here.

A task (``config.task``) supplies what differs through :class:`Task`: its data, model
and state, its train step, its evaluation and its best metric. The loop owns
everything else:

1. ``jax.distributed`` start-up (gated on ``config.distributed``) and the 1-D ``data``
   mesh over every device of every process;
2. the state's shardings (replicated, or FSDP with ``config.fsdp``) from the task's
   abstract state (``jax.eval_shape``, nothing allocated);
3. resume-or-init: the latest checkpoint in ``workdir/checkpoints`` (train state and
   data-iterator position), else the task's initial state (``init_from`` or fresh),
   built directly in its shardings under ``jit(out_shardings=...)``;
4. per update, ``task.micro_steps`` calls of the jitted, donated train step on global
   batches assembled from each process's rows (``sharding.global_batch``);
5. the host fetches the *previous* update's scalar metrics (the device already has the
   current one queued), checks loss and gradient norm for NaN/Inf and logs;
6. evaluation on every process every ``eval_every`` steps and at the end; checkpoints
   (async, Orbax) every ``checkpoint_every_steps``, at each evaluation (with its
   metrics, for best-checkpoint retention), at the end and on preemption. Before any
   save the pending metrics are checked, so a checkpoint never follows a non-finite loss;
7. teardown: saves committed, loader workers stopped, signal handlers restored, the
   metric writer closed, whatever raised.

Tasks are named in :data:`TASKS` and imported on demand, so classification never
imports the detection stack.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import importlib
import math
import re
import signal
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vheat_jax import heartbeat, paths, runtime
from vheat_jax.errors import TrainingDivergedError
from vheat_jax.train import distributed, sharding
from vheat_jax.train import metrics as metrics_lib
from vheat_jax.train.checkpointing import Checkpointer
from vheat_jax.train.config import TASKS, ConfigError, check_config
from vheat_jax.train.preemption import PreemptedDuringEvaluation, PreemptionWatcher
from vheat_jax.train.workdir_lock import WorkdirLock


@dataclasses.dataclass(frozen=True)
class RunLength:
    """Durations and intervals in optimizer updates, resolved from ``*_steps`` / ``*_epochs``."""

    steps_per_epoch: int
    total_steps: int
    eval_every_steps: int
    checkpoint_every_steps: int
    log_every_steps: int


def resolve_steps(config, name: str, steps_per_epoch: int) -> int:
    """``config.<name>_steps`` when set, else ``config.<name>_epochs`` turned into steps."""
    steps = config.get(f"{name}_steps")
    if steps is not None:
        return int(steps)
    return round(config.get(f"{name}_epochs") * steps_per_epoch)


def resolve_run_length(config, steps_per_epoch: int) -> RunLength:
    total = resolve_steps(config, "num", steps_per_epoch)
    if total < 1:
        raise ConfigError(f"the run would have {total} steps; set config.num_steps or config.num_epochs")
    return RunLength(
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        eval_every_steps=max(1, resolve_steps(config, "eval_every", steps_per_epoch)),
        checkpoint_every_steps=max(1, config.checkpoint_every_steps),
        log_every_steps=max(1, config.log_every_steps),
    )


class Task(abc.ABC):
    """What one kind of training supplies to :func:`train_and_evaluate`.

    The constructor sizes the data (``steps_per_epoch``), then the loop's run length is
    resolved and :meth:`build` makes the model, optimizer and ``abstract_state``.
    """

    name: str  # for log lines, e.g. "UperNet-vheat_tiny"
    best_metric: str  # evaluation metric (higher is better) that picks the best checkpoint
    micro_steps: int = 1  # train-step calls per optimizer update (gradient accumulation)

    def __init__(self, config, workdir: Path, mesh):
        self.config, self.workdir, self.mesh = config, workdir, mesh
        self.run = resolve_run_length(config, self.prepare_data())
        self.abstract_state = self.build()

    @abc.abstractmethod
    def prepare_data(self) -> int:
        """Checks and sizes the data; returns the steps per epoch."""

    @abc.abstractmethod
    def build(self) -> Any:
        """Makes the model and optimizer; returns the abstract train state (``jax.eval_shape``)."""

    @abc.abstractmethod
    def initial_state(self, shardings) -> Any:
        """The state a run without checkpoints starts from (``config.init_from``, else fresh), in ``shardings``."""

    @abc.abstractmethod
    def train_step(self, state, batch) -> tuple[Any, dict]:
        """``(state, batch) -> (state, metrics)``: scalars ``loss``, ``grad_norm``, ``learning_rate``; jitted."""

    @abc.abstractmethod
    def train_loader(self):
        """This process's infinite stream of numpy batches, with ``get_state``/``set_state`` and ``close``."""

    @abc.abstractmethod
    def evaluate(self, state) -> dict[str, float]:
        """Metrics of ``state`` over the evaluation split; called on every process, returns the same everywhere."""

    @abc.abstractmethod
    def eval_summary(self, metrics: dict[str, float]) -> str:
        """The evaluation metrics as read in the log line."""

    def after_update(self, step: int, scalars: dict[str, float]) -> None:
        """Called with each update's scalars (means over its micro-batches), one step late; may stop the run."""
        del step, scalars

    def progress_fields(self, scalars: dict[str, float]) -> list[str]:
        """Task-specific parts of the progress line (after the loss)."""
        del scalars
        return []

    def finish(self, state) -> dict[str, Any]:
        """After the last step (every process): exports, and what to add to the result."""
        del state
        return {}


def compute_dtype(name: str):
    """``config.compute_dtype`` -> dtype; ``"auto"`` is bfloat16 on TPU/GPU, float32 on CPU."""
    if name == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return jnp.dtype(name)


def load_task(config, workdir: Path, mesh) -> Task:
    task_name = config.get("task", "classification")
    if task_name not in TASKS:
        raise ConfigError(f"config.task = {task_name!r}: choose one of {', '.join(TASKS)}")
    module, cls = TASKS[task_name].split(":")
    return getattr(importlib.import_module(module), cls)(config, workdir, mesh)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def jit_train_step(step_fn, mesh, state_shardings):
    """``step_fn`` jitted: state in ``state_shardings`` and donated, batch split over ``data``, metrics replicated."""
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def check_finite(step: int, scalars: dict[str, float]) -> None:
    bad = [name for name in ("loss", "grad_norm") if not math.isfinite(scalars[name])]
    if bad:
        raise TrainingDivergedError(
            f"training diverged: {' and '.join(f'{n} = {scalars[n]}' for n in bad)} at step {step}; "
            "nothing from this step on is saved (the last checkpoint is the last good state). "
            "Lower the learning rate (config.optimizer) or check the input data."
        )


def train_and_evaluate(config, workdir: str | Path) -> dict[str, Any]:
    """Trains ``config.task`` (resuming from ``workdir`` if it holds checkpoints), evaluates; returns the metrics.

    The result has ``step``, ``preempted``, the last evaluation's metrics, ``best_<metric>``
    and ``best_step``, and what the task's ``finish`` adds.
    """
    check_config(config)
    paths.check_supported(workdir, "--workdir")
    workdir = paths.as_path(workdir)
    paths.check_writable(workdir, "--workdir")
    if config.get("compilation_cache", False):
        runtime.enable_compilation_cache(runtime.LOCAL_CACHE if paths.is_remote(workdir) else workdir / "jax_cache")
    multiprocess = distributed.maybe_initialize(config.distributed)
    is_process0 = jax.process_index() == 0
    with contextlib.ExitStack() as teardown:  # closes in reverse order, whatever raised
        watcher = PreemptionWatcher(multiprocess)  # before any set-up: no signal is lost
        teardown.callback(watcher.close)
        teardown.enter_context(WorkdirLock(workdir, config.workdir_lease_seconds))  # one run per workdir
        mesh = sharding.make_mesh()
        with heartbeat.phase(f"preparing data and model ({config.get('task', 'classification')}) on "
                             f"{mesh.size} devices", enabled=is_process0):
            task = load_task(config, workdir, mesh)
        shardings = sharding.state_shardings(task.abstract_state, mesh, config.fsdp)
        train_step = heartbeat.first_call(jit_train_step(task.train_step, mesh, shardings),
                                          "compiling the train step", enabled=is_process0)

        train_iter = task.train_loader()
        teardown.callback(train_iter.close)  # stops the loader's workers
        checkpointer = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints,
                                    best_metric=task.best_metric)
        teardown.callback(checkpointer.close)  # waits for every started save to be committed
        writer = metrics_lib.MetricWriter(workdir, enabled=is_process0)
        teardown.callback(writer.close)

        with heartbeat.phase(f"restoring the newest checkpoint in {workdir / 'checkpoints'}",
                             enabled=is_process0 and checkpointer.latest_step() is not None):
            resumed = checkpointer.restore_newest(with_shardings(task.abstract_state, shardings), train_iter)
        if resumed is not None:
            logging.info("resuming from the checkpoint at step %d in %s", resumed[0], workdir / "checkpoints")
            state = resumed[1]
        else:
            if config.init_from:
                logging.info("initializing from %s%s", config.init_from,
                             " (EMA weights)" if config.init_from_ema else "")
            state = task.initial_state(shardings)
        step = int(jax.device_get(state.step))
        if is_process0:
            num_params = sum(x.size for x in jax.tree.leaves(task.abstract_state.params))
            logging.info(
                "%s: %.2fM params, %d devices (%d processes), %d images/step, %d steps/epoch, %d steps",
                task.name, num_params / 1e6, mesh.size, jax.process_count(), config.global_batch_size,
                task.run.steps_per_epoch, task.run.total_steps,
            )
        return _train(task, config, state, step, checkpointer.best(), train_step, train_iter, checkpointer,
                      watcher, writer)


_WORKER_DIED = re.compile(r"Worker process was terminated unexpectedly with exit code (-?\d+)")


def _as_loader_stop(err: Exception, step: int, latest_saved: int | None) -> Exception:
    """A grain worker's death as one line (the run stops; the last checkpoint holds it); other errors unchanged."""
    died = _WORKER_DIED.search(str(err))
    if died is None:
        return err
    code = int(died[1])
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    saved = f"the checkpoint at step {latest_saved}" if latest_saved is not None else "nothing saved yet"
    return paths.DataReadError(
        f"a data-loader worker process died ({how}) before step {step + 1}, without a stop signal to this run; "
        f"{saved} holds the run: run the same command again to resume (if the out-of-memory killer ended it, "
        "lower config.num_workers)")


def _train(task, config, state, step, best, train_step, train_iter, checkpointer, watcher, writer) -> dict[str, Any]:
    run, mesh = task.run, task.mesh
    is_process0 = jax.process_index() == 0
    window = metrics_lib.WindowAverage()
    timer = metrics_lib.StepTimer(config.global_batch_size, mesh.size)

    def record(done_step: int, micro_step_metrics: list) -> None:
        # With accumulation, the update's scalars are means over its micro-batches.
        fetched = jax.device_get(micro_step_metrics)
        scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        check_finite(done_step, scalars)
        task.after_update(done_step, scalars)
        timer.mark(done_step)
        window.add(scalars)
        if done_step % run.log_every_steps == 0 or done_step == run.total_steps:
            logged = {**window.pop(), **timer.pop(), "epoch": done_step / run.steps_per_epoch}
            writer.write(done_step, {f"train/{k}": v for k, v in logged.items()})
            if is_process0:
                logging.info("%s", metrics_lib.progress_line(done_step, run.total_steps, logged,
                                                             task.progress_fields(logged)))

    def evaluate(at_step: int) -> dict[str, float] | None:
        """The task's metrics at ``at_step``, logged; None when a stop signal interrupted the evaluation."""
        nonlocal best
        try:
            with watcher.interruptible(), heartbeat.phase(f"evaluating at step {at_step}", enabled=is_process0):
                eval_metrics = task.evaluate(state)
        except PreemptedDuringEvaluation:
            return None
        except Exception as err:  # a loader that failed because of the signal is the signal
            if watcher.signalled:
                return None
            raise _as_loader_stop(err, at_step, checkpointer.latest_step()) from None
        if best is None or eval_metrics[task.best_metric] >= best[0]:  # ties: the later one, as retention
            best = (eval_metrics[task.best_metric], at_step)
        writer.write(at_step, {f"eval/{k}": v for k, v in eval_metrics.items()})
        if is_process0:
            line = f"eval at step {at_step}: {task.eval_summary(eval_metrics)}"
            logging.info("%s | best %s %.4g (step %d)", line, task.best_metric, *best)
        return eval_metrics

    def stop_for_preemption(why: str) -> None:
        if checkpointer.latest_step() != step:
            checkpointer.save(step, state, train_iter)
        logging.warning("preempted%s: saved the checkpoint at step %d; exiting", why, step)
        final["preempted"] = True

    final: dict[str, Any] = {"step": step, "preempted": False}
    if step >= run.total_steps:
        logging.info("the run is already complete (step %d); evaluating its final state", step)
        final.update(task.evaluate(state))
    elif step and step % run.eval_every_steps == 0 and not checkpointer.has_metrics(step):
        logging.info("the evaluation at step %d was interrupted; running it now", step)
        if (eval_metrics := evaluate(step)) is None:
            stop_for_preemption(" during the evaluation")
            return final
        final.update(eval_metrics)
    pending = None
    while step < run.total_steps:
        micro_step_metrics = []
        for _ in range(task.micro_steps):
            try:
                local_batch = next(train_iter)
            except Exception as err:  # a loader that failed because of the signal is the signal
                if not watcher.signalled:
                    raise _as_loader_stop(err, step, checkpointer.latest_step()) from None
                local_batch = None
                break
            state, step_metrics = train_step(state, sharding.global_batch(local_batch, mesh))
            micro_step_metrics.append(step_metrics)
        if local_batch is None:
            if pending is not None:
                record(*pending)
            stop_for_preemption(" (the data loader stopped after the signal)")
            break
        step += 1
        if pending is not None:
            record(*pending)
        pending = (step, micro_step_metrics)
        checkpointer.check_for_errors()  # a failed background save stops the run now, not at the next save

        preempted = watcher.should_stop(step)
        eval_due = (step % run.eval_every_steps == 0 or step == run.total_steps) and not preempted
        save_due = eval_due or preempted or step % run.checkpoint_every_steps == 0 or step == run.total_steps
        if not save_due:
            continue
        record(*pending)
        pending = None
        eval_metrics = None
        if eval_due:
            eval_metrics = evaluate(step)
            if eval_metrics is None:
                stop_for_preemption(" during the evaluation (it runs again on resume)")
                break
            final.update(eval_metrics)
        checkpointer.save(step, state, train_iter, metrics=eval_metrics)
        timer.reset()
        if preempted:
            stop_for_preemption("")
            break
    final["step"] = step
    if best is not None:
        final[f"best_{task.best_metric}"], final["best_step"] = best
    if step >= run.total_steps:
        final.update(task.finish(state))
    return final
