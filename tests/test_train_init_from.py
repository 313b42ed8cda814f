"""``config.init_from``: fine-tuning from converted checkpoints, with a clear error on architecture mismatch."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from train_support import TINY_CONFIG

from vheat_jax import Arch, ArchitectureMismatchError, export_torch, save_msgpack, save_orbax
from vheat_jax.cls import optim
from vheat_jax.cls.pretrained import load_pretrained
from vheat_jax.cls.training import StateFactory, build_model
from vheat_jax.resize import resize_bicubic_hw
from vheat_jax.train import sharding


def tiny_config(**changes):
    spec = importlib.util.spec_from_file_location("tiny", TINY_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for name, value in changes.items():
        config[name] = value
    return config


def random_params(arch: Arch, seed: int = 0) -> dict:
    shapes = jax.eval_shape(arch.build().init, jax.random.key(0), jnp.zeros((1, arch.img_size, arch.img_size, 3)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0.0, 0.05, s.shape).astype(np.float32), shapes["params"])


def write_checkpoint(params, arch, path, fmt):
    if fmt == "orbax":
        save_orbax(params, arch, path)
    elif fmt == "msgpack":
        save_msgpack(params, arch, path)
    else:
        export_torch(params, arch, path)
    return path


# Pre-trained at 64 px with 10 classes; the config fine-tunes at 32 px with 4.
PRETRAINED = Arch(dims=8, depths=(1, 1), post_norm=False, layer_scale=None, img_size=64, num_classes=10)


@pytest.mark.parametrize("fmt, name", [("orbax", "ckpt"), ("msgpack", "ckpt.msgpack"), ("pth", "ckpt.pth")])
def test_weights_loaded_embeddings_resized_classifier_reinitialized(tmp_path, fmt, name):
    saved = random_params(PRETRAINED)
    path = write_checkpoint(saved, PRETRAINED, tmp_path / name, fmt)
    model = build_model(tiny_config())
    fresh = random_params(
        Arch(dims=8, depths=(1, 1), post_norm=False, layer_scale=None, img_size=32, num_classes=4), seed=1
    )

    loaded = traverse_util.flatten_dict(load_pretrained(str(path), model, fresh))
    saved_flat, fresh_flat = traverse_util.flatten_dict(saved), traverse_util.flatten_dict(fresh)
    assert set(loaded) == set(fresh_flat)
    for key, value in loaded.items():
        if key[0] == "head":  # 10 -> 4 classes: the fresh initialization
            np.testing.assert_array_equal(value, fresh_flat[key])
        elif key[0].startswith("freq_embed_"):  # 16x16 / 8x8 at 64 px -> 8x8 / 4x4 at 32 px
            expected = resize_bicubic_hw(saved_flat[key], value.shape[:2])
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(value, saved_flat[key], err_msg=str(key))


def test_train_state_starts_from_the_checkpoint(tmp_path):
    arch = PRETRAINED.replace(img_size=32, num_classes=4)
    saved = random_params(arch)
    path = write_checkpoint(saved, arch, tmp_path / "ckpt", "orbax")
    config = tiny_config(init_from=str(path))
    model = build_model(config)
    tx, _ = optim.create_optimizer(config.optimizer, global_batch_size=8, warmup_steps=1, total_steps=4)
    factory = StateFactory(model, tx, sharding.make_mesh(jax.devices()[:1]), config)

    state = jax.device_get(factory.from_pretrained(config.init_from, ema=False))
    assert int(state.step) == 0
    for tree in (state.params, state.ema_params):
        jax.tree.map(np.testing.assert_array_equal, tree, saved)
    adam = state.opt_state[1][0]
    assert not any(np.any(m) for m in jax.tree.leaves(adam.mu))


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(dims=16), "stage-0 width (dims)"),
        (dict(depths=(1, 2)), "depths"),
        (dict(post_norm=True, layer_scale=1e-5), "layer scale"),
    ],
)
def test_architecture_mismatch_is_a_clear_error(tmp_path, change, words):
    arch = PRETRAINED.replace(**change)
    path = write_checkpoint(random_params(arch), arch, tmp_path / "other", "orbax")
    model = build_model(tiny_config())
    with pytest.raises(ArchitectureMismatchError) as error:
        load_pretrained(str(path), model, {})
    message = str(error.value)
    assert words in message and "init_from checkpoint" in message and "config.model" in message
