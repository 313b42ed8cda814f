"""The official recipe: configs, learning-rate schedule, weight-decay mask, durations."""

import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from train_support import ROOT, run_train, subprocess_env

from vheat_jax import create_model
from vheat_jax.cls import optim
from vheat_jax.train.loop import resolve_run_length, resolve_steps

pytest_plugins = ("train_fixtures",)  # fixtures: image_folder, jax_cache_dir

IMAGENET_TRAIN_IMAGES = 1_281_167


def run_length(config, num_images: int):
    """``(RunLength, warm-up steps)`` as the classification task resolves them."""
    steps_per_epoch = num_images // config.global_batch_size
    return resolve_run_length(config, steps_per_epoch), resolve_steps(config, "warmup", steps_per_epoch)


def load_config(name: str, *args):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)


@pytest.mark.parametrize(
    "name, variant, drop_path",
    [("vheat_t", "vheat_tiny", 0.1), ("vheat_s", "vheat_small", 0.3), ("vheat_b", "vheat_base", 0.5)],
)
def test_imagenet_configs_carry_the_official_recipe(name, variant, drop_path):
    config = load_config(name)
    assert (config.model.name, config.model.drop_path_rate) == (variant, drop_path)
    assert (config.global_batch_size, config.image_size, config.num_classes) == (2048, 224, 1000)
    assert (config.num_epochs, config.warmup_epochs, config.ema_decay) == (300, 20, 0.9999)
    opt = config.optimizer
    assert (opt.base_lr, opt.warmup_lr, opt.min_lr, opt.lr_reference_batch) == (5e-4, 5e-7, 5e-6, 512)
    assert (opt.b1, opt.b2, opt.eps, opt.weight_decay, opt.grad_clip_norm) == (0.9, 0.999, 1e-8, 0.08, 5.0)
    assert config.aug.label_smoothing == 0.1
    assert load_config(name, "tfds").dataset == "tfds"


def test_recipe_schedule_at_sampled_steps():
    config = load_config("vheat_t")
    run, warmup_steps = run_length(config, IMAGENET_TRAIN_IMAGES)
    # 1,281,167 // 2048 = 625 steps per epoch.
    assert (run.steps_per_epoch, run.total_steps, warmup_steps) == (625, 187_500, 12_500)
    _, schedule = optim.create_optimizer(
        config.optimizer, global_batch_size=2048, warmup_steps=warmup_steps, total_steps=run.total_steps
    )
    # lr = value * 2048 / 512: warm-up 2e-6 -> base 2e-3, cosine to min 2e-5 over 175,000 steps.
    expected = {
        0: 2e-6,
        6_250: 2e-6 + 0.5 * (2e-3 - 2e-6),  # half-way through the linear warm-up
        12_500: 2e-3,  # warm-up done: cosine starts at the base lr
        12_500 + 87_500: 2e-5 + 0.5 * (2e-3 - 2e-5),  # cosine half-way
        12_500 + 43_750: 2e-5 + 0.5 * (2e-3 - 2e-5) * (1 + math.cos(math.pi / 4)),
        187_500: 2e-5,
        190_000: 2e-5,
    }
    for step, lr in expected.items():  # update step + 1 runs at lr(step): the official call order
        assert float(schedule(step + 1)) == pytest.approx(lr, rel=1e-5), step


def test_steps_override_epochs():
    config = load_config("vheat_t")
    config.num_steps = 1000
    config.eval_every_steps = 250
    run, warmup_steps = run_length(config, IMAGENET_TRAIN_IMAGES)
    assert (run.total_steps, warmup_steps, run.eval_every_steps) == (1000, 12_500, 250)
    config.global_batch_size = 1024  # epochs are converted with the global batch
    assert run_length(config, IMAGENET_TRAIN_IMAGES)[1] == 20 * 1251


def test_weight_decay_skips_1d_params_and_biases_but_not_freq_embed():
    # Post-norm with layer scale, so the 1-D gamma parameters exist too.
    model = create_model("vheat_small", dims=8, depths=(1, 1, 1, 1), img_size=32, num_classes=4)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    mask = traverse_util.flatten_dict(optim.weight_decay_mask(params))
    names = {path[-1] for path in mask}
    assert {"kernel", "bias", "scale", "gamma1", "freq_embed_0"} <= names
    for path, decayed in mask.items():
        assert decayed == (path[-1] == "kernel" or path[-1].startswith("freq_embed")), path


def test_optimizer_decays_only_masked_params_at_the_scheduled_lr():
    """With zero gradients AdamW's update is exactly ``-lr * weight_decay * param`` where decay applies."""
    opt_config = load_config("vheat_t").optimizer
    tx, _ = optim.create_optimizer(opt_config, global_batch_size=512, warmup_steps=2, total_steps=6)
    params = {
        "kernel": jnp.full((2, 3), 2.0),
        "bias": jnp.ones(3),
        "freq_embed_0": jnp.ones((2, 2, 3)),
        "scale": jnp.ones(3),
    }
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    # Updates 0..5 of warm-up 2 / total 6 at batch 512: 5e-7 twice (the official call order), 2.5e-4 + 2.5e-7,
    # then a cosine from 5e-4 towards 5e-6.
    cosine = [5e-6 + 0.5 * (5e-4 - 5e-6) * (1 + math.cos(math.pi * t / 4)) for t in range(3)]
    for lr in [5e-7, 5e-7, 5e-7 + 0.5 * (5e-4 - 5e-7), *cosine]:
        updates, state = tx.update(zeros, state, params)
        np.testing.assert_allclose(updates["kernel"], -lr * 0.08 * params["kernel"], rtol=1e-5)
        np.testing.assert_allclose(updates["freq_embed_0"], -lr * 0.08 * params["freq_embed_0"], rtol=1e-5)
        assert not np.any(updates["bias"]) and not np.any(updates["scale"])


def test_gradient_accumulation_applies_one_averaged_update_every_k():
    opt_config = load_config("vheat_t").optimizer
    opt_config.grad_clip_norm = 0.0
    opt_config.weight_decay = 0.0
    single, _ = optim.create_optimizer(opt_config, global_batch_size=512, warmup_steps=0, total_steps=10)
    accum, _ = optim.create_optimizer(
        opt_config, global_batch_size=512, warmup_steps=0, total_steps=10, grad_accum_steps=2
    )
    params = {"kernel": jnp.ones((2, 2))}
    g1, g2 = {"kernel": jnp.full((2, 2), 1.0)}, {"kernel": jnp.full((2, 2), 3.0)}
    expected, _ = single.update({"kernel": jnp.full((2, 2), 2.0)}, single.init(params), params)
    state = accum.init(params)
    first, state = accum.update(g1, state, params)
    assert not np.any(first["kernel"]) and not optim.applied_update(accum, state)
    second, state = accum.update(g2, state, params)
    assert optim.applied_update(accum, state)
    np.testing.assert_allclose(second["kernel"], expected["kernel"], rtol=1e-6)


def test_runs_keep_their_compiled_steps_in_the_workdir_unless_told_not_to(tmp_path, image_folder, jax_cache_dir):
    env = subprocess_env(jax_cache_dir)
    del env["JAX_COMPILATION_CACHE_DIR"]  # the suite's shared cache would win over the workdir's
    run_train(tmp_path / "cached", image_folder, "--config.num_steps=2", env=env)
    assert any((tmp_path / "cached" / "jax_cache").iterdir())
    run_train(tmp_path / "off", image_folder, "--config.num_steps=2", "--config.compilation_cache=False", env=env)
    assert not (tmp_path / "off" / "jax_cache").exists()
