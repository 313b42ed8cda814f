"""The fused Pallas HCO forms (``fused_kron``, ``fused_separable``) against the einsum form, in Pallas' interpreter.

The interpreter runs the kernels' own programs (their tiles, padding, chunk loop, in-register transposes),
so these check the kernels' arithmetic; that the same programs lower to Triton kernels is checked by
lowering them for CUDA (no GPU needed: Pallas emits the Triton IR at lowering; compiling it to PTX is
the GPU's part).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_host_devices

from vheat_jax.hco_fused import MAX_KRON_TOKENS, fused_diffuse
from vheat_jax.heat import heat_diffuse


def _inputs(shape, seed=0):
    x = jax.random.normal(jax.random.key(seed), shape)
    decay = jax.random.uniform(jax.random.key(seed + 1), shape[1:])
    return x, decay


def _loss(form):
    # sin() so that the output gradient is not the output itself.
    return lambda x, decay: jnp.sum(jnp.sin(heat_diffuse(x, decay, form)))


# kron: 14x14 pads 196 tokens to 256 (four frequency chunks); 8x8 and 1x5 are one chunk; 96 channels are three
# 32-channel tiles. separable: 10x12 pads to 16x16, 20x20 to 32x32 (16-channel tiles), 17x5 to 32x16.
@pytest.mark.parametrize("form, shape", [
    ("fused_kron", (2, 14, 14, 32)), ("fused_kron", (3, 8, 8, 96)), ("fused_kron", (2, 10, 12, 16)),
    ("fused_kron", (2, 1, 5, 3)), ("fused_separable", (2, 10, 12, 16)), ("fused_separable", (2, 20, 20, 48)),
    ("fused_separable", (1, 17, 5, 6)), ("fused_separable", (2, 7, 7, 8)),
])
def test_forward_and_gradients_equal_the_einsum_form(form, shape):
    x, decay = _inputs(shape)
    np.testing.assert_allclose(heat_diffuse(x, decay, form), heat_diffuse(x, decay, "einsum"), atol=2e-6)
    fused = jax.grad(_loss(form), argnums=(0, 1))(x, decay)
    reference = jax.grad(_loss("einsum"), argnums=(0, 1))(x, decay)
    for name, got, want in zip(("x", "decay"), fused, reference):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("form", ["fused_kron", "fused_separable"])
def test_bfloat16_stays_near_the_float32_operator(form):
    x, decay = _inputs((2, 7, 7, 64), seed=3)
    want = heat_diffuse(x, decay, "einsum")
    got = heat_diffuse(x.astype(jnp.bfloat16), decay, form)
    assert got.dtype == jnp.bfloat16
    relative = float(jnp.linalg.norm(got.astype(jnp.float32) - want) / jnp.linalg.norm(want))
    assert relative < 1e-2, relative


def test_a_map_too_large_for_the_kronecker_kernel_is_refused_with_the_fix():
    x, decay = _inputs((1, 17, 16, 4))
    assert 17 * 16 > MAX_KRON_TOKENS
    with pytest.raises(ValueError, match="at most 256 tokens.*hco_form"):
        heat_diffuse(x, decay, "fused_kron")


# vHeat-T's stage shapes at 224 px, batch 128, bfloat16: the shapes the GPU will compile.
@pytest.mark.parametrize("layout, shape", [("kron", (128, 14, 14, 384)), ("kron", (128, 7, 7, 768)),
                                           ("separable", (128, 56, 56, 96)), ("separable", (128, 28, 28, 192))])
def test_lowers_to_triton_kernels_for_a_gpu(layout, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    decay = jax.ShapeDtypeStruct(shape[1:], jnp.bfloat16)

    def forward(x, decay):
        return fused_diffuse(x, decay, layout, False)

    def gradients(x, decay):  # sin: the output gradient needs the forward's output
        return jax.grad(lambda x, d: jnp.sum(jnp.sin(forward(x, d).astype(jnp.float32))), (0, 1))(x, decay)

    def triton_kernels(fn):
        return jax.jit(fn).trace(x, decay).lower(lowering_platforms=("cuda",)).as_text().count("xla.gpu.triton")

    assert triton_kernels(forward) == 1
    # The gradient runs the forward kernel and the backward kernel (input gradient + decay spectra).
    assert triton_kernels(gradients) == 2


def test_a_model_with_fused_stages_gives_the_same_logits():
    from vheat_jax import create_model

    images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    common = dict(img_size=64, dims=16, depths=(1, 1, 1, 1), num_classes=5, drop_path_rate=0.0)
    reference = create_model("vheat_tiny", **common)
    params = reference.init(jax.random.key(1), images)
    fused = create_model("vheat_tiny", hco_form="fused_separable,einsum,fused_kron,fused_kron", **common)
    np.testing.assert_allclose(fused.apply(params, images), reference.apply(params, images), atol=2e-5)


def test_a_per_stage_form_list_is_checked_with_the_config():
    from vheat_jax.cls.config import default_config
    from vheat_jax.errors import ConfigError
    from vheat_jax.train.config import check_config

    config = default_config()
    config.model.hco_form = "fused_separable,fused_separable,fused_kron,fused_kron"
    check_config(config)
    for wrong in ("einsum,kron", "einsum,einsum,fused,kron"):  # three stages short; an unknown name
        config.model.hco_form = wrong
        with pytest.raises(ConfigError, match=r"config.model.hco_form = .*one per stage"):
            check_config(config)


def test_the_offline_compile_bench_takes_parseable_triton_ir_of_both_kernels():
    """bench/triton_compile.py's step 1 (step 2 needs pip's Triton: run by hand, docs/triton_compile.json)."""
    import sys
    from pathlib import Path

    from jax._src.lib.mlir import ir
    from jax._src.pallas.triton.lowering import _new_ir_context  # the context Pallas builds Triton IR in

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import triton_compile

    modules = triton_compile.triton_modules("separable", 14, 384)
    assert set(modules) == {"_separable_forward_kernel", "_separable_backward_kernel"}
    with _new_ir_context():
        for text in modules.values():
            assert "tt.dot" in str(ir.Module.parse(text))


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from vheat_jax.heat import heat_diffuse

mesh = Mesh(np.array(jax.devices()), ("data",))
x = jax.random.normal(jax.random.key(0), (8, 10, 12, 16))
decay = jax.random.uniform(jax.random.key(1), (10, 12, 16))
sharded_x = jax.device_put(x, NamedSharding(mesh, P("data")))
whole_decay = jax.device_put(decay, NamedSharding(mesh, P()))
for form in ("fused_separable", "fused_kron"):
    def grads(x, decay, form=form):
        return jax.grad(lambda x, d: jnp.sum(jnp.sin(heat_diffuse(x, d, form))), (0, 1))(x, decay)
    step = jax.jit(grads)
    program = step.lower(sharded_x, whole_decay).compile().as_text()
    assert "all-gather" not in program, form  # each device runs the kernels on its own images
    got, want = step(sharded_x, whole_decay), jax.jit(grads)(x, decay)
    assert got[0].sharding.spec[0] == "data", got[0].sharding
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5)
print("OK")
"""


def test_a_batch_sharded_over_devices_is_not_gathered_around_the_kernels():
    """Pallas kernels are custom calls: unsplit, XLA's partitioner would gather the batch onto every device."""
    run_on_host_devices(SHARDED, 4)
