"""Preemption with two processes (jax.distributed on localhost, 2 devices each), through JAX's sync protocol.

* SIGTERM to both processes (a maintenance event): both save the same step and exit 0,
  and the resumed 2-process run ends exactly as an uninterrupted one.
* Ctrl-C on one process: turned into a SIGTERM to itself, which JAX's preemption
  service reports to the other process; both stop at the same step with a checkpoint
  and exit 0, and nothing waits without bound. (This is the SIGTERM-to-one-host path.)
"""

import re
import signal
import subprocess

import pytest
from train_support import (
    GUARANTEE_OVERRIDES,
    assert_same_final_state,
    checkpoint_steps,
    free_port,
    start_train,
    subprocess_env,
    wait_for_path,
)

pytest_plugins = ("train_fixtures",)  # fixtures: image_folder, jax_cache_dir


def start_pair(workdir, image_folder, jax_cache_dir) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{free_port()}"
    return [
        start_train(workdir, image_folder, *GUARANTEE_OVERRIDES, env=subprocess_env(
            jax_cache_dir, num_devices=2, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(process_id)))
        for process_id in range(2)
    ]


def finish(processes, timeout=240) -> list[str]:
    """Every process's stderr; fails (after killing them) if any does not end within ``timeout``."""
    try:
        outputs = [process.communicate(timeout=timeout)[1] for process in processes]
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail(f"the 2-process run did not end within {timeout}s")
    for process, stderr in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-5000:]
    return outputs


def saved_steps(outputs: list[str]) -> list[int]:
    return [int(m[1]) for stderr in outputs for m in [re.search(r"preempted: saved the checkpoint at step (\d+)", stderr)]
            if m]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, image_folder, jax_cache_dir):
    workdir = tmp_path_factory.mktemp("uninterrupted_2proc")
    finish(start_pair(workdir, image_folder, jax_cache_dir))
    return workdir


def test_sigterm_to_both_saves_one_step_and_resumes_exactly(tmp_path, image_folder, jax_cache_dir, reference):
    processes = start_pair(tmp_path, image_folder, jax_cache_dir)
    wait_for_path(tmp_path / "checkpoints" / "4", processes[0])
    for process in processes:
        process.send_signal(signal.SIGTERM)
    steps = saved_steps(finish(processes))
    assert len(steps) == 2 and steps[0] == steps[1] and steps[0] == checkpoint_steps(tmp_path)[-1] < 24, steps

    outputs = finish(start_pair(tmp_path, image_folder, jax_cache_dir))
    assert f"resuming from the checkpoint at step {steps[0]}" in outputs[0]
    assert_same_final_state(tmp_path, reference, "top1")


def test_ctrl_c_on_one_process_stops_both_at_one_step(tmp_path, image_folder, jax_cache_dir):
    """Ctrl-C on process 1 becomes a SIGTERM to itself: this is also the SIGTERM-to-one-host path."""
    processes = start_pair(tmp_path, image_folder, jax_cache_dir)
    wait_for_path(tmp_path / "checkpoints" / "4", processes[0])
    processes[1].send_signal(signal.SIGINT)
    steps = saved_steps(finish(processes, timeout=120))
    assert len(steps) == 2 and steps[0] == steps[1] and steps[0] == checkpoint_steps(tmp_path)[-1] < 24, steps
