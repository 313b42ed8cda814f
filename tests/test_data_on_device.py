"""The recipe's device half (``vheat_jax.cls.on_device``): normalisation, random erasing, the mixing exchange."""

import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_host_devices
from PIL import Image

from vheat_jax.cls import on_device
from vheat_jax.cls import transforms as T


def test_normalize_matches_the_host_normalisation():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 9, 7, 3), np.uint8)
    expected = np.stack([T.to_normalized_array(Image.fromarray(p)) for p in pixels])
    np.testing.assert_allclose(np.asarray(on_device.normalize(jnp.asarray(pixels))), expected, atol=1e-6)


def _erase(images, boxes, seeds, mode):
    return np.asarray(on_device.random_erase(jnp.asarray(images), jnp.asarray(boxes, jnp.int32),
                                             jnp.asarray(seeds, jnp.uint32), mode))


def test_pixel_erasing_is_standard_normal_inside_the_box_only():
    rng = np.random.default_rng(1)
    boxes = np.stack([T.random_erasing_box(32, 32, rng, probability=1.0) for _ in range(64)])
    images = np.full((64, 32, 32, 3), 7.0, np.float32)
    out = _erase(images, boxes, np.arange(64), "pixel")
    inside = np.asarray(on_device.box_mask(jnp.asarray(np.stack(
        [boxes[:, 0], boxes[:, 0] + boxes[:, 2], boxes[:, 1], boxes[:, 1] + boxes[:, 3]], 1)), 32, 32))[..., 0]
    assert (out[~inside] == 7.0).all()
    noise = out[inside].ravel()
    assert noise.size > 20_000
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1.0) < 0.02
    assert abs(np.mean(np.abs(noise) < 1.0) - 0.6827) < 0.01  # the normal's mass within one sigma
    # The noise is a function of the row's seed only.
    np.testing.assert_array_equal(_erase(images[:2], boxes[:2], [0, 1], "pixel"), out[:2])
    assert not np.array_equal(_erase(images[:1], boxes[:1], [5], "pixel"), out[:1])


def test_rand_and_const_modes_and_no_box():
    boxes = np.array([[2, 3, 4, 5], [0, 0, 0, 0]])
    images = np.ones((2, 8, 8, 3), np.float32)
    rand = _erase(images, boxes, [3, 4], "rand")
    region = rand[0, 2:6, 3:8].reshape(-1, 3)
    assert (region == region[0]).all() and not (region[0] == 1.0).any()  # one colour per channel
    assert (rand[1] == 1.0).all()  # height 0: nothing erased
    const = _erase(images, boxes, [3, 4], "const")
    assert (const[0, 2:6, 3:8] == 0).all() and const.sum() == 2 * 8 * 8 * 3 - 4 * 5 * 3
    with pytest.raises(ValueError, match="remode"):
        _erase(images, boxes, [0, 0], "blur")


def test_train_images_needs_uint8():
    with pytest.raises(TypeError, match="uint8"):
        on_device.train_images({"image": jnp.zeros((2, 4, 4, 3))})


SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from vheat_jax.cls import on_device
    assert jax.device_count() == 4
    rng = np.random.default_rng(0)
    batch = {name: rng.integers(0, 256, shape).astype(dtype) if name != "mix_weight" else
             rng.uniform(size=shape).astype(dtype)
             for name, (shape, dtype) in on_device.train_batch_spec(16, 24, 5, erase=True, mix=True).items()}
    batch["erase_box"] = np.tile(np.array([3, 4, 10, 9], np.int32), (16, 1))
    batch["mix_box"] = np.tile(np.array([5, 20, 2, 11], np.int32), (16, 1))
    rows = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
    sharded = jax.jit(on_device.train_images, static_argnums=1, in_shardings=(rows,), out_shardings=rows)
    hlo = sharded.lower(batch, "pixel").compile().as_text()
    collectives = [op for op in ("all-gather", "all-to-all", "collective-permute", "all-reduce") if op in hlo]
    assert not collectives, collectives  # partners are adjacent rows: each device mixes its own shard
    np.testing.assert_array_equal(np.asarray(sharded(batch, "pixel")),
                                  np.asarray(jax.jit(on_device.train_images, static_argnums=1)(batch, "pixel")))
    print("OK")
""")


def test_sharded_batches_mix_without_moving_rows_between_devices():
    run_on_host_devices(SHARDED, 4)
