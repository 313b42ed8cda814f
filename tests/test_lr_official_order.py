"""The per-update learning rate against the official trainer's call order.

The official ``train_one_epoch`` (vHeat's ``classification/main.py``, from Swin's) steps the
optimizer, then calls ``lr_scheduler.step_update(epoch * num_steps + idx)``; timm's
``CosineLRScheduler`` sets ``warmup_lr`` in its constructor. Here that loop drives a real
``torch.optim.AdamW`` with zero gradients, so each update moves a parameter by exactly
``-lr * weight_decay * p``, and our optax update must move it the same.

timm cannot be installed beside the CPU torch (it requires torchvision), so :class:`TimmCosineLR`
is timm 1.0.31's ``CosineLRScheduler`` (``scheduler.py`` / ``cosine_lr.py``) for the arguments
Swin's ``build_scheduler`` passes (one cycle, no noise, ``k_decay=1``, ``warmup_prefix=True``,
``t_in_epochs=False``), written out line for line. The issue's figures, measured against the
official trainer, pin it independently.
"""

import math

import numpy as np
import pytest
import torch
from test_train_recipe import load_config

from vheat_jax.cls import optim


class TimmCosineLR:
    """timm ``CosineLRScheduler(t_initial, lr_min, warmup_t, warmup_lr_init, warmup_prefix=True,
    t_in_epochs=False)``."""

    def __init__(self, optimizer, t_initial, lr_min, warmup_t, warmup_lr_init):
        self.optimizer = optimizer
        self.base_values = [group["lr"] for group in optimizer.param_groups]
        self.t_initial, self.lr_min, self.warmup_t, self.warmup_lr_init = t_initial, lr_min, warmup_t, warmup_lr_init
        self.warmup_steps = [(v - warmup_lr_init) / warmup_t for v in self.base_values]
        self.update_groups([warmup_lr_init] * len(self.base_values))

    def _get_lr(self, t):
        if t < self.warmup_t:
            return [self.warmup_lr_init + t * s for s in self.warmup_steps]
        t = t - self.warmup_t
        i, t_curr = t // self.t_initial, t - self.t_initial * (t // self.t_initial)
        if i < 1:
            return [self.lr_min + 0.5 * (v - self.lr_min) * (1 + math.cos(math.pi * t_curr / self.t_initial))
                    for v in self.base_values]
        return [self.lr_min for _ in self.base_values]

    def step_update(self, num_updates):
        self.update_groups(self._get_lr(num_updates))

    def update_groups(self, values):
        for group, value in zip(self.optimizer.param_groups, values):
            group["lr"] = value


def official_lrs(opt_config, batch, warmup_steps, total_steps, steps_per_epoch):
    """Each update's lr, read off the parameter AdamW moves, in the official loop's call order."""
    def scale(lr):
        return lr * batch / opt_config.lr_reference_batch

    weight = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    optimizer = torch.optim.AdamW([weight], lr=scale(opt_config.base_lr), weight_decay=opt_config.weight_decay)
    scheduler = TimmCosineLR(optimizer, t_initial=total_steps - warmup_steps, lr_min=scale(opt_config.min_lr),
                             warmup_t=warmup_steps, warmup_lr_init=scale(opt_config.warmup_lr))
    lrs = []
    for epoch in range(total_steps // steps_per_epoch):
        for idx in range(steps_per_epoch):
            weight.grad = torch.zeros_like(weight)
            before = weight.item()
            optimizer.step()
            lrs.append((before - weight.item()) / (opt_config.weight_decay * before))
            scheduler.step_update(epoch * steps_per_epoch + idx)
    return np.array(lrs)


def our_lrs(opt_config, batch, warmup_steps, total_steps):
    """Each update's lr, read off the kernel our optax chain moves with zero gradients."""
    tx, schedule = optim.create_optimizer(opt_config, global_batch_size=batch, warmup_steps=warmup_steps,
                                          total_steps=total_steps)
    params = {"kernel": np.ones((1, 1), np.float32)}
    state = tx.init(params)
    lrs = []
    for count in range(total_steps):
        updates, state = tx.update({"kernel": np.zeros((1, 1), np.float32)}, state, params)
        lrs.append(-float(updates["kernel"][0, 0]) / opt_config.weight_decay)
        assert lrs[-1] == pytest.approx(float(schedule(count)), rel=1e-6), count
    return np.array(lrs)


@pytest.mark.parametrize("batch, warmup, total, per_epoch", [(8, 5, 40, 8), (2048, 20, 300, 25)])
def test_every_update_uses_the_official_learning_rate(batch, warmup, total, per_epoch):
    opt_config = load_config("vheat_t").optimizer
    official = official_lrs(opt_config, batch, warmup, total, per_epoch)
    np.testing.assert_allclose(our_lrs(opt_config, batch, warmup, total), official, rtol=2e-5)


def test_the_issues_figures_from_the_official_trainer():
    """40 updates, 5 of warm-up, batch 8: update 1 at 7.81e-09 as update 0, the peak at update 6."""
    lrs = our_lrs(load_config("vheat_t").optimizer, 8, 5, 40)
    assert lrs[0] == lrs[1] == pytest.approx(7.8125e-09, rel=1e-5)
    assert int(np.argmax(lrs)) == 6
