"""The fused Pallas HCO (``hco_form="fused_kron"``) against the einsum form, in Pallas' interpreter.

The interpreter runs the kernel's own program (its tiles, chunk loop and padding), so these check the
kernel's arithmetic; that the same program lowers to a Triton kernel is checked by lowering it for CUDA
(no GPU needed: Pallas emits the Triton IR at lowering; compiling it to PTX is the GPU's part).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vheat_jax.hco_fused import MAX_TOKENS, fused_kron_diffuse
from vheat_jax.heat import heat_diffuse


def _inputs(shape, seed=0):
    x = jax.random.normal(jax.random.key(seed), shape)
    decay = jax.random.uniform(jax.random.key(seed + 1), shape[1:])
    return x, decay


def _loss(form):
    # sin() so that the output gradient is not the output itself.
    return lambda x, decay: jnp.sum(jnp.sin(heat_diffuse(x, decay, form)))


# 14x14 pads 196 tokens to 256 (four frequency chunks); 8x8 and 1x5 are one chunk; 10x12 is not square;
# 96 channels are three 32-channel tiles.
@pytest.mark.parametrize("shape", [(2, 14, 14, 32), (3, 8, 8, 96), (2, 10, 12, 16), (2, 1, 5, 3), (1, 16, 16, 8)])
def test_forward_and_gradients_equal_the_einsum_form(shape):
    x, decay = _inputs(shape)
    np.testing.assert_allclose(heat_diffuse(x, decay, "fused_kron"), heat_diffuse(x, decay, "einsum"), atol=2e-6)
    fused = jax.grad(_loss("fused_kron"), argnums=(0, 1))(x, decay)
    reference = jax.grad(_loss("einsum"), argnums=(0, 1))(x, decay)
    for name, got, want in zip(("x", "decay"), fused, reference):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5, err_msg=name)


def test_bfloat16_stays_near_the_float32_operator():
    x, decay = _inputs((2, 7, 7, 64), seed=3)
    want = heat_diffuse(x, decay, "einsum")
    got = heat_diffuse(x.astype(jnp.bfloat16), decay, "fused_kron")
    assert got.dtype == jnp.bfloat16
    relative = float(jnp.linalg.norm(got.astype(jnp.float32) - want) / jnp.linalg.norm(want))
    assert relative < 1e-2, relative


def test_a_larger_map_is_refused_with_the_fix():
    x, decay = _inputs((1, 17, 16, 4))
    assert 17 * 16 > MAX_TOKENS
    with pytest.raises(ValueError, match="at most 256 tokens.*hco_form"):
        heat_diffuse(x, decay, "fused_kron")


def test_lowers_to_triton_kernels_for_a_gpu():
    x = jax.ShapeDtypeStruct((128, 14, 14, 384), jnp.bfloat16)
    decay = jax.ShapeDtypeStruct((14, 14, 384), jnp.bfloat16)

    def train_like(x, decay):
        return jax.grad(lambda x, d: jnp.sum(fused_kron_diffuse(x, d, False).astype(jnp.float32)), (0, 1))(x, decay)

    forward = jax.jit(lambda x, d: fused_kron_diffuse(x, d, False)).trace(x, decay)
    assert forward.lower(lowering_platforms=("cuda",)).as_text().count("xla.gpu.triton") == 1
    # The gradient runs the forward kernel and the backward kernel (input gradient + decay spectra).
    assert jax.jit(train_like).trace(x, decay).lower(lowering_platforms=("cuda",)).as_text().count(
        "xla.gpu.triton") == 2


def test_a_model_with_fused_late_stages_gives_the_same_logits():
    from vheat_jax import create_model

    images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    common = dict(img_size=64, dims=16, depths=(1, 1, 1, 1), num_classes=5, drop_path_rate=0.0)
    reference = create_model("vheat_tiny", **common)
    params = reference.init(jax.random.key(1), images)
    fused = create_model("vheat_tiny", hco_form="einsum,einsum,fused_kron,fused_kron", **common)
    np.testing.assert_allclose(fused.apply(params, images), reference.apply(params, images), atol=2e-5)
