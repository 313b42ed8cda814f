"""Stopping cleanly on SIGTERM (preemption) or Ctrl-C, at a step every process agrees on.

One process: a Python handler for SIGTERM and SIGINT sets a flag that the training loop
checks after every step; the loop then saves a checkpoint and returns. A second Ctrl-C
stops at once (``KeyboardInterrupt``), losing only what the last checkpoint does not hold.

Several processes (``jax.distributed`` initialized): JAX's preemption service already
catches SIGTERM on each host and runs a sync protocol;
``reached_preemption_sync_point(step)`` becomes true at the same step on every process,
so all of them save the same checkpoint and stop. (A Python SIGTERM handler there would
replace JAX's and leave the other hosts training.) Ctrl-C on one host is turned into a
SIGTERM to itself, so it goes through the same protocol.

The watcher is created before any set-up, so a signal during data preparation or
compilation is not lost: the run stops after its first step, with a checkpoint.

Evaluation (one process) runs inside :meth:`PreemptionWatcher.interruptible`: a signal there
raises :class:`PreemptedDuringEvaluation` at once, so a long evaluation does not use up the
grace period; the loop saves the step without its metrics and reruns the evaluation on resume.
With several processes the evaluation must finish everywhere (its collectives would hang
otherwise): the workers ignore the signal, so it completes and the next step stops.
"""

from __future__ import annotations

import contextlib
import os
import signal

from absl import logging
from jax.experimental import multihost_utils


class PreemptedDuringEvaluation(BaseException):
    """A preemption signal arrived while evaluation ran (one process): the evaluation is skipped.

    Raised from the signal handler wherever the main thread is, so it is a ``BaseException`` like
    ``KeyboardInterrupt``: library code's ``except Exception`` (logging's own emit, for one) must not
    swallow it."""


class PreemptionWatcher:
    def __init__(self, multiprocess: bool):
        self._multiprocess = multiprocess
        self._signalled = False
        self._interruptible = False
        self._previous = {}
        if not multiprocess:
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_signal)
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        del frame
        if signum == signal.SIGINT and self._signalled:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        logging.warning("%s received: will save a checkpoint after the current step and exit"
                        "%s", what, " (Ctrl-C again stops at once)" if signum == signal.SIGINT else "")
        self._signalled = True
        if self._multiprocess and signum == signal.SIGINT:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service tells the other processes
        if self._interruptible:
            self._interruptible = False
            raise PreemptedDuringEvaluation

    @property
    def signalled(self) -> bool:
        """One process: whether SIGTERM or Ctrl-C arrived. Always False with several processes, which
        may only stop together, at :meth:`should_stop`."""
        return self._signalled and not self._multiprocess

    @contextlib.contextmanager
    def interruptible(self):
        """One process: a signal inside (or one already received) raises :class:`PreemptedDuringEvaluation`."""
        if self._multiprocess:
            yield
            return
        if self._signalled:
            raise PreemptedDuringEvaluation
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def should_stop(self, step: int) -> bool:
        """Must be called after every step, on every process (the multi-process protocol needs it)."""
        if self._multiprocess:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
