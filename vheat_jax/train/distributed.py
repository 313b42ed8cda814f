"""The one place that starts JAX's multi-process runtime (``jax.distributed.initialize``).

``config.distributed.mode``:

* ``"off"``: one process, whatever the environment says.
* ``"on"``: always initialize. With no coordinator given, JAX detects the cluster
  itself: Cloud TPU VMs and pod slices (GCE and GKE), Slurm, Open MPI. This is
  the setting for a TPU pod slice, where the same command runs on every host.
* ``"auto"`` (default): initialize when a coordinator address is given (config
  or ``JAX_COORDINATOR_ADDRESS``) or a multi-task Slurm / Open MPI launch is
  detected; otherwise run as one process.

The coordinator, process count and process id come from
``config.distributed.{coordinator_address,num_processes,process_id}`` or, when
unset, from the environment variables ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (JAX itself reads only the first).
A GPU cluster without Slurm/MPI, or several processes on one machine, set all
three.

It must run before anything touches a JAX device.
"""

from __future__ import annotations

import os

import jax
from absl import logging

MODES = ("auto", "on", "off")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return None if value in (None, "") else int(value)


def _multi_task_launcher_detected() -> bool:
    for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if (_env_int(name) or 1) > 1:
            return True
    return False


def maybe_initialize(dist_config) -> bool:
    """Initializes ``jax.distributed`` as ``dist_config`` asks; returns whether it did."""
    mode = dist_config.mode
    if mode not in MODES:
        raise ValueError(f"config.distributed.mode must be one of {MODES}, got {mode!r}")
    coordinator = dist_config.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = dist_config.num_processes
    if num_processes is None:
        num_processes = _env_int("JAX_NUM_PROCESSES")
    process_id = dist_config.process_id
    if process_id is None:
        process_id = _env_int("JAX_PROCESS_ID")

    if mode == "off" or (mode == "auto" and not coordinator and not _multi_task_launcher_detected()):
        return False
    logging.info(
        "jax.distributed.initialize(coordinator_address=%s, num_processes=%s, process_id=%s)",
        coordinator,
        num_processes,
        process_id,
    )
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return True
