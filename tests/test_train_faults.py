"""The trainer and its workdir's faults, end to end through train.py (classification; the loop is shared).

* corrupt latest checkpoints (flipped data bytes, a truncated ``_METADATA``, a truncated
  data-iterator JSON): the run names each one it skips, moves it aside, resumes from
  the newest that restores;
* a second run on a held workdir: one line, exit 2; SIGTERM during set-up: exit 0;
* a full disk during an async save: one line naming ENOSPC, exit 1, a short log, the
  last good checkpoint restorable;
* a training image that cannot be read: retried, then one line and exit 1;
  read errors that clear up are retried through.
"""

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from train_support import (
    ROOT,
    TINY_CONFIG,
    checkpoint_steps,
    flat_arrays,
    run_train,
    saved_state,
    start_train,
    subprocess_env,
    train_command,
)

from vheat_jax.paths import DataReadError, read_with_retry

pytest_plugins = ("train_fixtures",)  # fixtures: image_folder, jax_cache_dir

SHORT = ("--config.num_steps=8", "--config.checkpoint_every_steps=2", "--config.keep_checkpoints=5",
         "--config.eval_every_steps=8")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, image_folder, jax_cache_dir):
    workdir = tmp_path_factory.mktemp("reference")
    run_train(workdir, image_folder, *SHORT, env=subprocess_env(jax_cache_dir))
    assert checkpoint_steps(workdir) == [2, 4, 6, 8]
    return workdir


def _flip_bytes(path: Path, count: int = 10) -> None:
    data = bytearray(path.read_bytes())
    for i in range(count):
        data[len(data) // 2 + i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_latest_checkpoints_fall_back_to_the_newest_that_restores(tmp_path, reference, image_folder,
                                                                          jax_cache_dir):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    checkpoints = workdir / "checkpoints"
    for data_file in (checkpoints / "8" / "state").rglob("*"):  # every array data file: whichever holds what
        if data_file.is_file() and data_file.parent.name == "d":
            _flip_bytes(data_file)
    with open(checkpoints / "6" / "state" / "_METADATA", "r+b") as f:
        f.truncate(100)
    with open(checkpoints / "4" / "data" / "process_0-of-1.json", "r+b") as f:
        f.truncate(5)
    good = flat_arrays(saved_state(workdir, 2))

    result = run_train(workdir, image_folder, *SHORT[1:], "--config.num_steps=10", env=subprocess_env(jax_cache_dir))
    for step in (8, 6, 4):
        assert f"the checkpoint at step {step} ({checkpoints / str(step)}) does not restore" in result.stderr
    assert "resuming from the checkpoint at step 2" in result.stderr
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr
    aside = sorted(p.name.split("-")[0] for p in (workdir / "unrestorable_checkpoints").iterdir())
    assert aside == ["4", "6", "8"]  # kept for inspection, out of the run's way
    assert checkpoint_steps(workdir)[-1] == 10
    resumed_from = flat_arrays(saved_state(workdir, 2))
    for key, value in good.items():
        np.testing.assert_array_equal(resumed_from[key], value, err_msg=key)


