"""Metric output (process 0 only): TensorBoard, a JSON-lines file and progress lines.

The trainer fetches a step's metrics from the device only after it has queued
the next step, so the host never waits on the device with an empty queue; the
averages here are of those already-fetched host floats.
"""

from __future__ import annotations

import json
import os
import time

from vheat_jax.paths import as_path, is_remote

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
    """Scalars to ``workdir/tensorboard`` (tensorboardX) and ``workdir/metrics.jsonl``, local or ``gs://``.

    A resumed run appends; a step logged twice (after a crash between a
    checkpoint and the next log) appears twice, the later line being the one
    that led to the final state. On an object store, where objects cannot be
    appended to, the whole file is rewritten at each write (a log line per
    ``log_every_steps``, so a few MB over a long run).
    """

    def __init__(self, workdir: str | os.PathLike, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        workdir = as_path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._tensorboard = SummaryWriter(os.fspath(workdir / TENSORBOARD_DIR))
        self._path = workdir / METRICS_FILE
        self._remote = is_remote(workdir)
        if self._remote:
            self._text = self._path.read_text() if self._path.exists() else ""
        else:
            self._jsonl = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._tensorboard.add_scalar(name, value, step)
        line = json.dumps({"step": step, **scalars}) + "\n"
        if self._remote:
            self._text += line
            self._path.write_text(self._text)
        else:
            self._jsonl.write(line)
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tensorboard.close()
            if not self._remote:
                self._jsonl.close()


class WindowAverage:
    """Means of scalar metrics over the steps since the last ``pop``."""

    def __init__(self):
        self._sums: dict[str, float] = {}
        self._count = 0

    def add(self, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self._sums[name] = self._sums.get(name, 0.0) + value
        self._count += 1

    def pop(self) -> dict[str, float]:
        means = {name: total / max(self._count, 1) for name, total in self._sums.items()}
        self._sums, self._count = {}, 0
        return means


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class StepTimer:
    """Step time and throughput from the moments steps complete on the device.

    ``mark(step)`` is called when a step's metrics arrive. The first interval
    after ``reset()`` is discarded (it holds compilation, evaluation or a
    checkpoint's blocking part), so a measurement spans only training steps.
    """

    def __init__(self, images_per_step: int, num_devices: int):
        self.images_per_step = images_per_step
        self.num_devices = num_devices
        self.reset()

    def reset(self) -> None:
        self._last: tuple[int, float] | None = None
        self._steps = 0
        self._seconds = 0.0

    def mark(self, step: int) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self._steps += step - self._last[0]
            self._seconds += now - self._last[1]
        self._last = (step, now)

    def pop(self) -> dict[str, float]:
        """Step time and images/s over the steps measured since the last pop (empty if none)."""
        if not self._steps:
            return {}
        step_time = self._seconds / self._steps
        self._steps, self._seconds = 0, 0.0
        images_per_second = self.images_per_step / step_time
        return {
            "step_time_s": step_time,
            "images_per_s": images_per_second,
            "images_per_s_per_device": images_per_second / self.num_devices,
        }


def progress_line(step: int, total_steps: int, scalars: dict[str, float], task_fields: list[str]) -> str:
    """``step 10/100 (10.0%) | loss ... | <task_fields> | lr ... | |grad| ... | img/s | s/step | ETA``."""
    parts = [f"step {step}/{total_steps} ({100.0 * step / total_steps:.1f}%)", f"loss {scalars['loss']:.4f}"]
    parts += task_fields
    parts += [f"lr {scalars['learning_rate']:.3g}", f"|grad| {scalars['grad_norm']:.3g}"]
    if "step_time_s" in scalars:
        eta = (total_steps - step) * scalars["step_time_s"]
        parts += [
            f"{scalars['images_per_s']:.1f} img/s ({scalars['images_per_s_per_device']:.1f}/device)",
            f"{scalars['step_time_s']:.3f} s/step",
            f"ETA {format_duration(eta)}",
        ]
    return " | ".join(parts)
