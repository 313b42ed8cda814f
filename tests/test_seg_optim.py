"""The official optimizer recipe: mmengine's LinearLR + PolyLR and the "norm" no-decay rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vheat_jax.arch import Arch
from vheat_jax.seg.model import UperNetConfig
from vheat_jax.seg.optim import warmup_poly_schedule, weight_decay_mask


def mmengine_lrs(base, start_factor, warmup_end, poly_end, power, steps):
    """mmengine's chained LinearLR(begin=0, end=warmup_end) + PolyLR(begin=warmup_end, end=poly_end, eta_min=0),
    stepped once per iteration after the optimizer step: the lr each iteration uses."""
    lr, lrs = base, []
    linear_total, poly_total = warmup_end - 1, poly_end - warmup_end - 1
    for step in range(steps):
        if step < warmup_end:  # LinearLR._get_value with last_step = step
            lr = base * start_factor if step == 0 else lr * (
                1 + (1 - start_factor) / (linear_total * start_factor + (step - 1) * (1 - start_factor)))
        elif step < poly_end and step > warmup_end:  # PolyLR; last_step 0 keeps the value
            last = step - warmup_end
            lr = lr * (1 - 1 / (poly_total - last + 1)) ** power
        lrs.append(lr)
    return np.array(lrs)


@pytest.mark.parametrize("power", [1.0, 0.9])
def test_schedule_equals_mmengine(power):
    schedule = warmup_poly_schedule(6e-5, warmup_steps=15, total_steps=100, power=power)
    expected = mmengine_lrs(6e-5, 1e-6, 15, 100, power, 100)
    np.testing.assert_allclose([float(schedule(i)) for i in range(100)], expected, rtol=2e-5, atol=1e-12)


def test_official_schedule_landmarks():
    schedule = warmup_poly_schedule(6e-5, warmup_steps=1500, total_steps=160_000)
    assert float(schedule(0)) == pytest.approx(6e-11)
    assert float(schedule(1499)) == pytest.approx(6e-5) and float(schedule(1500)) == pytest.approx(6e-5)
    assert float(schedule(80_750)) == pytest.approx(3e-5, rel=1e-3)
    assert float(schedule(159_999)) == 0.0


def test_no_decay_exactly_where_the_mmseg_name_contains_norm():
    config = UperNetConfig(Arch(dims=8, depths=(1, 1, 1, 1), post_norm=False, layer_scale=None, img_size=32,
                                num_classes=None), num_classes=3, channels=8, aux_channels=4)
    params = jax.eval_shape(config.build().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    mask = traverse_util.flatten_dict(weight_decay_mask(params, config))
    no_decay = {"/".join(path) for path, decay in mask.items() if not decay}
    assert no_decay == {f"backbone/{name}/{leaf}" for leaf in ("scale", "bias") for name in (
        "patch_embed_norm1", "patch_embed_norm2", *(f"outnorm_{i}" for i in range(4)),
        *(f"layers_{i}/blocks_0/{norm}" for i in range(4) for norm in ("norm1", "norm2", "op/out_norm")))}
    # decayed, as mmengine's substring rule does for vHeat: embeddings, downsampling LayerNorms, head BNs, biases
    for path in ("backbone/freq_embed_0", "backbone/layers_0/downsample_norm/scale", "decode_head/bottleneck/bn/scale",
                 "decode_head/conv_seg/bias", "backbone/layers_1/blocks_0/op/to_k/kernel"):
        assert mask[tuple(path.split("/"))], path
