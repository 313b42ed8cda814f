"""Timing and memory measurement shared by ``eval.py --throughput`` and ``bench/``.

Protocol (the official throughput protocol, adapted to jit): compile once and
time that separately, run warm-up iterations, then time each of ``iters``
iterations to completion (``block_until_ready``) and report the median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def compiled_memory(compiled) -> dict[str, int] | None:
    """Bytes the compiled executable needs (arguments, outputs, temporaries), where the backend says."""
    try:
        analysis = compiled.memory_analysis()
    except (NotImplementedError, AttributeError, RuntimeError):
        return None
    if analysis is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    return {name: int(getattr(analysis, name)) for name in fields if hasattr(analysis, name)}


def live_bytes(memory: dict[str, int]) -> int:
    """Arguments + outputs + temporaries, counting outputs that alias (donated) arguments once."""
    return (memory.get("argument_size_in_bytes", 0) + memory.get("output_size_in_bytes", 0)
            - memory.get("alias_size_in_bytes", 0) + memory.get("temp_size_in_bytes", 0))


def device_peak_memory() -> int | None:
    """Peak bytes in use on the first local device (GPU/TPU); None where not exposed (CPU)."""
    stats = jax.local_devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def time_jitted(fn: Callable, *args: Any, warmup: int = 3, iters: int = 10) -> dict[str, Any]:
    """Compiles ``jax.jit(fn)`` for ``args`` and times it; returns seconds, memory and XLA's flop count."""
    jitted = jax.jit(fn)
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per program
    return {
        "compile_s": compile_s,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "iters": iters,
        "flops": float(cost["flops"]) if cost and "flops" in cost else None,
        "compiled_memory": compiled_memory(compiled),
        "device_peak_bytes": device_peak_memory(),
    }
