"""The hand-written gradients in vheat_jax.ops against autodiff of independent plain formulations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from vheat_jax import ops


def _check_grads(fn, reference, args, *, atol, rtol=1e-5):
    """Values and the VJP of a random cotangent agree with the reference function."""
    out, vjp = jax.vjp(fn, *args)
    ref_out, ref_vjp = jax.vjp(reference, *args)
    np.testing.assert_allclose(out, ref_out, atol=atol, rtol=rtol)
    cotangent = jax.random.normal(jax.random.key(7), out.shape, out.dtype)
    for got, want in zip(vjp(cotangent), ref_vjp(cotangent), strict=True):
        np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)


def test_gelu_value_and_gradient_match_flax_exact_gelu():
    x = jnp.linspace(-9.0, 9.0, 4001)
    _check_grads(ops.gelu, lambda v: nn.gelu(v, approximate=False), (x,), atol=2e-6)
    # Second derivative too (the rule is a JVP, so it composes).
    second = jax.vmap(jax.grad(jax.grad(ops.gelu)))(x)
    reference = jax.vmap(jax.grad(jax.grad(lambda v: nn.gelu(v, approximate=False))))(x)
    np.testing.assert_allclose(second, reference, atol=2e-6)


def test_depthwise_conv_value_and_gradients_match_grouped_convolution():
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2, 9, 7, 5))
    kernel = jax.random.normal(keys[1], (3, 3, 5))
    bias = jax.random.normal(keys[2], (5,))

    def grouped(x, kernel, bias):
        out = jax.lax.conv_general_dilated(
            x, kernel[:, :, None, :], (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
        return out + bias

    _check_grads(ops.depthwise_conv3x3, grouped, (x, kernel, bias), atol=1e-4)


@pytest.mark.parametrize("shape", [(4, 6, 96), (3, 5, 7, 10)])
def test_layer_norm_value_and_gradients_match_flax(shape):
    keys = jax.random.split(jax.random.key(1), 3)
    x = 3.0 + 2.0 * jax.random.normal(keys[0], shape)
    scale = 1.0 + 0.1 * jax.random.normal(keys[1], shape[-1:])
    bias = 0.1 * jax.random.normal(keys[2], shape[-1:])
    flax_norm = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False)

    def reference(x, scale, bias):
        return flax_norm.apply({"params": {"scale": scale, "bias": bias}}, x)

    _check_grads(lambda x, s, b: ops.layer_norm(x, s, b, 1e-5), reference, (x, scale, bias), atol=2e-5)


def test_layer_norm_module_keeps_flax_parameters_and_dtypes():
    x = jax.random.normal(jax.random.key(2), (2, 3, 8), jnp.bfloat16)
    ours = ops.LayerNorm(epsilon=1e-6, dtype=jnp.bfloat16)
    variables = ours.init(jax.random.key(0), x)
    flax_variables = nn.LayerNorm(epsilon=1e-6).init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, flax_variables)
    assert variables["params"]["scale"].dtype == jnp.float32
    assert ours.apply(variables, x).dtype == jnp.bfloat16
    # No dtype given: the promoted type of input and float32 params, as flax.
    assert ops.LayerNorm().apply(variables, x).dtype == jnp.float32
