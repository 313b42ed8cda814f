"""What every entry point shares: absl flags, ``--help`` that exits 0, one-line errors, quiet logs.

* ``--help`` / ``-h`` prints the script's docstring, its own flags (a line each) and how
  ``--config.<field>=`` overrides work, and exits 0 (absl's own help exits 1 and lists
  every library's flags).
* A user's mistake (a config path that does not exist, a misspelled or renamed
  override, a bad value, a missing checkpoint or data folder) is one line on stderr,
  ``<script>: error: ...``, and exit status 2; a run that stopped on its own (diverged, a failed
  checkpoint save, data that cannot be read after retries) is one line and status 1.
  Programming errors keep their traceback.
* Logs: orbax's and grain's INFO internals and JAX's "Unable to initialize backend"
  lines (and gcsfs's) are dropped unless ``--verbosity=1`` (``-v 1``) or higher.
"""

from __future__ import annotations

import difflib
import errno
import importlib.util
import logging as std_logging
import os
import sys
import traceback
from collections.abc import Callable

from absl import app, flags
from ml_collections import config_flags

from vheat_jax.errors import RUN_STOPS, USER_ERRORS, ConfigError
from vheat_jax.train.config import RENAMED_FIELDS, check_config

OVERRIDES_HELP = """\
Config overrides: every field of the config file can be set on the command line,
  --config.<field>=<value>, nested fields with dots (--config.optimizer.base_lr=1e-3,
  --config.num_steps=100); tuples as --config.aug.crop_size='(256, 256)'.
  --config=FILE:ARG calls FILE's get_config(ARG) (e.g. configs/vheat_t.py:tfds).
Logging: -v 1 (--verbosity=1) also shows orbax's, grain's and JAX's own INFO lines."""

# Libraries whose INFO logs (several lines per checkpoint) would drown the progress lines.
_CHATTY_LIBRARIES = ("/orbax/", "/grain/", "/gcsfs/", "/jax/_src/xla_bridge", "/jax/_src/distributed")


def fail(message: str, status: int = 2) -> None:
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _from_chatty_library(record: std_logging.LogRecord) -> bool:
    """Logged by a chatty library, or about an exception raised inside one (asyncio reports an Orbax
    write's unretrieved future under its own name)."""
    if any(lib in record.pathname for lib in _CHATTY_LIBRARIES):
        return True
    error = record.exc_info[1] if record.exc_info else None
    frames = traceback.extract_tb(error.__traceback__) if error is not None else []
    return any(lib in frame.filename for frame in frames for lib in _CHATTY_LIBRARIES)


def _drop_library_chatter(record: std_logging.LogRecord) -> bool:
    """Keeps warnings and errors, drops the INFO lines of the chatty libraries (they log through absl too).

    Their errors keep their message but lose the traceback: a failed background save
    logs one from each of Orbax's threads, and the run reports the failure itself in one line.
    """
    if not _from_chatty_library(record):
        return True
    if record.levelno >= std_logging.ERROR and record.exc_info:
        record.exc_info, record.exc_text = None, None
    return record.levelno >= std_logging.WARNING


def quiet_library_logs() -> None:
    if flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1:
        return
    std_logging.getLogger("absl").addFilter(_drop_library_chatter)  # orbax and grain log through absl
    for handler in std_logging.getLogger().handlers:  # every other logger's records reach these
        handler.addFilter(_drop_library_chatter)
    # "Unable to initialize backend 'tpu'" on CPU hosts: jax logs it at INFO/WARNING through this logger.
    std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)


def _flag_value_hint(flag) -> str:
    kind = flag.flag_type()
    if kind == "bool":
        return ""
    if kind.endswith("enum"):
        return "={" + "|".join(flag.parser.enum_values) + "}"
    return "=" + {"config object": "FILE[:ARG]", "string": "STR"}.get(kind, kind.upper())


def print_help(doc: str, module_name: str, has_config: bool) -> None:
    lines = [doc.strip(), "", "flags:"]
    own = list(flags.FLAGS.get_flags_for_module(module_name))
    if has_config:
        own.append(flags.FLAGS["config"])
    for flag in sorted(own, key=lambda f: f.name):
        if flag.help.startswith("Alias for"):
            continue
        default = "" if flag.default in (None, "") else f" (default: {flag.default_as_str})"
        text = flag.help.split(">: ", 1)[1] if flag.help.startswith("<") else flag.help  # absl prefixes enum choices
        lines.append(f"  --{flag.name}{_flag_value_hint(flag)}: {text}{default}")
    lines += ["  -v, --verbosity=INT: log level (0: our INFO lines; 1: the libraries' too)", ""]
    if has_config:
        lines.append(OVERRIDES_HELP)
    print("\n".join(lines))


