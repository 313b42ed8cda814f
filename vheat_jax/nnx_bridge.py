"""vHeat for Flax NNX users: the Linen model, the one source of truth, behind ``flax.nnx.bridge.ToNNX``.

The wrapped module is an ``nnx.Module``: ``nnx.jit``, ``nnx.grad``, ``nnx.Optimizer`` and
``nnx.state`` (for Orbax) work on it, and its parameters are the Linen tree under the same
names, so every converter and checkpoint of this package serves both APIs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax.numpy as jnp

from vheat_jax.arch import Arch


def to_nnx(arch: Arch, params: Mapping | None = None, *, seed: int = 0, **overrides):
    """An ``nnx.Module`` for ``arch`` (``overrides``: run-time fields such as ``dtype`` or ``drop_path_rate``),
    holding ``params`` when given (else freshly initialised from ``seed``). Call it as the Linen module:
    ``model(images)``, ``model(images, train=True)`` (drop path draws from its ``dropout`` stream)."""
    from flax import nnx  # noqa: PLC0415 - Linen users never import NNX

    model = nnx.bridge.ToNNX(arch.build(**overrides), rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    nnx.bridge.lazy_init(model, jnp.zeros((1, arch.img_size, arch.img_size, 3), jnp.float32))
    if params is not None:
        state = nnx.state(model, nnx.Param)
        nnx.replace_by_pure_dict(state, dict(params))
        nnx.update(model, state)
    return model


def load_nnx(path: str | os.PathLike, **load_kwargs):
    """``(arch, nnx module)`` from any file :func:`vheat_jax.load_any` reads (``.pth``, ``.safetensors``,
    Orbax, ``.msgpack``)."""
    from vheat_jax.convert import load_any  # noqa: PLC0415

    arch, params = load_any(path, **load_kwargs)
    return arch, to_nnx(arch, params)
