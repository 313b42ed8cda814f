"""Every error type of the project, in one place: what a user got wrong, and why a run stopped.

The command-line programs (``vheat_jax.cli.common``) turn the first group into one line and exit
status 2, the second into one line and exit status 1 (the last checkpoint holds the run);
anything else is a programming error and keeps its traceback. The modules that raise these
re-export them under their old names (``vheat_jax.torch_io.CheckpointError``, ...).
"""

from __future__ import annotations

# --- A user's input is wrong (exit 2) ---


class ConfigError(ValueError):
    """A config that cannot be run: the message names the field and the fix."""


class CheckpointError(ValueError):
    """The file is not a checkpoint this module can read: unreadable, corrupt or unsupported."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint's pickle tries to use or call something other than tensor and container rebuilds."""


class ArchitectureMismatchError(CheckpointError):
    """The weights do not fit the architecture asked for, or a checkpoint describes its architecture wrongly."""


class KeyMismatchError(ArchitectureMismatchError):
    """Keys or shapes of a state dict do not fit the architecture."""


class UnsupportedPathError(ValueError):
    """A path this installation cannot read or write (one line naming the fix)."""


class NotAFileError(UnsupportedPathError):
    """A path that should be a regular file is a folder, a device, a FIFO or a socket (or a link to one)."""


class UndecodableImageError(ValueError):
    """An input image that PIL cannot decode."""


class WorkdirLockedError(RuntimeError):
    """Another training run holds the workdir."""


# --- A run stopped on its own; the last checkpoint holds it (exit 1) ---


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class NonFiniteStateError(RuntimeError):
    """The state to be saved holds NaN or infinite values: the run diverged, and it is not saved."""


class CheckpointWriteError(RuntimeError):
    """An asynchronous checkpoint save failed; the run stops with the previous checkpoints intact."""


class DataReadError(OSError):
    """A training or evaluation file could not be read, even after retries (or a loader worker died)."""


USER_ERRORS = (ConfigError, CheckpointError, UnsupportedPathError, UndecodableImageError, WorkdirLockedError,
               FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
RUN_STOPS = (TrainingDivergedError, NonFiniteStateError, CheckpointWriteError, DataReadError)
