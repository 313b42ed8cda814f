"""The shared loop's guarantees, for every task, end to end through train.py.

For classification, segmentation and detection, against one uninterrupted reference run:

* SIGTERM (segmentation, detection) or Ctrl-C (classification; the same handler, and
  test_train_preemption_multihost.py sends SIGTERM to a classification run) saves a
  checkpoint and exits 0; the re-run resumes from it; SIGKILL of that run (a save cut short included) and a last resume end
  with exactly the reference's final state, data position and final evaluation;
* retention keeps the latest ``keep_checkpoints`` and the best by the task's metric;
* a NaN loss stops with one line and exit 1 and leaves the checkpoints as they were.

The classification runs start from a converted checkpoint (``init_from``), so a resumed
run is also shown to take its weights from its own checkpoint, not from ``init_from``.
"""

import json
import re
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from train_support import (
    GUARANTEE_OVERRIDES,
    GUARANTEE_STEPS,
    ROOT,
    TINY_CONFIG,
    assert_same_final_state,
    checkpoint_steps,
    flat_arrays,
    read_metrics,
    run_train,
    saved_state,
    start_train,
    subprocess_env,
    wait_for_path,
)

from vheat_jax import Arch, save_orbax

pytest_plugins = ("train_fixtures",)  # fixtures: image_folder, jax_cache_dir

NUM_STEPS = GUARANTEE_STEPS


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A converted tiny checkpoint with 10 classes (the classification runs use 4: the head is re-initialized)."""
    arch = Arch(dims=8, depths=(1, 1), post_norm=False, layer_scale=None, img_size=32, num_classes=10)
    shapes = jax.eval_shape(arch.build().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    rng = np.random.default_rng(42)
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.05, s.shape).astype(np.float32), shapes)
    path = tmp_path_factory.mktemp("pretrained") / "tiny10"
    save_orbax(params, arch, path)
    return path


class Task:
    """One task's runs: its config, best metric, overrides, the overrides that make it diverge, its stop signals."""

    def __init__(self, config, metric, overrides, diverge, stop_signals, reference=None):
        self.config, self.metric, self.overrides = config, metric, (*GUARANTEE_OVERRIDES, *overrides)
        self.diverge, self.stop_signals, self.reference = diverge, stop_signals, reference

    def start(self, workdir, env, *extra):
        return start_train(workdir, None, *self.overrides, *extra, env=env, config=self.config)

    def run(self, workdir, env, *extra, check=True):
        return run_train(workdir, None, *self.overrides, *extra, env=env, config=self.config, check=check)


@pytest.fixture(scope="module", params=["classification", "segmentation", "detection"])
def task(request, tmp_path_factory, jax_cache_dir) -> Task:
    if request.param == "classification":
        data, pretrained = request.getfixturevalue("image_folder"), request.getfixturevalue("pretrained")
        task = Task(TINY_CONFIG, "top1", [f"--config.data_dir={data}", f"--config.init_from={pretrained}"],
                    ["--config.warmup_steps=0", "--config.optimizer.base_lr=1e30"], [signal.SIGINT])
    elif request.param == "segmentation":
        task = Task(ROOT / "tests" / "seg_tiny_config.py", "mIoU", [], ["--config.optimizer.lr=1e30"],
                    [signal.SIGTERM])
    else:
        # The detection demo data are written once; every run of the module reads the same files.
        data = tmp_path_factory.mktemp("shapes")
        task = Task(ROOT / "tests" / "det_tiny_config.py", "bbox_mAP", [f"--config.data_dir={data}"],
                    ["--config.optimizer.lr=1e30"], [signal.SIGTERM])
    task.kind = request.param
    task.reference = tmp_path_factory.mktemp(f"{request.param}_uninterrupted")
    task.run(task.reference, subprocess_env(jax_cache_dir))
    return task


def test_stop_signals_then_sigkill_then_resume_match_uninterrupted_run(tmp_path, jax_cache_dir, task):
    env = subprocess_env(jax_cache_dir)
    stopped_at = 0
    for stop in task.stop_signals:
        process = task.start(tmp_path, env)
        # The periodic saves are at even steps; a preemption save may have been at any step.
        wait_for_path(tmp_path / "checkpoints" / str(stopped_at + 4 - stopped_at % 2), process)
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, (stop, stderr[-3000:])
        assert f"resuming from the checkpoint at step {stopped_at}" in stderr or stopped_at == 0
        stopped_at = checkpoint_steps(tmp_path)[-1]
        assert f"{'SIGTERM' if stop == signal.SIGTERM else 'Ctrl-C'} received" in stderr
        assert f"preempted: saved the checkpoint at step {stopped_at}" in stderr
        assert "Traceback" not in stderr
        assert stopped_at < NUM_STEPS

    process = task.start(tmp_path, env)
    wait_for_path(tmp_path / "checkpoints" / str(stopped_at + 4 - stopped_at % 2), process)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert f"resuming from the checkpoint at step {stopped_at}" in stderr
    killed_at = checkpoint_steps(tmp_path)[-1]
    assert process.returncode == -signal.SIGKILL and killed_at < NUM_STEPS
    # What a SIGKILL in the middle of a save leaves behind: a temporary directory with part
    # of the next step. It must be ignored, then cleaned up. (Made here unless the kill
    # really landed mid-save.)
    partial = tmp_path / "checkpoints" / f"{killed_at + 2}.orbax-checkpoint-tmp"
    if not partial.exists():
        shutil.copytree(tmp_path / "checkpoints" / str(killed_at), partial)
        shutil.rmtree(partial / "data")

    result = task.run(tmp_path, env)
    assert f"resuming from the checkpoint at step {killed_at}" in result.stderr
    assert not partial.exists()
    assert_same_final_state(tmp_path, task.reference, task.metric)


