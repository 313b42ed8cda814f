"""Orbax checkpoints of the train state together with the grain data-iterator position.

Layout: ``workdir/checkpoints/<step>/{state,data,metrics,...}``. ``state`` is the
:class:`~vheat_jax.train.state.TrainState` (sharded arrays, written by every
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

:func:`restore_latest` is the one way evaluators read "the latest state of a workdir".
"""

from __future__ import annotations

import logging
import os
from typing import Any

import grain
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from vheat_jax.paths import as_path

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
        self._manager = ocp.CheckpointManager(as_path(directory), item_names=("state", "data"), options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

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
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
        """The state at ``step`` (with the shardings of ``abstract_state``); moves ``data_iterator`` there."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )
        return restored.state

    def close(self) -> None:
        """Waits for pending saves to be committed, then releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def restore_latest(workdir: str | os.PathLike, abstract_state: Any = None) -> tuple[int, Any]:
    """``(step, state)`` of the latest checkpoint in a training ``workdir``.

    Without ``abstract_state`` the state comes back as nested dicts of host arrays.
    """
    directory = as_path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"{workdir} is not a training workdir (no checkpoints/ in it)")
    with ocp.CheckpointManager(directory, item_names=("state",)) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint")
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return step, restored.state
