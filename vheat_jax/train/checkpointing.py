"""Orbax checkpoints of the train state together with the grain data-iterator position.

Layout: ``workdir/checkpoints/<step>/{state,data,metrics,...}``. ``state`` is the
task's train state (e.g. :class:`~vheat_jax.cls.training.TrainState`; sharded arrays, written by every
process for the shards it owns); ``data`` holds one JSON file per process with
that process's grain iterator state, so a resumed run continues with exactly
the batches the interrupted one would have seen next.

Saves are asynchronous: ``save`` returns once the arrays are copied to host
memory and writing continues in a background thread while training goes on.
Orbax writes into ``<step>.orbax-checkpoint-tmp-*`` and renames it to ``<step>``
only when everything is on disk, so a process killed mid-save leaves the
previous checkpoints intact; leftover temporary directories are ignored by
``latest_step`` and removed when the next manager opens the directory.

Retention: the latest ``keep`` checkpoints, plus the one with the best value of the
task's metric (EMA top-1, mIoU, box mAP) among those saved with evaluation metrics.

Verification: each checkpoint also holds ``fingerprint``, a JSON list with one
32-bit fingerprint per state array (:func:`_leaf_fingerprint`, computed on device
under ``jit``, so it works on sharded state without gathering it). A restore
recomputes it; a flipped byte or a truncated file shows up as a mismatch or as a
failed read. :meth:`Checkpointer.restore_newest` then falls back to the newest
checkpoint that restores and verifies, says which it skipped and why, and moves
the skipped ones to ``workdir/unrestorable_checkpoints/`` (kept for inspection,
out of the way of the steps the run will save again). If none restores, nothing
is moved and the run stops with one line: that is what a changed model config
looks like, not corruption.

Failed saves: an asynchronous save that fails (a full disk, a revoked bucket)
is noticed at the next step (:meth:`Checkpointer.check_for_errors`) and stops the
run with :class:`CheckpointWriteError`, one line; the previous checkpoints stay.

:func:`restore_latest` is the one way evaluators read "the latest state of a workdir".
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from vheat_jax.errors import CheckpointWriteError, NonFiniteStateError
from vheat_jax.paths import as_path
from vheat_jax.torch_io import CheckpointError

UNRESTORABLE_DIR = "unrestorable_checkpoints"

_RESTORE_ERRORS = (CheckpointError, ValueError, OSError, KeyError, TypeError, IndexError)
"""What Orbax, tensorstore and grain raise for a checkpoint whose files are truncated, corrupt or missing."""


@jax.jit
def _leaf_fingerprint(leaf: jax.Array) -> jax.Array:
    """``sum_i word_i * (2 i + 1) mod 2^32`` over the array's bits, as uint32.

    The weights are odd, hence invertible mod 2^32, so changing any single 32-bit word
    always changes the sum; several changes cancel with probability about 2^-32. It is a
    corruption check, not a cryptographic hash (a deliberate edit can be made to match).
    """
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    if leaf.dtype.itemsize == 4:
        words = jax.lax.bitcast_convert_type(leaf, jnp.uint32)
    elif leaf.dtype.itemsize == 2:
        words = jax.lax.bitcast_convert_type(leaf, jnp.uint16).astype(jnp.uint32)
    else:
        words = leaf.astype(jnp.uint32)  # bool, int8
    flat = words.reshape(-1)
    weights = jnp.arange(flat.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.sum(flat * weights, dtype=jnp.uint32)


@jax.jit
def _leaf_is_finite(leaf: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(leaf))


def _each_leaf(fn, leaves: list[jax.Array]) -> list:
    """``fn`` of every leaf, each result fetched before the next program starts.

    With sharded leaves each program ends in a cross-device reduction. Several in flight at once
    deadlocked XLA:CPU's in-process collectives (4 host devices on 2 cores, the first save of an
    FSDP run: a rendezvous waited for device threads busy with the next program, and the process
    aborted after 40 s); one at a time costs a round trip per leaf.
    """
    return [jax.device_get(fn(leaf)) for leaf in leaves]


def _fingerprint_list(state: Any) -> list[int]:
    """One fingerprint per array of ``state``, computed where the arrays live (sharded state is not gathered).

    One small program per distinct shape, not one per state: a single program over
    1,500 leaves took 12.6 s to compile on CPU, these take well under a second.
    """
    return [int(value) for value in _each_leaf(_leaf_fingerprint, jax.tree.leaves(state))]


def _non_finite_arrays(state: Any) -> list[str]:
    """The paths of the floating-point arrays of ``state`` that hold a NaN or an infinity (checked on device)."""
    leaves = [(path, leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
              if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    flags = _each_leaf(_leaf_is_finite, [leaf for _, leaf in leaves])
    return [jax.tree_util.keystr(path) for (path, _), finite in zip(leaves, flags) if not finite]


def verify_fingerprint(state: Any, saved: Any, where: str) -> None:
    """Refuses a restored ``state`` whose arrays differ from what was saved.

    Compared as multisets: a state restored without a target comes back as nested
    dicts, whose leaves are in another order than the saved train state's.
    """
    if saved is None:
        logging.warning("%s has no fingerprint (saved by an earlier vheat-jax); not verified", where)
        return
    found = _fingerprint_list(state)
    expected = saved.get("leaves") if isinstance(saved, dict) else None
    if not isinstance(expected, list) or sorted(expected) != sorted(found):
        known = set(expected or [])
        paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
        wrong = [path for path, value in zip(paths, found) if value not in known] or ["(the number of arrays)"]
        raise CheckpointError(f"{where}: {len(wrong)} restored array(s) differ from what was saved "
                              f"({', '.join(wrong[:4])}); its files are corrupt")


_AFTERMATH_MESSAGES = (
    (RuntimeError, "Event loop is closed"),
    (ImportError, "sys.meta_path is None, Python is likely shutting down"),
)


def _drop_closed_loop_callbacks() -> None:
    """Silences two known harmless messages. After a failed restore or save, tensorstore futures still pending
    complete into Orbax's already-closed asyncio loop, and each reports ``RuntimeError: Event loop is closed``;
    the coroutines of a failed save that never ran are collected at interpreter exit, each reporting
    ``sys.meta_path is None``. Both come through ``sys.unraisablehook``, hundreds of tracebacks per failure,
    after the failure itself has been reported. Everything else still reaches the hook."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_callbacks", False):
        return

    def hook(unraisable) -> None:
        for kind, message in _AFTERMATH_MESSAGES:
            if isinstance(unraisable.exc_value, kind) and str(unraisable.exc_value) == message:
                return
        previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_drop_orbax_task_aftermath)


