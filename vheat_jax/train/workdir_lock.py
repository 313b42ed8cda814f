"""One training run per workdir: a lock taken by process 0 before any set-up, released at exit.

Two runs on one workdir would write the same checkpoint steps and delete each
other's temporary directories. The lock refuses the second with one line naming
the holder.

* Local (or NFS-mounted) workdirs: ``fcntl.flock`` on ``workdir/.lock``. The kernel
  releases it when the holder dies, however it dies, so a crashed run never leaves a
  stale lock; the file only records who holds it.
* ``gs://`` workdirs have no kernel lock: ``workdir/.lock.json`` is a lease that the
  holder rewrites every ``lease_s / 4`` seconds from a background thread
  (``config.workdir_lease_seconds``, default 60). A starting run that finds a lease
  watches it: refreshed within ``lease_s``, its holder is alive and the run stops with
  one line; not refreshed for ``lease_s``, its holder died (SIGKILL, a lost VM) and the
  lease is taken over with a warning, so a restarted job waits at most ``lease_s``.
  Two runs started within the same second can both find it free; each reads the lease
  back after writing it, and the one whose write was replaced stops, which narrows
  that window to the object store's write latency.

On several processes only process 0 takes the lock; its verdict is broadcast, so
every process of a refused run stops with the same line.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import jax
import numpy as np
from jax.experimental import multihost_utils

from vheat_jax import paths
from vheat_jax.errors import WorkdirLockedError

LOCK_FILE = ".lock"
LEASE_FILE = ".lock.json"


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "run": uuid.uuid4().hex, "since": time.time()}


def _parse_owner(text: str | None) -> dict:
    """The owner a lock file records; {} when it records none or cannot be read as one."""
    try:
        parsed = json.loads(text or "{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _describe(owner: dict) -> str:
    since = owner.get("since")
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {started}"


class _LocalLock:
    def __init__(self, workdir) -> None:
        import fcntl

        self._fcntl = fcntl
        self._path = os.path.join(os.fspath(workdir), LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._fcntl.flock(fd, self._fcntl.LOCK_EX | self._fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse_owner(os.read(fd, 4096).decode(errors="replace"))
            os.close(fd)
            raise WorkdirLockedError(self._path, _describe(holder)) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_owner()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            self._fcntl.flock(self._fd, self._fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class _Lease:
    def __init__(self, workdir, lease_s: float) -> None:
        self._path = paths.as_path(workdir) / LEASE_FILE
        self._heartbeat_s, self._lease_s = lease_s / 4, lease_s
        self._owner = _owner()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read_text(self) -> str | None:
        """The lease as stored, or None when there is none.

        A read that overlaps the holder's rewrite can come back torn (the client sizes the
        object, then fetches its bytes), so the text is compared, never trusted to parse.
        """
        try:
            return self._path.read_text()
        except FileNotFoundError:
            return None

    def _write(self) -> None:
        self._path.write_text(json.dumps({**self._owner, "heartbeat": time.time()}))

    def _wait_for_holder(self, seen: str) -> None:
        """Returns once the lease has stayed ``seen`` for ``lease_s``; raises if it changes (its holder is alive).

        Judged by whether the stored text changes, not by its timestamp, so clocks of other hosts do not
        matter, and a torn read counts as a change: it happens only while someone rewrites the lease.
        """
        holder = _parse_owner(seen)
        logging.warning("%s is held by %s; watching it for up to %.0f s (a live run refreshes it every %.1f s)",
                        self._path, _describe(holder), self._lease_s, self._heartbeat_s)
        deadline = time.monotonic() + self._lease_s
        while time.monotonic() < deadline:
            time.sleep(min(self._heartbeat_s / 2, max(0.0, deadline - time.monotonic())))
            now = self._read_text()
            if now is None:
                return  # released
            if now != seen:
                raise WorkdirLockedError(str(self._path), _describe(_parse_owner(now) or holder))
        logging.warning("taking over the lease %s: its holder (%s) stopped refreshing it", self._path,
                        _describe(holder))

    def acquire(self) -> None:
        seen = self._read_text()
        if seen is not None:
            self._wait_for_holder(seen)
        self._write()
        stored = _parse_owner(self._read_text())
        if stored.get("run") != self._owner["run"]:  # another run wrote in between
            raise WorkdirLockedError(str(self._path), _describe(stored))
        self._thread = threading.Thread(target=self._refresh, name="vheat-workdir-lease", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                self._write()
            except OSError as err:  # a transient store error: the next beat retries
                logging.warning("could not refresh the workdir lease %s: %s", self._path, err)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if _parse_owner(self._read_text()).get("run") == self._owner["run"]:
                self._path.unlink(missing_ok=True)


class WorkdirLock:
    """``with WorkdirLock(workdir):`` holds the workdir for one run, or raises :class:`WorkdirLockedError`."""

    def __init__(self, workdir, lease_s: float = 60.0) -> None:
        self._lock = _Lease(workdir, lease_s) if paths.is_remote(workdir) else _LocalLock(workdir)
        self._workdir = workdir

    def __enter__(self) -> WorkdirLock:
        problem = ""
        if jax.process_index() == 0:
            try:
                self._lock.acquire()
            except WorkdirLockedError as err:
                problem = f"{self._workdir} is in use by another training run ({err.args[1]}; lock {err.args[0]}): " \
                          "wait for it to finish, stop it, or use another --workdir"
        if jax.process_count() > 1:  # every process stops, not only process 0
            refused = multihost_utils.broadcast_one_to_all(np.int32(bool(problem)))
            problem = problem or ("another training run holds the workdir (see process 0)" if refused else "")
        if problem:
            raise WorkdirLockedError(problem)
        return self

    def __exit__(self, *exc_info) -> None:
        if jax.process_index() == 0:
            self._lock.release()
