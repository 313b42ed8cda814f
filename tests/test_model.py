"""Model structure: official parameter counts and FLOPs, drop path, remat, dtypes, sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vheat_jax
from vheat_jax.flops import model_macs


def param_count(model, size=224):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"])), shapes["params"]


# Parameter counts of the official PyTorch models (training form, and after infer_init()).
OFFICIAL_PARAMS = {
    "vheat_tiny": (30_853_480, 29_558_056),
    "vheat_small": (52_220_392, 50_054_056),
    "vheat_base": (92_132_328, 87_498_984),
}
# The paper's table, inference form at 224, in GMACs (one decimal).
PAPER_GMACS = {"vheat_tiny": 4.6, "vheat_small": 8.5, "vheat_base": 14.9}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_official_parameter_counts(name):
    train_count, _ = param_count(vheat_jax.create_model(name))
    infer_count, _ = param_count(vheat_jax.create_model(name, infer_mode=True))
    assert (train_count, infer_count) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PAPER_GMACS))
def test_macs_match_paper_table(name):
    model = vheat_jax.create_model(name, infer_mode=True)
    _, shapes = param_count(model)
    assert round(model_macs(model, shapes) / 1e9, 1) == PAPER_GMACS[name]


def tiny_model(**overrides):
    fields = dict(dims=8, depths=(1, 1, 2, 1), img_size=64, num_classes=5, drop_path_rate=0.5)
    fields.update(overrides)
    return vheat_jax.create_model("vheat_tiny", **fields)


def test_drop_path_only_in_training():
    model = tiny_model()
    x = jax.random.normal(jax.random.key(1), (4, 64, 64, 3))
    variables = model.init(jax.random.key(0), x)
    eval_a = model.apply(variables, x)
    eval_b = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    train_b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(train_a, train_b)
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, x, train=True)


def test_remat_gives_same_values_and_gradients():
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    plain, remat = tiny_model(), tiny_model(remat=True)
    params = plain.init(jax.random.key(0), x)["params"]

    def loss(model, p):
        return jnp.sum(model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(5)}) ** 2)

    value_a, grads_a = jax.value_and_grad(lambda p: loss(plain, p))(params)
    value_b, grads_b = jax.value_and_grad(lambda p: loss(remat, p))(params)
    np.testing.assert_allclose(value_a, value_b, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), grads_a, grads_b)


def test_bfloat16_compute_keeps_float32_params():
    model = tiny_model(dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    variables = model.init(jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    logits = model.apply(variables, x)
    reference = tiny_model().apply(variables, x)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, reference, atol=0.15 * float(jnp.abs(reference).max()))


def test_inference_form_rejects_other_sizes():
    model = tiny_model()
    x = jnp.zeros((1, 64, 64, 3))
    arch = vheat_jax.Arch(dims=8, depths=(1, 1, 2, 1), post_norm=False, layer_scale=None, img_size=64,
                          num_classes=5)
    params = model.init(jax.random.key(0), x)["params"]
    infer_arch, infer_params = vheat_jax.to_inference_form(params, arch)
    with pytest.raises(ValueError, match="to_inference_form"):
        infer_arch.build().apply({"params": infer_params}, jnp.zeros((1, 96, 96, 3)))
    with pytest.raises(ValueError, match="divisible by 32"):
        vheat_jax.to_inference_form(params, arch, img_size=100)


def test_inference_form_at_another_size_equals_training_form():
    """Both forms at 128 px for a 64 px model: on-the-fly bicubic vs precomputed k_exp."""
    model = tiny_model()
    arch = vheat_jax.Arch(dims=8, depths=(1, 1, 2, 1), post_norm=False, layer_scale=None, img_size=64,
                          num_classes=5)
    params = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    x = jax.random.normal(jax.random.key(1), (2, 128, 128, 3))
    infer_arch, infer_params = vheat_jax.to_inference_form(params, arch, img_size=128)
    np.testing.assert_allclose(infer_arch.build().apply({"params": infer_params}, x),
                               model.apply({"params": params}, x), atol=1e-5)


def test_rejects_non_nhwc_input():
    model = tiny_model()
    with pytest.raises(ValueError, match="NHWC"):
        model.init(jax.random.key(0), jnp.zeros((1, 3, 64, 64)))


@pytest.mark.parametrize("hw", [(7, 7), (10, 12), (1, 5), (14, 14), (28, 28)])
def test_hco_forms_compute_the_same_map(hw):
    from vheat_jax.heat import forms_for, heat_diffuse

    x = jax.random.normal(jax.random.key(0), (2, *hw, 6))
    decay = jax.random.uniform(jax.random.key(1), (*hw, 6))
    reference = heat_diffuse(x, decay, "einsum")
    # Without decay the DCT round trip is the identity (orthonormal basis).
    np.testing.assert_allclose(heat_diffuse(x, jnp.ones_like(decay), "einsum"), x, atol=1e-5)
    for form in [*forms_for(*hw), "auto"]:
        np.testing.assert_allclose(heat_diffuse(x, decay, form), reference, atol=1e-5, err_msg=form)


def test_depthwise_conv_equals_grouped_conv():
    from flax import linen as nn

    from vheat_jax.heat import DepthwiseConv3x3

    x = jax.random.normal(jax.random.key(0), (2, 9, 7, 5))
    variables = DepthwiseConv3x3().init(jax.random.key(1), x)
    variables = jax.tree.map(lambda v: v + 0.1, variables)  # non-zero bias
    grouped = nn.Conv(5, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=5)
    np.testing.assert_allclose(DepthwiseConv3x3().apply(variables, x), grouped.apply(variables, x), atol=1e-5)
