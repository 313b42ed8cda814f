"""The training state: what a checkpoint holds besides the data position."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Any
    opt_state: Any
    ema_params: Any  # exponential moving average of params, float32


def ema_update(ema_params, params, decay: float):
    """``ema = decay * ema + (1 - decay) * params`` (timm ``ModelEmaV2``)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def new_train_state(params, tx) -> TrainState:
    """Step 0: the optimizer's initial state and EMA starting at ``params``."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
    )
