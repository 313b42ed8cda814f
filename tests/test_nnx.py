"""Flax NNX through ``flax.nnx.bridge``: the official outputs, an ``nnx.jit`` train step, Orbax save/restore."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import VHEAT_CASES, load_case, nchw_to_nhwc
from flax import nnx

import vheat_jax


@pytest.mark.parametrize("case", VHEAT_CASES)
def test_the_official_logits_through_nnx(vheat_fixtures, case):
    _, arrays = load_case(case)
    _, model = vheat_jax.load_nnx(vheat_fixtures / f"{case}.pth")
    assert isinstance(model, nnx.Module)
    logits = model(jnp.asarray(nchw_to_nhwc(arrays["input"])))
    np.testing.assert_allclose(logits, arrays["logits"], atol=5e-5, rtol=0)


def test_an_nnx_jit_train_step_updates_the_weights_and_orbax_restores_them(vheat_fixtures, tmp_path):
    _, arrays = load_case("tiny_prenorm")
    images = jnp.asarray(nchw_to_nhwc(arrays["input"]))
    labels = jnp.arange(images.shape[0]) % 10
    arch, params = vheat_jax.params_from_torch(vheat_fixtures / "tiny_prenorm.pth")
    model = vheat_jax.to_nnx(arch, params, drop_path_rate=0.1)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, images, labels):
        def loss_fn(model):
            logits = model(images, train=True)  # drop path on
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, images, labels)) for _ in range(3)]
    assert losses[-1] < losses[0]
    trained = nnx.state(model, nnx.Param)
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), nnx.to_pure_dict(trained), dict(params))
    assert all(jax.tree.leaves(changed))  # every array moved

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "nnx", nnx.to_pure_dict(trained))
    fresh = vheat_jax.to_nnx(arch)  # other weights until restored
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "nnx")
    state = nnx.state(fresh, nnx.Param)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(fresh, state)
    np.testing.assert_array_equal(fresh(images), model(images))