def _drop_orbax_task_aftermath(record: logging.LogRecord) -> bool:
    """asyncio's "Task (or _GatheringFuture, ...) exception was never retrieved" for the writer tasks of a
    failed Orbax save (one per array, each with a traceback): the failure is reported once, by the run."""
    message = record.getMessage()
    return not (message.split("\n", 1)[0].endswith("exception was never retrieved") and "orbax" in message)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"

# Orbax warns at every save without metrics when best-checkpoint tracking is on;
# saves between evaluations have none by design.
_SAVE_WITHOUT_METRICS_WARNING = "Requested `tracked_metric`; did not provide metrics."


def _drop_save_without_metrics_warning(record: logging.LogRecord) -> bool:
    return record.getMessage() != _SAVE_WITHOUT_METRICS_WARNING


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, keep: int, best_metric: str):
        if keep < 1:
            raise ValueError(f"config.keep_checkpoints must be >= 1, got {keep}")
        self.best_metric = best_metric

        def _best_metric(metrics: dict[str, float]) -> float:
            return metrics[best_metric]

        retention = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(n=keep),
                checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1, keep_checkpoints_without_metrics=False),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            # best_fn makes the manager store each step's metrics (so the best survives a
            # restart) and answer best_step(); what is kept is decided by the policy.
            best_fn=_best_metric,
            best_mode="max",
            preservation_policy=retention,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,
            create=True,
        )
        logging.getLogger("absl").addFilter(_drop_save_without_metrics_warning)  # orbax logs through absl
        _drop_closed_loop_callbacks()
        self.directory = as_path(directory)
        self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "data", "fingerprint"),
                                              options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def has_metrics(self, step: int) -> bool:
        """Whether the checkpoint at ``step`` was saved with its evaluation's metrics."""
        return bool(self._manager.metrics(step))

    def best(self) -> tuple[float, int] | None:
        """``(best value of the metric, its step)`` among the checkpoints saved with metrics."""
        scored = [
            (metrics[self.best_metric], step)
            for step in self._manager.all_steps()
            if (metrics := self._manager.metrics(step))
        ]
        return max(scored) if scored else None

    def save(self, step: int, state: Any, data_iterator: Any, metrics: dict[str, float] | None = None) -> None:
        """Starts an asynchronous save; the data-iterator state is captured before this returns.

        ``data_iterator`` is a grain iterator, or any object whose ``get_state()`` returns
        JSON bytes (with ``set_state(bytes)`` and ``start_prefetch()``): grain's handler
        stores either as one JSON file per process.
        """
        self.check_for_errors()
        if bad := _non_finite_arrays(state):
            latest = self.latest_step()
            raise NonFiniteStateError(
                f"training diverged: NaN or infinite values in {len(bad)} array(s) of the state "
                f"({', '.join(bad[:3])}) at step {step}; it is not saved, "
                + (f"the checkpoint at step {latest} is the last good state. " if latest is not None else
                   "and no earlier checkpoint exists. ")
                + "Lower the learning rate (config.optimizer) or check the input data.")
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            fingerprint=ocp.args.JsonSave({"leaves": _fingerprint_list(state)}),
        )
        try:  # save() first waits for the previous save, and re-raises its failure
            self._manager.save(step, args=args, metrics=metrics, force=True)
        except Exception as err:  # noqa: BLE001 - a write failure, whichever layer raised it
            raise CheckpointWriteError(_write_failure(err, self.directory)) from None

    def check_for_errors(self) -> None:
        """Raises :class:`CheckpointWriteError` if a background save has failed; cheap enough for every step.

        Orbax's public ``CheckpointManager.check_for_errors`` also waits for pending
        metadata writes, which would make every step wait for the save in flight; the
        async manager's own check only looks at the error slot. Where an Orbax version
        lacks it, a failure surfaces at the next save instead (``save`` waits for the last).
        """
        async_manager = getattr(getattr(self._manager, "_checkpointer", None), "_async_manager", None)
        probe = getattr(async_manager, "check_for_errors", None)
        if probe is None:
            return
        try:
            probe()
        except Exception as err:  # noqa: BLE001 - whatever the writer thread raised, re-raised here
            raise CheckpointWriteError(_write_failure(err, self.directory)) from None

    def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
        """The verified state at ``step`` (with the shardings of ``abstract_state``); moves ``data_iterator`` there."""
        return _restore_verified(self._manager, self.directory, step, {
            "state": ocp.args.StandardRestore(abstract_state),
            "data": grain.checkpoint.CheckpointRestore(data_iterator)})

    def restore_newest(self, abstract_state: Any, data_iterator: Any) -> tuple[int, Any] | None:
        """``(step, state)`` of the newest checkpoint that restores and verifies; None if there are none.

        Newer checkpoints that fail are named in a warning and moved aside once an
        older one has restored; if none restores, :class:`CheckpointError` lists why.
        """
        failures: list[tuple[int, str]] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state = self.restore(step, abstract_state, data_iterator)
            except _RESTORE_ERRORS as err:
                failures.append((step, _first_line(err)))
                logging.warning("the checkpoint at step %d (%s) does not restore: %s; trying the one before",
                                step, self.directory / str(step), _first_line(err))
                continue
            if failures:
                self._set_aside([failed for failed, _ in failures])
            return step, state
        if failures:
            listing = "; ".join(f"step {step}: {why}" for step, why in failures[:3])
            raise CheckpointError(f"none of the {len(failures)} checkpoints in {self.directory} restores ({listing}). "
                                  "If the config changed since they were saved (model, optimizer, batch layout), "
                                  "use a new --workdir; otherwise they are corrupt")
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unrestorable checkpoints out of the manager's directory (process 0; the others wait)."""
        aside = self.directory.parent / UNRESTORABLE_DIR
        if jax.process_index() == 0:
            aside.mkdir(parents=True, exist_ok=True)
            for step in steps:
                (self.directory / str(step)).rename(aside / f"{step}-{np.random.default_rng().integers(1 << 30)}")
                logging.warning("moved the checkpoint at step %d to %s", step, aside)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("vheat_jax: unrestorable checkpoints moved aside")
        self._manager.reload()

    def close(self) -> None:
        """Waits for pending saves to be committed, then releases the manager."""
        try:
            self._manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 - the failed save's error, once, as one line
            raise CheckpointWriteError(_write_failure(err, self.directory)) from None
        finally:
            self._manager.close()