def test_when_no_checkpoint_restores_the_run_stops_and_moves_nothing(tmp_path, reference, image_folder,
                                                                     jax_cache_dir):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    # A changed model config looks like this to the restore: every checkpoint fails.
    result = run_train(workdir, image_folder, *SHORT, "--config.model.dims=16", env=subprocess_env(jax_cache_dir),
                       check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error: ")]
    assert len(errors) == 1 and "none of the 4 checkpoints" in errors[0] and "new --workdir" in errors[0]
    assert checkpoint_steps(workdir) == [2, 4, 6, 8] and not (workdir / "unrestorable_checkpoints").exists()


class StderrLines:
    """Collects a process's stderr lines as they come (a thread), so a test can wait for one."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(process.stderr), daemon=True)
        self._thread.start()

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{''.join(self.lines)[-3000:]}"
            time.sleep(0.05)

    def text(self) -> str:
        self._thread.join(timeout=60)
        return "".join(self.lines)


def test_a_second_run_is_refused_and_sigterm_during_setup_exits_cleanly(tmp_path, image_folder, jax_cache_dir):
    env = subprocess_env(jax_cache_dir)
    first = start_train(tmp_path, image_folder, "--config.num_steps=1000", env=env)
    first_log = StderrLines(first)
    first_log.wait_for("preparing data and model")  # signal handlers and the workdir lock are in place
    second = run_train(tmp_path, image_folder, "--config.num_steps=1000", env=env, check=False)
    assert second.returncode == 2, second.stderr[-3000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("train.py: error: ")]
    assert len(errors) == 1 and "is in use by another training run" in errors[0] and "Traceback" not in second.stderr
    assert f"pid {first.pid} " in errors[0]

    first.send_signal(signal.SIGTERM)  # most likely still setting up or compiling
    first.wait(timeout=180)
    log = first_log.text()
    assert first.returncode == 0, log[-3000:]
    assert "SIGTERM received" in log and "preempted: saved the checkpoint at step" in log
    # The lock went with the run: the next one starts (and resumes).
    third = run_train(tmp_path, image_folder, "--config.num_steps=2", env=env)
    assert "resuming from the checkpoint at step" in third.stderr or checkpoint_steps(tmp_path)[-1] == 2


def _can_mount_tmpfs() -> bool:
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not shutil.which("unshare") or not _can_mount_tmpfs(),
                    reason="needs an unprivileged user+mount namespace for a size-limited tmpfs")
def test_disk_full_during_an_async_save_stops_with_one_line(tmp_path, image_folder, jax_cache_dir):
    """The workdir is a 1.2 MB tmpfs: the third checkpoint (~0.4 MB each) does not fit."""
    mount, kept = tmp_path / "small_disk", tmp_path / "copied_out"
    mount.mkdir()
    command = " ".join(f"'{arg}'" for arg in train_command(
        mount / "run", image_folder, "--config.num_steps=40", "--config.checkpoint_every_steps=2",
        "--config.keep_checkpoints=5", "--config.eval_every_steps=100"))
    script = (f"mount -t tmpfs -o size=1200k tmpfs '{mount}' && {command}; status=$?; "
              f"cp -a '{mount}/run' '{kept}'; exit $status")
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=ROOT,
                            env=subprocess_env(jax_cache_dir), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error: ")]
    assert len(errors) == 1 and "no space left on the device (ENOSPC)" in errors[0], errors
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) < 40, result.stderr[-3000:]
    steps = checkpoint_steps(kept)
    assert steps and steps[-1] < 40
    assert flat_arrays(saved_state(kept, steps[-1]))  # the last good checkpoint restores


def test_read_errors_that_clear_are_retried_and_persistent_ones_raise(tmp_path):
    late = tmp_path / "late.png"
    threading.Timer(0.3, lambda: late.write_bytes(b"ok")).start()  # a file that appears after two attempts
    assert read_with_retry(late, attempts=5, backoff_s=0.2) == b"ok"
    with pytest.raises(DataReadError, match=r"could not read .*gone.png after 3 attempts"):
        read_with_retry(tmp_path / "gone.png", attempts=3, backoff_s=0.01)


def test_an_unreadable_training_image_stops_the_run_with_one_line(tmp_path, image_folder, jax_cache_dir):
    data = tmp_path / "images"
    shutil.copytree(image_folder, data)
    victim = sorted((data / "train" / "class_1").iterdir())[0]
    victim.unlink()
    victim.mkdir()  # listed as an image, but reading it fails with an I/O error (IsADirectoryError)
    result = run_train(tmp_path / "run", data, "--config.num_steps=8", env=subprocess_env(jax_cache_dir),
                       check=False, config=TINY_CONFIG)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error: ")]
    assert len(errors) == 1 and f"could not read {victim}" in errors[0] and "attempts" in errors[0], errors
    assert "retrying in" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "8")


def test_a_state_that_is_no_longer_finite_is_never_saved(tmp_path, image_folder, jax_cache_dir):
    """A learning rate beyond float32's range makes the first update infinite while the first loss
    (computed before it) is finite: the save at step 1 must see the state itself, not only the loss."""
    result = run_train(tmp_path, image_folder, "--config.num_steps=1", "--config.warmup_steps=0",
                       "--config.optimizer.base_lr=1e39", env=subprocess_env(jax_cache_dir), check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "training diverged: NaN or infinite values in" in errors[0]
    assert "at step 1; it is not saved, and no earlier checkpoint exists" in errors[0]
    assert checkpoint_steps(tmp_path) == []


def _empty_files(path: Path) -> None:
    for image in [path] if path.is_file() else path.rglob("*.png"):
        image.write_bytes(b"")


@pytest.mark.parametrize("emptied, share", [("train", "8 of the 8"), ("train/class_2", "of the 8")])
def test_a_training_split_that_does_not_decode_stops_at_once(tmp_path, image_folder, jax_cache_dir, emptied, share):
    """All files 0 bytes, or one class of 4: each is far past the allowed 1% of an epoch; one line, nothing saved."""
    data = tmp_path / "images"
    shutil.copytree(image_folder, data)
    _empty_files(data / emptied)
    result = run_train(tmp_path / "run", data, "--config.num_steps=8", env=subprocess_env(jax_cache_dir),
                       check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"{share} training images read in epoch 1 could not be decoded" in errors[0]
    assert "config.max_undecodable_fraction = 0.01" in errors[0]
    assert checkpoint_steps(tmp_path / "run") == []
    assert result.stderr.count("Skipping corrupt/undecodable image") <= 5  # named a few times, then counted


def test_undecodable_images_within_the_allowed_share_are_reported_once_per_epoch(tmp_path, image_folder,
                                                                                 jax_cache_dir):
    data = tmp_path / "images"
    shutil.copytree(image_folder, data)
    _empty_files(data / "train" / "class_1" / "000.png")
    _empty_files(data / "val" / "class_0" / "000.png")
    # 2 epochs of 6 steps: 1 undecodable image in each epoch of 48, and 1 of the 12 evaluation images.
    result = run_train(tmp_path / "run", data, "--config.num_steps=12", "--config.max_undecodable_fraction=0.1",
                       env=subprocess_env(jax_cache_dir))
    assert "epoch 1: 1 of 48 training images could not be decoded (skipped)" in result.stderr
    assert "epoch 2: 1 of 48 training images could not be decoded (skipped)" in result.stderr
    assert "evaluation: 1 of 12 images could not be decoded (left out)" in result.stderr
    assert checkpoint_steps(tmp_path / "run")[-1] == 12