def _config_spec(argv: list[str]) -> str | None:
    """The value of ``--config`` on the command line, if given."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return flags.FLAGS["config"].default_as_str.strip("'") if "config" in flags.FLAGS else None


def _config_path_error(argv: list[str]) -> str | None:
    spec = _config_spec(argv)
    if spec is None:
        return None
    path = spec.split(":", 1)[0]
    if not os.path.isfile(path):
        return (f"--config={spec}: no config file {path} "
                "(run from the repository root, e.g. --config=configs/digits_demo.py)")
    return None


def _field_names(config, prefix: str = "") -> list[str]:
    names = []
    for key, value in config.items():
        names.append(prefix + key)
        if hasattr(value, "items"):
            names += _field_names(value, prefix + key + ".")
    return names


def _unknown_override(flag_name: str, config=None) -> str:
    field = flag_name[len("config."):]
    if field in RENAMED_FIELDS:
        return f"--{flag_name}: config field {field} was renamed: set {RENAMED_FIELDS[field]} instead"
    message = f"--{flag_name}: the config has no field {field!r}"
    if config is not None:
        close = difflib.get_close_matches(field, _field_names(config), n=1)
        if close:
            message += f" (did you mean --config.{close[0]}?)"
    return message


def parse_flags(argv: list[str], has_config: bool) -> list[str]:
    """absl's parsing, with one-line errors for what a user gets wrong."""
    try:
        remaining = flags.FLAGS(argv)
        if has_config:
            check_config(flags.FLAGS["config"].value)  # loads the file and applies overrides now
    except ConfigError as err:
        fail(str(err))
    except flags.UnrecognizedFlagError as err:
        if err.flagname.startswith("config."):
            _fail_on_unknown_override(_config_spec(argv), argv, err)
        fail(f"unknown flag --{err.flagname} (see --help)")
    except flags.Error as err:
        first = str(err).splitlines()[0]
        if "Error whilst parsing config file" in str(err):  # the message ends with the file's own exception
            first = f"--config: could not load the config file ({str(err).strip().splitlines()[-1]})"
        fail(first)
    except (AttributeError, KeyError) as err:  # an override naming no field of the given file
        _fail_on_unknown_override(_config_spec(argv), argv, err)
    except (SyntaxError, ImportError, TypeError) as err:  # raised while loading the file
        fail(f"--config: could not load the config file ({type(err).__name__}: {err})")
    return remaining


def _has_field(config, dotted: str) -> bool:
    node = config
    for name in dotted.split("."):
        if not hasattr(node, "keys") or name not in node.keys():
            return False
        node = node[name]
    return True


def _load_config_file(spec: str):
    """``get_config(arg)`` of ``path[:arg]``, loaded as ml_collections does (used for error messages only)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("vheat_config_for_messages", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _define_config_flag(default: str, lock_config: bool) -> None:
    """``--config``. ml_collections already applies the ``--config.<field>`` overrides of ``sys.argv``
    to the default file here, so a misspelled field fails in this call."""
    try:
        config_flags.DEFINE_config_file("config", default, "Config file (path[:argument]).", lock_config=lock_config)
    except (AttributeError, KeyError) as err:
        _fail_on_unknown_override(default, sys.argv, err)


def _fail_on_unknown_override(config_spec: str, argv: list[str], err: Exception) -> None:
    config = _load_config_file(config_spec)
    for arg in argv[1:]:
        name = arg.lstrip("-").split("=", 1)[0]
        if name.startswith("config.") and not _has_field(config, name[len("config."):]):
            fail(_unknown_override(name, config))
    fail(f"a --config.* override names no field of the config ({err})")


def run(main: Callable[[list[str]], None], *, doc: str, module_name: str, config_default: str | None = None,
        lock_config: bool = True, reexec_huge_pages: bool = False) -> None:
    """Runs ``main(argv)`` under absl with the conventions above; ``config_default`` adds ``--config``."""
    argv = list(sys.argv)
    has_config = config_default is not None
    if has_config and (problem := _config_path_error(argv)):
        fail(problem)
    if has_config:
        _define_config_flag(config_default, lock_config)
    if any(arg in ("-h", "--help", "--helpshort", "--helpfull") for arg in argv[1:]):
        print_help(doc, module_name, has_config)
        sys.exit(0)
    if reexec_huge_pages:
        from vheat_jax import runtime

        runtime.reexec_with_huge_pages()  # faster XLA:CPU steps; see vheat_jax/runtime.py

    def guarded_main(remaining: list[str]) -> None:
        quiet_library_logs()
        try:
            main(remaining)
        except RUN_STOPS as err:  # the run stopped on its own; the last checkpoint holds it
            fail(str(err), status=1)
        except USER_ERRORS as err:  # the input is wrong, not the code
            fail(str(err))
        except OSError as err:  # a full disk wherever it hits first: metrics, TensorBoard, an export
            if err.errno != errno.ENOSPC:
                raise
            fail(f"no space left on the device (ENOSPC) writing {err.filename or 'to the workdir'}; free space or "
                 "use a --workdir with room, then run the same command again to resume from the last checkpoint",
                 status=1)
        except app.UsageError as err:
            fail(str(err))
        except KeyboardInterrupt:
            fail("interrupted (a second Ctrl-C): the last checkpoint holds the run; re-run to resume", status=130)

    app.run(guarded_main, argv=argv, flags_parser=lambda args: parse_flags(args, has_config))