def _write_failure(err: BaseException, directory) -> str:
    """One line for a failed save, naming a full disk as such."""
    chain, cause = [], err
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    no_space = any(getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e) for e in chain)
    if no_space:
        return (f"saving a checkpoint in {directory} failed: no space left on the device (ENOSPC); free space "
                "or use a --workdir with room, then run the same command again to resume from the last checkpoint")
    return (f"saving a checkpoint in {directory} failed ({_first_line(err)}); run the same command again to "
            "resume from the last checkpoint")


def restore_latest(workdir: str | os.PathLike, abstract_state: Any = None) -> tuple[int, Any]:
    """``(step, state)`` of the latest checkpoint in a training ``workdir``.

    Without ``abstract_state`` the state comes back as nested dicts of host arrays.
    """
    directory = as_path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"{workdir} is not a training workdir (no checkpoints/ in it)")
    with ocp.CheckpointManager(directory, item_names=("state", "fingerprint")) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint")
        try:
            state = _restore_verified(manager, directory, step, {"state": ocp.args.StandardRestore(abstract_state)})
        except _RESTORE_ERRORS as err:
            raise CheckpointError(f"the checkpoint {directory / str(step)} does not restore "
                                  f"({_first_line(err)})") from None
    return step, state


def _restore_verified(manager, directory, step: int, items: dict) -> Any:
    """Restores ``items`` of ``step`` and the step's fingerprint, if it has one; returns the verified state."""
    has_fingerprint = (directory / str(step) / "fingerprint").exists()
    if has_fingerprint:
        items = {**items, "fingerprint": ocp.args.JsonRestore()}
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    verify_fingerprint(restored.state, restored.fingerprint if has_fingerprint else None,
                       f"checkpoint {directory / str(step)}")
    return restored.state
