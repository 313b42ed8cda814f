"""A log line when a long phase starts (data set-up, compilation, a restore, an evaluation), one every 20 s
while it lasts, and its duration at the end: a run that compiles for two minutes does not look hung."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from absl import logging

EVERY_S = 20.0


@contextlib.contextmanager
def phase(what: str, *, enabled: bool = True, every_s: float = EVERY_S, report_after_s: float | None = None):
    """Logs ``what...``, then ``still <what> (N s)`` every ``every_s``, then the time it took if that was at
    least ``report_after_s`` (default: ``every_s``)."""
    if not enabled:
        yield
        return
    logging.info("%s...", what)
    start = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every_s):
            logging.info("still %s (%.0f s)", what, time.monotonic() - start)

    thread = threading.Thread(target=beat, name="vheat-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        elapsed = time.monotonic() - start
        if elapsed >= (every_s if report_after_s is None else report_after_s):
            logging.info("%s: done in %.1f s", what, elapsed)


def first_call(fn: Callable, what: str, *, enabled: bool = True) -> Callable:
    """``fn`` whose first call runs inside :func:`phase` (a jitted function's first call compiles it)."""
    called = False

    def call(*args, **kwargs):
        nonlocal called
        if called:
            return fn(*args, **kwargs)
        called = True
        with phase(what, enabled=enabled, report_after_s=0.0):  # e.g. how long compiling took, always
            return fn(*args, **kwargs)

    return call
