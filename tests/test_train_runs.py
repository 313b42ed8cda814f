"""End-to-end runs of train.py against one uninterrupted reference run.

* Interrupted runs (SIGKILL, SIGTERM, a save cut short) resume to exactly the
  reference's final state and data position. The runs start from a converted
  checkpoint (``init_from``), so this also checks that a resumed run takes its
  weights from its own checkpoint, not from ``init_from`` again.
* A NaN loss stops training with a clear error and leaves the checkpoints alone.
* Retention keeps the latest checkpoints and the best by EMA top-1.
"""

import re
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_support import (
    checkpoint_steps,
    flat_arrays,
    read_metrics,
    run_train,
    saved_data_position,
    saved_state,
    start_train,
    subprocess_env,
    wait_for_path,
)

from vheat_jax import Arch, save_orbax

pytest_plugins = ("train_fixtures",)  # fixtures: image_folder, jax_cache_dir

NUM_STEPS = 24
# Checkpoints every 2 steps keep the run busy long enough to be interrupted mid-way.
OVERRIDES = (
    f"--config.num_steps={NUM_STEPS}",
    "--config.checkpoint_every_steps=2",
    "--config.keep_checkpoints=3",
    "--config.eval_every_steps=12",
)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A converted tiny checkpoint with 10 classes (the runs use 4: the head is re-initialized)."""
    arch = Arch(dims=8, depths=(1, 1), post_norm=False, layer_scale=None, img_size=32, num_classes=10)
    shapes = jax.eval_shape(arch.build().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    rng = np.random.default_rng(42)
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.05, s.shape).astype(np.float32), shapes)
    path = tmp_path_factory.mktemp("pretrained") / "tiny10"
    save_orbax(params, arch, path)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, image_folder, jax_cache_dir, pretrained):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run_train(workdir, image_folder, *OVERRIDES, f"--config.init_from={pretrained}", env=subprocess_env(jax_cache_dir))
    return workdir


def assert_same_final_state(workdir, reference):
    assert checkpoint_steps(workdir)[-1] == NUM_STEPS
    got, want = flat_arrays(saved_state(workdir, NUM_STEPS)), flat_arrays(saved_state(reference, NUM_STEPS))
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert saved_data_position(workdir, NUM_STEPS) == saved_data_position(reference, NUM_STEPS)
    final_eval = [row for row in read_metrics(workdir) if row["step"] == NUM_STEPS and "eval/top1" in row]
    reference_eval = [row for row in read_metrics(reference) if row["step"] == NUM_STEPS and "eval/top1" in row]
    assert final_eval == reference_eval


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, image_folder, jax_cache_dir, pretrained, reference):
    env = subprocess_env(jax_cache_dir)
    args = (*OVERRIDES, f"--config.init_from={pretrained}")
    process = start_train(tmp_path, image_folder, *args, env=env)
    wait_for_path(tmp_path / "checkpoints" / "4", process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    interrupted_at = checkpoint_steps(tmp_path)[-1]
    assert process.returncode == -signal.SIGKILL and interrupted_at < NUM_STEPS

    # What a SIGKILL in the middle of a save leaves behind: a temporary directory
    # with part of the next step. It must be ignored, then cleaned up. (Made here
    # unless the kill really landed mid-save.)
    partial = tmp_path / "checkpoints" / f"{interrupted_at + 2}.orbax-checkpoint-tmp"
    if not partial.exists():
        shutil.copytree(tmp_path / "checkpoints" / str(interrupted_at), partial)
        shutil.rmtree(partial / "data")

    result = run_train(tmp_path, image_folder, *args, env=env)
    assert f"resuming from the checkpoint at step {interrupted_at}" in result.stderr
    assert not partial.exists()
    assert_same_final_state(tmp_path, reference)


def test_sigterm_saves_exits_0_and_resumes(tmp_path, image_folder, jax_cache_dir, pretrained, reference):
    env = subprocess_env(jax_cache_dir)
    args = (*OVERRIDES, f"--config.init_from={pretrained}")
    process = start_train(tmp_path, image_folder, *args, env=env)
    wait_for_path(tmp_path / "checkpoints" / "2", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    stopped_at = checkpoint_steps(tmp_path)[-1]
    assert f"preempted: saved the checkpoint at step {stopped_at}" in stderr
    assert 2 < stopped_at < NUM_STEPS

    result = run_train(tmp_path, image_folder, *args, env=env)
    assert f"resuming from the checkpoint at step {stopped_at}" in result.stderr
    assert_same_final_state(tmp_path, reference)


def test_retention_keeps_latest_and_best(reference):
    steps = checkpoint_steps(reference)
    assert steps[-3:] == [NUM_STEPS - 4, NUM_STEPS - 2, NUM_STEPS]
    evals = {row["step"]: row["eval/ema_top1"] for row in read_metrics(reference) if "eval/ema_top1" in row}
    best_step = max(evals, key=lambda s: (evals[s], s))  # ties: the later one
    assert best_step in steps
    assert set(steps) <= {NUM_STEPS - 4, NUM_STEPS - 2, NUM_STEPS, best_step}


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(
    tmp_path, image_folder, jax_cache_dir, reference
):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    before = checkpoint_steps(workdir)
    good = flat_arrays(saved_state(workdir, NUM_STEPS))

    # Continue past the end with an absurd learning rate: the update from step 24
    # blows the weights up and the loss of step 26 is NaN, before its checkpoint.
    result = run_train(
        workdir,
        image_folder,
        *OVERRIDES,
        f"--config.num_steps={NUM_STEPS + 8}",
        "--config.warmup_steps=0",
        "--config.optimizer.base_lr=1e30",
        env=subprocess_env(jax_cache_dir),
        check=False,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "training diverged" in line]
    assert len(errors) == 1
    assert re.search(rf"loss = (nan|inf|-inf).* at step {NUM_STEPS + 2};", errors[0])
    assert "Lower the learning rate" in errors[0]
    assert checkpoint_steps(workdir) == before
    after = flat_arrays(saved_state(workdir, NUM_STEPS))
    for key, value in good.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
