"""Ahead-of-time compilation of the sharded train step for a TPU slice, on any machine.

With libtpu installed (``pip install -e ".[tpu-aot]"``), ``jax.experimental.topologies``
describes a TPU slice without owning one; the train step is lowered against
abstract state and batch carrying that slice's shardings and compiled by the
TPU compiler, which reports the per-chip memory the step needs and its FLOPs.
This tells whether a config fits before renting the pod (MaxText's
``train_compile.py`` does the same).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.experimental import topologies

from vheat_jax.benchmark import compiled_memory, live_bytes
from vheat_jax.cls import optim
from vheat_jax.cls.training import StateFactory, build_model, jit_train_step, train_batch_spec
from vheat_jax.train import sharding


def compile_train_step(config, devices, *, steps: int = 1000):
    """The loop's train step for ``config`` (global batch split over ``devices``), compiled for them."""
    mesh = sharding.make_mesh(devices)
    model = build_model(config)
    tx, schedule = optim.create_optimizer(
        config.optimizer, global_batch_size=config.global_batch_size, warmup_steps=steps // 10,
        total_steps=steps, grad_accum_steps=config.grad_accum_steps)
    factory = StateFactory(model, tx, mesh, config)
    step = jit_train_step(config, model, tx, schedule, mesh, factory.shardings)
    micro_batch = config.global_batch_size // config.grad_accum_steps
    batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh))
             for name, (shape, dtype) in train_batch_spec(config, micro_batch).items()}
    return step.lower(factory.abstract_with_shardings(), batch).compile()


def compile_for_topology(config, topology: str, *, steps: int = 1000) -> dict[str, Any]:
    """Compiles ``config``'s train step for ``topology`` (e.g. ``"v5e:16x16"``); returns memory and cost."""
    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    compiled = compile_train_step(config, devices, steps=steps)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled_memory(compiled) or {}
    per_chip = live_bytes(memory)
    return {
        "topology": topology, "chips": len(devices), "device_kind": devices[0].device_kind,
        "model": config.model.name, "global_batch_size": config.global_batch_size,
        "image_size": config.image_size, "compute_dtype": config.compute_dtype, "fsdp": bool(config.fsdp),
        "remat": bool(config.remat), "per_chip_memory": memory, "per_chip_total_gib": per_chip / 2**30,
        "flops_per_chip_per_step": float(cost.get("flops", float("nan"))) if cost else None,
    }
