"""Stop signals wherever the run is, with grain worker processes: the process group, the main
process only, a worker only; and a worker that dies without any signal.

Slurm's ``scancel``, ``timeout`` and container runtimes signal every process of the job, so the
loader's workers get the SIGTERM too. They leave it to the main process, which saves and stops
them in order; an evaluation the signal interrupts is skipped and rerun on resume.
"""

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from train_support import ROOT, TINY_CONFIG, checkpoint_steps, read_metrics, subprocess_env, train_command

pytest_plugins = ("train_fixtures",)  # fixtures: image_folder, jax_cache_dir

# Evaluation at step 4 and at the end; every evaluation starts a fresh worker process, which takes
# seconds, so a signal sent when "evaluating at step 4" is logged lands inside the evaluation.
OVERRIDES = ("--config.num_workers=1", "--config.num_steps=8", "--config.eval_every_steps=4",
             "--config.checkpoint_every_steps=100")


class Run:
    """train.py in its own process group, its stderr read line by line as it comes."""

    def __init__(self, workdir: Path, data: Path | None, env: dict, *extra: str, config: Path = TINY_CONFIG):
        self.process = subprocess.Popen(train_command(workdir, data, *OVERRIDES, *extra, config=config), env=env,
                                        text=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.process.kill()
                raise AssertionError(f"{text!r} not logged within {timeout}s:\n{self.stderr[-3000:]}") from None
            if line is None:
                raise AssertionError(f"train.py exited ({self.process.wait()}) before {text!r}:\n{self.stderr[-3000:]}")
            self.lines.append(line)

    def finish(self, timeout: float = 180) -> int:
        code = self.process.wait(timeout=timeout)
        while (line := self._queue.get(timeout=30)) is not None:
            self.lines.append(line)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def loader_workers(self) -> list[int]:
        """The pids of the grain worker processes (multiprocessing's spawned children, not its resource tracker)."""
        # A child is listed under the thread that started it (grain starts its workers off the main thread).
        children = [c for task in Path(f"/proc/{self.process.pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
        return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.fixture
def env(jax_cache_dir):
    return subprocess_env(jax_cache_dir)


def resume_reruns_the_evaluation(workdir, data, env) -> None:
    run = Run(workdir, data, env)
    assert run.finish() == 0, run.stderr[-3000:]
    assert "the evaluation at step 4 was interrupted; running it now" in run.stderr
    evaluated = [row["step"] for row in read_metrics(workdir) if "eval/top1" in row]
    assert evaluated == [4, 8], evaluated
    assert checkpoint_steps(workdir)[-1] == 8


@pytest.mark.parametrize("to_group", [True, False], ids=["process-group", "main-process"])
def test_sigterm_during_evaluation_saves_then_resume_reruns_it(tmp_path, image_folder, env, to_group):
    run = Run(tmp_path, image_folder, env)
    run.wait_for("evaluating at step 4")
    if to_group:
        os.killpg(run.process.pid, signal.SIGTERM)
    else:
        run.process.send_signal(signal.SIGTERM)
    assert run.finish() == 0, run.stderr[-3000:]
    assert "preempted during the evaluation (it runs again on resume): saved the checkpoint at step 4" in run.stderr
    assert "Traceback" not in run.stderr
    assert checkpoint_steps(tmp_path) == [4]
    if to_group:  # the resume is the same either way: once is enough for the suite's time
        resume_reruns_the_evaluation(tmp_path, image_folder, env)


def test_sigterm_to_a_worker_only_is_left_to_the_main_process(tmp_path, image_folder, env):
    run = Run(tmp_path, image_folder, env)
    run.wait_for("step 2/8")
    workers = run.loader_workers()
    assert workers, "no loader worker found"
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    assert run.finish() == 0, run.stderr[-3000:]
    assert "saved the checkpoint" not in run.stderr and "Traceback" not in run.stderr
    assert checkpoint_steps(tmp_path)[-1] == 8
    assert [row["step"] for row in read_metrics(tmp_path) if "eval/top1" in row] == [4, 8]


def test_a_worker_killed_without_a_stop_signal_is_one_line_and_keeps_the_checkpoint(tmp_path, image_folder, env):
    run = Run(tmp_path, image_folder, env, "--config.checkpoint_every_steps=2")
    run.wait_for("step 2/8")
    train_workers = set(run.loader_workers())
    run.wait_for("evaluating at step 4")
    deadline = time.monotonic() + 60
    while not (eval_workers := set(run.loader_workers()) - train_workers):  # the evaluation's own worker
        assert time.monotonic() < deadline, "the evaluation started no worker"
        time.sleep(0.05)
    for pid in eval_workers:
        os.kill(pid, signal.SIGKILL)
    assert run.finish() == 1, run.stderr[-3000:]
    error = [line for line in run.lines if "error:" in line]
    assert len(error) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "a data-loader worker process died (killed by SIGKILL)" in error[0]
    assert "the checkpoint at step 2 holds the run" in error[0]
    assert checkpoint_steps(tmp_path) == [2]


def test_segmentation_with_loader_workers_stops_on_a_process_group_sigterm_and_resumes(tmp_path, env):
    """UperNet's training loader runs in grain workers too: the group's SIGTERM saves (during the evaluation or
    at the next step, whichever it lands in), exits 0, and the resumed run evaluates at 4 and at the end."""
    config = ROOT / "tests" / "seg_tiny_config.py"
    run = Run(tmp_path, None, env, config=config)
    run.wait_for("evaluating at step 4")
    os.killpg(run.process.pid, signal.SIGTERM)
    assert run.finish() == 0, run.stderr[-3000:]
    assert "saved the checkpoint at step" in run.stderr and "Traceback" not in run.stderr
    resumed = Run(tmp_path, None, env, config=config)
    assert resumed.finish() == 0, resumed.stderr[-3000:]
    assert [row["step"] for row in read_metrics(tmp_path) if "eval/mIoU" in row] == [4, 8]
