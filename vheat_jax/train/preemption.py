"""Stopping cleanly on SIGTERM (preemption), at a step every process agrees on.

One process: a Python SIGTERM handler sets a flag that the training loop
checks after every step. Several processes (``jax.distributed`` initialized):
JAX's preemption service already catches SIGTERM on each host and runs a sync
protocol; ``reached_preemption_sync_point(step)`` becomes true at the same step
on every process, so all of them save the same checkpoint and stop. (A Python
handler there would replace JAX's and leave the other hosts training.)
"""

from __future__ import annotations

import signal

from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatcher:
    def __init__(self, multiprocess: bool):
        self._multiprocess = multiprocess
        self._signalled = False
        self._previous_handler = None
        if not multiprocess:
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        logging.warning("SIGTERM received: will save a checkpoint after the current step and exit")
        self._signalled = True

    def should_stop(self, step: int) -> bool:
        """Must be called after every step, on every process (the multi-process protocol needs it)."""
        if self._multiprocess:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled

    def close(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