def test_retention_keeps_latest_and_best(task):
    steps = checkpoint_steps(task.reference)
    assert steps[-3:] == [NUM_STEPS - 4, NUM_STEPS - 2, NUM_STEPS]
    evals = {row["step"]: row[f"eval/{task.metric}"] for row in read_metrics(task.reference)
             if f"eval/{task.metric}" in row}
    assert sorted(evals) == [12, 24]
    best = {"top1": "ema_top1"}.get(task.metric, task.metric)  # classification keeps the best EMA top-1
    scores = {row["step"]: row[f"eval/{best}"] for row in read_metrics(task.reference) if f"eval/{best}" in row}
    best_step = max(scores, key=lambda s: (scores[s], s))  # ties: the later one
    assert set(steps) == {NUM_STEPS - 4, NUM_STEPS - 2, NUM_STEPS, best_step}


def test_nan_loss_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path, jax_cache_dir, task):
    workdir = tmp_path / "run"
    shutil.copytree(task.reference, workdir)
    before = checkpoint_steps(workdir)
    good = flat_arrays(saved_state(workdir, NUM_STEPS))

    # Continue past the end with an absurd learning rate: the update from step 24 blows the
    # weights up and a later loss is NaN/Inf, found before the next checkpoint is written.
    result = task.run(workdir, subprocess_env(jax_cache_dir), f"--config.num_steps={NUM_STEPS + 8}", *task.diverge,
                      check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "training diverged" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert re.fullmatch(r"train\.py: error: training diverged: .*(nan|inf).* at step \d+; .*Lower the learning rate.*",
                        errors[0]), errors[0]
    assert checkpoint_steps(workdir) == before
    after = flat_arrays(saved_state(workdir, NUM_STEPS))
    for key, value in good.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_the_standalone_evaluator_agrees_with_the_trainer(task, jax_cache_dir):
    """The same weights, data and protocol through ``*_eval.py`` give the trainer's final numbers to the last
    digit the trainer prints (the export or workdir the run leaves is what a user evaluates)."""
    reference = task.reference
    data = [arg for arg in task.overrides if arg.startswith("--config.data_dir=")]
    if task.kind == "classification":
        command = ["eval.py", f"--config={task.config}", *data, f"--checkpoint={reference}", "--form=train"]
        digits = {"top1": 2, "top5": 2}
    elif task.kind == "segmentation":
        command = ["seg_eval.py", f"--config={task.config}", f"--checkpoint={reference / 'upernet_mmseg.pth'}"]
        digits = {"mIoU": 2, "mAcc": 2, "aAcc": 2}
    else:
        shapes = data[0].split("=", 1)[1]
        command = ["det_eval.py", f"--checkpoint={reference / 'maskrcnn_mmdet.pth'}", f"--data_dir={shapes}",
                   "--split=val", "--scale=64,64"]
        digits = {"bbox_mAP": 4, "segm_mAP": 4, "bbox_mAP_50": 4, "segm_mAP_50": 4}
    result = subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]], cwd=ROOT, capture_output=True,
                            text=True, env=subprocess_env(jax_cache_dir), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pre- or post-norm" not in result.stderr  # our own exports say which
    assert "index created" not in result.stdout + result.stderr  # pycocotools' chatter stays hidden
    standalone = json.loads(result.stdout[result.stdout.index("{"):])
    trainer = [row for row in read_metrics(reference) if row["step"] == NUM_STEPS and f"eval/{task.metric}" in row][-1]
    for name, places in digits.items():
        assert round(standalone[name], places) == round(trainer[f"eval/{name}"], places), (name, standalone, trainer)


def test_predict_shows_what_the_runs_own_model_sees(task, jax_cache_dir, tmp_path):
    """predict.py on the run's own output: top classes for classification, overlays that are the input's size
    and differ from it for segmentation and detection."""
    image = tmp_path / "input.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(image)
    data = [arg for arg in task.overrides if arg.startswith("--config.data_dir=")]
    checkpoint = {"classification": task.reference, "segmentation": task.reference / "upernet_mmseg.pth",
                  "detection": task.reference / "maskrcnn_mmdet.pth"}[task.kind]
    command = [sys.executable, str(ROOT / "predict.py"), f"--checkpoint={checkpoint}", f"--out={tmp_path / 'out'}",
               "--scale=64,64", "--score_thr=0", str(image)]
    if task.kind == "classification":
        command[2:2] = [f"--config={task.config}", *data]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=subprocess_env(jax_cache_dir),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    if task.kind == "classification":
        probs = [entry["prob"] for entry in line["top"]]
        assert [entry["class"] for entry in line["top"]] and sorted(probs, reverse=True) == probs
        assert len(line["top"]) == 4 and abs(sum(probs) - 1) < 1e-4  # the 4 classes of the run
        return
    overlay = np.asarray(Image.open(line["overlay"]).convert("RGB"))
    original = np.asarray(Image.open(image).convert("RGB"))
    assert overlay.shape == original.shape and not np.array_equal(overlay, original)
