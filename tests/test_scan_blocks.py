"""``scan_blocks``: each stage's blocks as one ``lax.scan`` over their stacked parameters. The same model: the
official outputs, the same parameter tree, the same gradients as the unrolled stage; one traced block per stage."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import VHEAT_CASES, load_case, nchw_to_nhwc

import vheat_jax
from vheat_jax.variants import create_model

SMALL = dict(dims=8, depths=(2, 3, 2, 2), img_size=32, num_classes=10, drop_path_rate=0.2)
IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)


def unrolled_and_scanned(**fields):
    unrolled = create_model("vheat_tiny", **{**SMALL, **fields})
    return unrolled, unrolled.clone(scan_blocks=True)


def max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("case", VHEAT_CASES)
def test_the_scanned_stages_give_the_official_logits(vheat_fixtures, case):
    _, arrays = load_case(case)
    model, variables = vheat_jax.load_torch_checkpoint(vheat_fixtures / f"{case}.pth")
    logits = model.clone(scan_blocks=True).apply(variables, jnp.asarray(nchw_to_nhwc(arrays["input"])))
    np.testing.assert_allclose(np.asarray(logits), arrays["logits"], rtol=0, atol=5e-5)


@pytest.mark.parametrize("fields", [{}, {"post_norm": True, "layer_scale": 1e-5}], ids=["prenorm", "postnorm_ls"])
def test_same_parameters_and_gradients_as_the_unrolled_stages(fields):
    unrolled, scanned = unrolled_and_scanned(**fields)
    params = unrolled.init(jax.random.key(0), IMAGES)["params"]
    again = scanned.init(jax.random.key(0), IMAGES)["params"]
    assert jax.tree.structure(again) == jax.tree.structure(params) and max_diff(again, params) == 0

    def gradients(model):
        return jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, IMAGES) ** 2)))(params)

    grads = gradients(unrolled)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads))
    assert max_diff(gradients(scanned), grads) < 1e-5 * scale
    assert max_diff(gradients(scanned.clone(remat=True)), grads) < 1e-5 * scale


def test_bfloat16_with_layer_scale_keeps_the_unrolled_values():
    """A layer-scaled block turns a bfloat16 input into float32; the scan's carry follows it."""
    unrolled, scanned = unrolled_and_scanned(post_norm=True, layer_scale=1e-5, dtype=jnp.bfloat16)
    params = unrolled.init(jax.random.key(0), IMAGES)["params"]
    expected = jax.jit(unrolled.apply)({"params": params}, IMAGES)
    np.testing.assert_allclose(jax.jit(scanned.apply)({"params": params}, IMAGES), expected, rtol=0, atol=0.05)


def test_drop_path_draws_per_block_and_per_key():
    _, scanned = unrolled_and_scanned()
    params = scanned.init(jax.random.key(0), IMAGES)["params"]
    evaluation = scanned.apply({"params": params}, IMAGES)

    def train(model, seed):
        apply = jax.jit(lambda key: model.apply({"params": params}, IMAGES, train=True, rngs={"dropout": key}))
        return apply(jax.random.key(seed))

    assert max_diff(train(scanned, 1), train(scanned, 1)) == 0
    assert max_diff(train(scanned, 1), train(scanned, 2)) > 1e-3 and max_diff(train(scanned, 1), evaluation) > 1e-3
    assert max_diff(train(scanned.clone(drop_path_rate=0.0), 1), evaluation) < 1e-5


def test_each_stage_traces_one_block():
    unrolled, scanned = unrolled_and_scanned()
    params = unrolled.init(jax.random.key(0), IMAGES)["params"]

    def jaxpr(model):
        return jax.make_jaxpr(lambda p: model.apply({"params": p}, IMAGES))(params).jaxpr

    scans = [eqn for eqn in jaxpr(scanned).eqns if eqn.primitive.name == "scan"]
    assert [eqn.params["length"] for eqn in scans] == list(SMALL["depths"])
    assert not [eqn for eqn in jaxpr(unrolled).eqns if eqn.primitive.name == "scan"]
