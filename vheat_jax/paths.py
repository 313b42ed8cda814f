"""One path type for every file the project reads or writes, local or ``gs://``: ``etils.epath``.

``epath.Path`` is what Orbax and grain use; on ``gs://`` it goes through gcsfs (or
``tf.io.gfile`` when TensorFlow is installed). Orbax is given these paths as they are
(it commits checkpoints on GCS with its own protocol); nothing turns a URL into a local
path. Local paths are made absolute, as Orbax requires.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import stat
import time
import uuid

from etils import epath

from vheat_jax.errors import DataReadError, NotAFileError, UnsupportedPathError

try:  # gcsfs caches directory listings per process; files that tensorstore (Orbax) writes bypass it,
    # so a cached listing would hide new checkpoints. A user's own fsspec setting wins.
    import fsspec.config

    fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)
except ImportError:  # no fsspec: no gs:// either (check_supported says so)
    pass

# What a gs:// path needs besides epath: gcsfs (listing, reading, writing files) and
# google-cloud-storage (Orbax deletes old checkpoints with it; TensorBoard event files).
_GCS_MODULES = {"gcsfs": "gcsfs", "google.cloud.storage": "google-cloud-storage"}


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``: URLs unchanged, local paths absolute."""
    result = epath.Path(path)
    return result if is_remote(path) else result.absolute()


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_regular_file(path: str | os.PathLike, what: str) -> None:
    """Refuses, before it is opened, a local ``path`` that is not a regular file: reading a device
    (``/dev/zero``) or a FIFO never ends or never starts. gs:// objects are always files."""
    if is_remote(path):
        return
    mode = os.stat(path).st_mode  # follows links; FileNotFoundError names the path
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise NotAFileError(f"{what} {path} is {kind}, not a file; give the file itself")


def read_small_file(path: epath.Path, what: str, max_bytes: int = 16 << 20) -> str:
    """The text of a small metadata file (JSON), refused if it is not a regular file or is larger than
    ``max_bytes``: the file's size, not its content, bounds what is read."""
    check_regular_file(path, what)
    size = path.stat().length if is_remote(path) else os.stat(path).st_size
    if size > max_bytes:
        raise NotAFileError(f"{what} {path} is {size:,} bytes; a real one is under {max_bytes:,}")
    return path.read_text()


def check_regular_tree(directory: epath.Path, what: str) -> None:
    """:func:`check_regular_file` for everything under a local ``directory`` (an Orbax checkpoint's files)."""
    if is_remote(directory):
        return
    for root, folders, files in os.walk(directory):
        for name in files + [f for f in folders if os.path.islink(os.path.join(root, f))]:
            check_regular_file(os.path.join(root, name), what)


def check_supported(path: str | os.PathLike, what: str) -> None:
    """Fails with one line, before any work, when ``path`` needs a client that is not installed."""
    text = os.fspath(path)
    if not is_remote(text):
        return
    if not text.startswith("gs://"):
        raise UnsupportedPathError(f"{what} {text}: only local paths and gs:// are supported")
    missing = [package for module, package in _GCS_MODULES.items() if not _importable(module)]
    if missing:
        raise UnsupportedPathError(f"{what} {text} needs {' and '.join(missing)}: pip install 'vheat-jax[gcs]'")


def check_writable(directory: epath.Path, what: str) -> None:
    """Creates ``directory`` and writes and removes a probe file in it, or fails with one line (a bucket that
    does not exist, missing credentials, a read-only disk), before any work is done."""
    probe = directory / f".vheat_write_probe_{uuid.uuid4().hex}"  # one per process: hosts probe at once
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except Exception as err:  # noqa: BLE001 - every client reports this differently; the message names it
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UnsupportedPathError(f"{what} {directory}: cannot write there ({type(err).__name__}: {reason}); "
                                   "check the path, the bucket name and the credentials") from None


def check_output(path: epath.Path, what: str) -> None:
    """:func:`check_writable` for the folder an output file (or an output folder) will be written in."""
    check_writable(path.parent, what)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


READ_ATTEMPTS = 5
READ_BACKOFF_S = 0.2
"""An image read that fails with an I/O error is retried after 0.2, 0.4, 0.8, 1.6 s (a network store's
transient error), then stops the run: silently dropping it would thin the data. Bytes that are read but do
not decode are a different thing, a corrupt image, counted and replaced by the pipeline."""


def read_with_retry(path, attempts: int = READ_ATTEMPTS, backoff_s: float = READ_BACKOFF_S) -> bytes:
    """The bytes of ``path``, retried with exponential backoff on I/O errors; :class:`DataReadError` at the end."""
    for attempt in range(attempts):
        try:
            return as_path(path).read_bytes()
        except OSError as err:
            if attempt == attempts - 1:
                raise DataReadError(f"could not read {path} after {attempts} attempts ({type(err).__name__}: "
                                    f"{err}); check the data directory (a file listed at start-up is gone or "
                                    "unreadable), then run the same command to resume") from None
            logging.warning("reading %s failed (%s); retrying in %.1f s", path, err, backoff_s * 2**attempt)
            time.sleep(backoff_s * 2**attempt)
    raise DataReadError(f"could not read {path}: no attempts made")  # attempts < 1
