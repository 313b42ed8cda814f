"""The official UperNet-vHeat optimizer: AdamW, linear warm-up then poly decay, mmengine's decay rule.

From ``upernet_vheat_160k_ade20k_512x512_tiny.py`` (MzeroMiko/vHeat, segmentation/configs/vheat),
inherited from mmseg's ``swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py``:

* ``AdamW(lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)``, no gradient clipping;
* ``paramwise_cfg.custom_keys``: ``absolute_pos_embed``, ``relative_position_bias_table``
  and ``norm`` get ``decay_mult=0``. mmengine matches these as substrings of the full
  parameter name, so for vHeat the rule is exactly "no decay where the mmseg name contains
  ``norm``": the blocks' ``norm1``/``norm2``, the heat operator's ``out_norm``, the stem norms
  and the ``outnorm{i}``. Everything else is decayed, including the frequency embeddings,
  ``to_k``, layer-scale gammas, all biases, the downsampling LayerNorms (named
  ``layers.{i}.{depth}.1``, without "norm") and the heads' BatchNorms (named ``bn``).
  :func:`weight_decay_mask` applies the rule to the names of :mod:`vheat_jax.seg.convert`,
  so it is the official one by construction;
* ``LinearLR(start_factor=1e-6, begin=0, end=1500)`` then ``PolyLR(power=1.0, eta_min=0,
  begin=1500, end=160000)``, stepped per iteration (:func:`warmup_poly_schedule`).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from flax import traverse_util

from vheat_jax.seg.convert import torch_key
from vheat_jax.seg.model import UperNetConfig


def warmup_poly_schedule(base_lr: float, *, warmup_steps: int, total_steps: int, warmup_start_factor: float = 1e-6,
                         power: float = 1.0, end_lr: float = 0.0) -> optax.Schedule:
    """mmengine's ``LinearLR`` + ``PolyLR`` (closed forms of their chained updates), by update index ``i``.

    ``LinearLR`` (``total_iters = end - begin - 1``): ``base * (s + (1 - s) * i / (W - 1))`` for
    ``i < W``, reaching ``base`` at ``i = W - 1``. ``PolyLR`` from ``W`` to ``T``:
    ``end + (base - end) * (1 - (i - W) / (T - W - 1)) ** power``, which is ``end`` at the last
    update ``i = T - 1``.
    """
    decay_iters = max(total_steps - warmup_steps - 1, 1)

    def schedule(count):
        i = jnp.asarray(count, jnp.float32)
        warm = base_lr * (warmup_start_factor + (1 - warmup_start_factor) * i / max(warmup_steps - 1, 1))
        progress = jnp.clip((i - warmup_steps) / decay_iters, 0.0, 1.0)
        poly = end_lr + (base_lr - end_lr) * (1.0 - progress) ** power
        return jnp.where(i < warmup_steps, warm, poly)

    return schedule


def weight_decay_mask(params, config: UperNetConfig, no_decay_keys: tuple[str, ...] = ("norm",)):
    """True where weight decay applies: the mmseg name contains none of ``no_decay_keys``."""
    flat = traverse_util.flatten_dict(params)
    mask = {path: not any(key in torch_key(("params", *path), config.backbone.depths) for key in no_decay_keys)
            for path in flat}
    return traverse_util.unflatten_dict(mask)


def create_optimizer(opt_config, model_config: UperNetConfig, total_steps: int):
    """``(tx, schedule)``: AdamW with the schedule and the decay mask (and clipping if configured)."""
    schedule = warmup_poly_schedule(opt_config.lr, warmup_steps=opt_config.warmup_steps, total_steps=total_steps,
                                    warmup_start_factor=opt_config.warmup_start_factor, power=opt_config.power)
    adamw = optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
                        weight_decay=opt_config.weight_decay,
                        mask=lambda params: weight_decay_mask(params, model_config, tuple(opt_config.no_decay_keys)))
    if opt_config.grad_clip_norm:
        return optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), adamw), schedule
    return adamw, schedule
