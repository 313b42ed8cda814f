"""Sharding and accumulation do not change the maths of a train step.

* Two steps on 8 devices (data parallel, and FSDP) equal the same steps on 1 device.
* Two updates accumulated over 2 micro-batches each equal two updates on the full batches.
"""

import json
import subprocess
import sys

import numpy as np
from train_support import ROOT, TINY_CONFIG, subprocess_env

pytest_plugins = ("train_fixtures",)  # fixture: jax_cache_dir

# Runs in a subprocess: the 8 host devices must be requested before jax is imported.
SCRIPT = r"""
import importlib.util, json, sys
import jax, numpy as np
from vheat_jax.cls import optim
from vheat_jax.cls.training import StateFactory, build_model, jit_train_step, new_train_state
from vheat_jax.train import sharding

spec = importlib.util.spec_from_file_location("tiny", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
out = sys.argv[2]
rng = np.random.default_rng(0)
labels = rng.integers(0, 4, 8)
batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),  # as the loader ships them
         "label": (np.eye(4)[labels] * 0.9 + 0.025).astype(np.float32),
         "valid": np.array([1, 1, 1, 0, 1, 1, 1, 1], np.float32)}
results = {}

def run(name, devices, batches, *, fsdp=False, accum=1, drop_path_rate=0.1):
    config = module.get_config()
    config.model.dims = 32  # so that some tensors are large enough for FSDP to split
    config.model.drop_path_rate = drop_path_rate
    config.fsdp, config.grad_accum_steps = fsdp, accum
    model = build_model(config)
    tx, schedule = optim.create_optimizer(config.optimizer, global_batch_size=8, warmup_steps=0, total_steps=10,
                                          grad_accum_steps=accum)
    mesh = sharding.make_mesh(devices)
    factory = StateFactory(model, tx, mesh, config)
    step = jit_train_step(config, model, tx, schedule, mesh, factory.shardings)
    # Random weights made on the host (compiling the init is slow on CPU), placed in each layout.
    params = jax.tree.map(lambda s: np.random.default_rng(1).normal(0, 0.05, s.shape).astype(np.float32),
                          factory.abstract.params)
    state = jax.device_put(new_train_state(params, tx), factory.shardings)
    losses, grad_norms = [], []
    for micro_batch in batches:
        state, metrics = step(state, sharding.global_batch(micro_batch, mesh))
        losses.append(float(metrics["loss"]))
        grad_norms.append(float(metrics["grad_norm"]))
    split = sum(any(axis is not None for axis in s.spec) for s in jax.tree.leaves(factory.shardings.params))
    np.savez(f"{out}/{name}.npz", **{jax.tree_util.keystr(path): np.asarray(v) for path, v in
             jax.tree_util.tree_leaves_with_path({"params": state.params, "ema": state.ema_params})})
    results[name] = {"losses": losses, "grad_norms": grad_norms, "num_devices": mesh.size, "split_params": split,
                     "updates": int(state.step)}

run("one", jax.devices()[:1], [batch] * 2)
run("eight", jax.devices(), [batch] * 2)
run("eight_fsdp", jax.devices(), [batch] * 2, fsdp=True)
# Accumulation: drop path off (its draws differ per micro-batch) and all rows valid
# (the mean over two halves is then the mean over the batch).
full = {**batch, "valid": np.ones(8, np.float32)}
halves = [{k: v[:4] for k, v in full.items()}, {k: v[4:] for k, v in full.items()}]
run("full_batch", jax.devices()[:1], [full] * 2, drop_path_rate=0.0)
run("accumulated", jax.devices()[:1], halves * 2, accum=2, drop_path_rate=0.0)
print(json.dumps(results))
"""


def assert_same_state(tmp_path, name, reference_name):
    arrays, reference = np.load(tmp_path / f"{name}.npz"), np.load(tmp_path / f"{reference_name}.npz")
    assert set(arrays) == set(reference)
    for key in reference:
        # Adam divides by sqrt(v): where a gradient is ~0, its summation-order noise
        # moves the update by a visible fraction. 5e-5 is 5% of one update at lr 1e-3.
        np.testing.assert_allclose(arrays[key], reference[key], rtol=1e-4, atol=5e-5, err_msg=f"{name}: {key}")


def test_sharded_and_accumulated_steps_match_the_plain_step(tmp_path, jax_cache_dir):
    env = subprocess_env(jax_cache_dir, num_devices=8)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(TINY_CONFIG), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    assert [runs[name]["num_devices"] for name in ("one", "eight", "eight_fsdp")] == [1, 8, 8]
    assert runs["eight"]["split_params"] == 0 and runs["eight_fsdp"]["split_params"] > 0
    for name in ("eight", "eight_fsdp"):
        np.testing.assert_allclose(runs[name]["losses"], runs["one"]["losses"], rtol=1e-5)
        # Adam is blind to the gradient's scale; the norm is not (a sum instead of a mean would show).
        np.testing.assert_allclose(runs[name]["grad_norms"], runs["one"]["grad_norms"], rtol=1e-5)
        assert_same_state(tmp_path, name, "one")

    assert runs["full_batch"]["updates"] == runs["accumulated"]["updates"] == 2
    assert_same_state(tmp_path, "accumulated", "full_batch")
