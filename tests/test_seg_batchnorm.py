"""BatchNorm in training uses the statistics of the whole (global) batch, also when it is sharded.

Run in a subprocess with 8 forced host devices: a ConvModule stack (conv -> BN -> ReLU)
trained one step under ``jit`` with the batch split over an 8-device mesh must give the
same outputs, running statistics and gradients as on one device; per-shard statistics
would differ by far more. The running statistics also follow torch's BatchNorm2d
(momentum 0.1, unbiased variance), checked against numpy.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from flax import linen as nn
    from vheat_jax.seg.layers import ConvModule

    assert jax.device_count() == 8, jax.devices()

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            x = ConvModule(8, 3, name="a")(x, train)
            return ConvModule(4, 1, name="b")(x, train)

    net = Net()
    x = jax.random.normal(jax.random.key(0), (16, 6, 5, 3)) * 2 + jnp.arange(16.0)[:, None, None, None] / 4
    variables = net.init(jax.random.key(1), x[:1], False)

    def step(params, stats, x):
        def loss(p):
            y, updates = net.apply({"params": p, "batch_stats": stats}, x, True, mutable=["batch_stats"])
            return jnp.sum(y * jnp.arange(y.size).reshape(y.shape) / y.size), (y, updates["batch_stats"])
        (_, (y, new_stats)), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return y, new_stats, grads

    single = jax.jit(step)(variables["params"], variables["batch_stats"], x)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded_x = jax.device_put(x, NamedSharding(mesh, P("data")))
    assert len(sharded_x.addressable_shards) == 8 and sharded_x.addressable_shards[0].data.shape[0] == 2
    sharded = jax.jit(step, out_shardings=NamedSharding(mesh, P()))(variables["params"], variables["batch_stats"], sharded_x)
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)  # float32 reduction order

    # Per-shard statistics (what unsynchronised BN would use) differ clearly.
    per_shard = [jax.jit(step)(variables["params"], variables["batch_stats"], x[i:i + 2])[0] for i in range(0, 16, 2)]
    assert np.abs(np.concatenate(per_shard) - np.asarray(single[0])).max() > 1e-2

    # torch semantics of the running statistics, for the first layer.
    kernel = variables["params"]["a"]["conv"]["kernel"]
    conv = np.asarray(jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"), np.float64)
    n = conv.size // conv.shape[-1]
    mean, var = conv.mean((0, 1, 2)), conv.var((0, 1, 2))
    stats = sharded[1]["a"]["bn"]
    np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-4)
    print("OK")
""")


def test_sharded_batchnorm_equals_global_batchnorm():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]
