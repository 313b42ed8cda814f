"""Process-level settings for speed on CPU hosts, applied by the entry points.

Both were found by profiling vHeat-T on a 2-core AMD EPYC (Zen 4) VM with
XLA:CPU (jax 0.10); see docs/design.md "CPU performance" for the numbers.

* **Huge pages for malloc.** XLA:CPU allocates an execution's temporary buffers
  afresh on every call; glibc serves big blocks with ``mmap``, so every step
  first-touches hundreds of MB in 4 KiB page faults (an elementwise op on
  64 MB arrays ran at 9 GB/s, 23 GB/s with huge pages: ``bench/roofline.py``).
  ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` makes glibc back those blocks with
  transparent huge pages, 512x fewer faults. glibc reads tunables only at start-up, so
  :func:`reexec_with_huge_pages` restarts the process once with it set.
* **Plain dots for XLA:CPU's YNNPACK library calls in inference.** By default
  XLA:CPU hands greedy subgraphs (dot + LayerNorm + GELU + conv) to YNNPACK,
  which ran them slower than the bare matmuls (``bench/profile_ops.py``). :data:`INFERENCE_XLA_FLAGS`
  keeps YNNPACK to individual dots.
  The training step is faster with the default (its backward reductions gain
  from the fusion), so only ``eval.py`` sets them.
"""

from __future__ import annotations

import os
import platform
import sys

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
INFERENCE_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",)
# Set to 0 to keep the process as started (no re-exec, no added tunable).
DISABLE_ENV = "VHEAT_HUGE_PAGES"


def reexec_with_huge_pages() -> None:
    """Restarts this script once with :data:`HUGE_PAGES_TUNABLE` in ``GLIBC_TUNABLES`` (glibc Linux only).

    Call first thing in an entry point, before JAX allocates anything. A no-op
    when the tunable is already set, when ``VHEAT_HUGE_PAGES=0``, or off glibc.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (HUGE_PAGES_TUNABLE in tunables or os.environ.get(DISABLE_ENV) == "0"
            or not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, (tunables, HUGE_PAGES_TUNABLE))))
    # orig_argv is the whole command line (interpreter options, -m/-c included).
    os.execve(sys.executable, sys.orig_argv, env)


def add_xla_flags(extra: tuple[str, ...]) -> str:
    """Appends ``extra`` to ``XLA_FLAGS`` unless the user already set the same flag; returns the result.

    Effective only before JAX creates its backend (the first device use).
    """
    current = os.environ.get("XLA_FLAGS", "")
    present = {item.split("=", 1)[0] for item in current.split()}
    added = [flag for flag in extra if flag.split("=", 1)[0] not in present]
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return os.environ["XLA_FLAGS"]


LOCAL_CACHE = "~/.cache/vheat_jax/jax_cache"  # where runs whose workdir is remote keep compiled programs


def enable_compilation_cache(directory: str | os.PathLike) -> str:
    """JAX's persistent compilation cache in ``directory``, unless one is set already (JAX_COMPILATION_CACHE_DIR
    or the user's own config), which is kept; returns the directory in use."""
    import jax  # noqa: PLC0415 - this module is also imported before JAX may be

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    directory = os.path.expanduser(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    return directory
