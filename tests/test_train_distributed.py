"""Two processes on localhost (jax.distributed, 2 devices each) train like one process with 4 devices.

Each process loads its own shard of every global batch. The shards of one step
are, together, exactly the examples of that step in the single-process run, and
each example's augmentation is seeded by its position in the global stream. So
with per-example augmentation on (random resized crop, flip, RandAugment, random
erasing) the mean loss of every step must agree up to float summation order.
Drop path and mixup stay off: their draws depend on a row's place in a batch.
"""

import subprocess

import numpy as np
import pytest
from train_support import (
    checkpoint_steps,
    free_port,
    read_metrics,
    run_train,
    saved_data_position,
    start_train,
    subprocess_env,
    train_losses,
)

pytest_plugins = ("train_fixtures",)  # fixtures: image_folder, jax_cache_dir

NUM_STEPS = 6
OVERRIDES = (
    f"--config.num_steps={NUM_STEPS}",
    "--config.model.drop_path_rate=0.0",
    "--config.checkpoint_every_steps=1000",
    "--config.aug.random_resized_crop=True",
    "--config.aug.hflip=True",
    "--config.aug.randaug=rand-m9-mstd0.5-inc1",
    "--config.aug.reprob=0.25",
)


def final_eval(workdir):
    return [row for row in read_metrics(workdir) if "eval/top1" in row][-1]


def test_two_processes_match_one_process(tmp_path, image_folder, jax_cache_dir):
    single = tmp_path / "single"
    run_train(single, image_folder, *OVERRIDES, env=subprocess_env(jax_cache_dir, num_devices=4))

    multi = tmp_path / "multi"
    address = f"127.0.0.1:{free_port()}"
    processes = [
        start_train(
            multi,
            image_folder,
            *OVERRIDES,
            env=subprocess_env(
                jax_cache_dir,
                num_devices=2,
                JAX_COORDINATOR_ADDRESS=address,
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(process_id),
            ),
        )
        for process_id in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=240) for process in processes]
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail("the 2-process run did not finish in time")
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-5000:]
    assert "4 devices (2 processes)" in outputs[0][1]

    single_losses, multi_losses = train_losses(single), train_losses(multi)
    assert sorted(multi_losses) == list(range(1, NUM_STEPS + 1))
    np.testing.assert_allclose(
        [multi_losses[s] for s in sorted(multi_losses)], [single_losses[s] for s in sorted(single_losses)], rtol=1e-5
    )
    for name in ("eval/top1", "eval/top5", "eval/ema_top1", "eval/num_examples"):
        assert final_eval(multi)[name] == final_eval(single)[name], name
    np.testing.assert_allclose(final_eval(multi)["eval/loss"], final_eval(single)["eval/loss"], rtol=1e-5)
    # Both processes wrote their shards and their own data-iterator position.
    assert checkpoint_steps(multi) == [NUM_STEPS]
    assert len(saved_data_position(multi, NUM_STEPS)) == 2
