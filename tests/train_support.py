"""Helpers for the trainer tests: a small image folder, launching train.py, reading its outputs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests" / "train_tiny_config.py"
NUM_CLASSES = 4

# The runs of the loop-guarantee tests (test_train_runs.py, test_task_guarantees.py): checkpoints
# every 2 steps keep a run busy long enough to be interrupted mid-way; two evaluations for retention.
GUARANTEE_STEPS = 24
GUARANTEE_OVERRIDES = (
    f"--config.num_steps={GUARANTEE_STEPS}",
    "--config.checkpoint_every_steps=2",
    "--config.keep_checkpoints=3",
    "--config.eval_every_steps=12",
)


def write_image_folder(root: Path, train_per_class: int = 12, val_per_class: int = 3, size: int = 32) -> Path:
    """``root/{train,val}/class_<k>/<i>.png``: noise around a class-specific colour (learnable, 4 classes)."""
    rng = np.random.default_rng(0)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]], np.float32)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in range(NUM_CLASSES):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = colours[label] + rng.normal(0, 60, (size, size, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def free_port() -> int:
    """A TCP port free on loopback now (for a coordinator or a test server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(jax_cache_dir: Path, num_devices: int = 1, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "JAX_PLATFORMS": "cpu",
            # Optimization level 0 compiles ~3x faster; every run compared in a test uses the same flags.
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices} --xla_backend_optimization_level=0",
            "JAX_COMPILATION_CACHE_DIR": str(jax_cache_dir),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            # No huge-page re-exec (tests/test_runtime.py covers it): a second interpreter start per run.
            "VHEAT_HUGE_PAGES": "0",
        }
    )
    env.update(extra)
    return env


def train_command(workdir: Path, data_dir: Path | None, *overrides: str, config: Path = TINY_CONFIG) -> list[str]:
    data = [f"--config.data_dir={data_dir}"] if data_dir is not None else []
    return [sys.executable, str(ROOT / "train.py"), f"--config={config}", f"--workdir={workdir}", *data, *overrides]


def start_train(
    workdir: Path, data_dir: Path | None, *overrides: str, env: dict[str, str], config: Path = TINY_CONFIG
) -> subprocess.Popen:
    return subprocess.Popen(
        train_command(workdir, data_dir, *overrides, config=config),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_train(
    workdir: Path,
    data_dir: Path | None,
    *overrides: str,
    env: dict[str, str],
    timeout: float = 300,
    check: bool = True,
    config: Path = TINY_CONFIG,
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        train_command(workdir, data_dir, *overrides, config=config),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"train.py exited with {result.returncode}:\n{result.stderr[-5000:]}")
    return result


def wait_for_path(path: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    """Polls until ``path`` exists; fails if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"train.py exited ({process.returncode}) before {path} appeared:\n{process.stderr.read()[-5000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)


def read_metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def train_losses(workdir: Path) -> dict[int, float]:
    """Loss per step; for steps logged twice (a resumed run), the later line."""
    return {row["step"]: row["train/loss"] for row in read_metrics(workdir) if "train/loss" in row}


def checkpoint_steps(workdir) -> list[int]:
    """The finished checkpoints' steps (on an object store a step's folder exists before its commit file)."""
    folder = workdir / "checkpoints"
    remote = "://" in str(workdir)
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.name.isdigit() and (not remote or (p / "commit_success.txt").exists()))


def saved_state(workdir: Path, step: int) -> dict:
    """The train state of a checkpoint as nested dicts of arrays, on this process's first device
    (whatever devices and processes wrote it)."""
    import jax
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(step) / "state"
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path).item_metadata
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
        return checkpointer.restore(path, target)


def saved_data_position(workdir: Path, step: int) -> list[dict]:
    """Every process's grain iterator state stored with a checkpoint."""
    folder = workdir / "checkpoints" / str(step) / "data"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("process_*.json"))]


def flat_arrays(tree) -> dict[str, np.ndarray]:
    import jax

    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def assert_same_final_state(workdir: Path, reference: Path, metric: str, num_steps: int = GUARANTEE_STEPS) -> None:
    """``workdir`` ended exactly as ``reference``: last checkpoint, data position and final evaluation."""
    assert checkpoint_steps(workdir)[-1] == num_steps
    got, want = flat_arrays(saved_state(workdir, num_steps)), flat_arrays(saved_state(reference, num_steps))
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert saved_data_position(workdir, num_steps) == saved_data_position(reference, num_steps)

    def final_eval(run: Path) -> list[dict]:  # evaluation results, without their timings
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in read_metrics(run)
                if row["step"] == num_steps and f"eval/{metric}" in row]

    assert final_eval(workdir) == final_eval(reference)
