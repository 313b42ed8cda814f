"""Device mesh and shardings: data parallel, optionally with FSDP-style parameter sharding.

One mesh axis, ``data``, spans every device of every process. Batches are split
along it. Parameters, optimizer state and EMA are replicated by default; with
``fsdp`` every large tensor is split along one of its dimensions over the same
axis, and XLA gathers it for the forward/backward pass and reduce-scatters the
gradients (ZeRO-3). That trades communication for memory: use it when the state
of the large variants does not fit next to the activations.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
# Tensors smaller than this stay replicated under FSDP: gathering them costs more
# latency than their memory is worth.
FSDP_MIN_ELEMENTS = 2**12


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices of all processes, process-major).

    Process-major order makes process ``p``'s local batch the ``p``-th contiguous
    slice of the global batch.
    """
    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    # Auto axes: shardings propagate through the (unannotated) model as in classic jit.
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def fsdp_spec(shape: tuple[int, ...], num_shards: int) -> PartitionSpec:
    """Splits the largest dimension divisible by ``num_shards``; replicates small or indivisible tensors."""
    if num_shards == 1 or math.prod(shape) < FSDP_MIN_ELEMENTS:
        return PartitionSpec()
    candidates = [axis for axis in range(len(shape)) if shape[axis] % num_shards == 0]
    if not candidates:
        return PartitionSpec()
    axis = max(candidates, key=lambda a: shape[a])
    return PartitionSpec(*([None] * axis + [DATA_AXIS]))


def state_shardings(abstract_tree: Any, mesh: Mesh, fsdp: bool) -> Any:
    """A sharding for every leaf of ``abstract_tree`` (arrays or ShapeDtypeStructs)."""
    num_shards = mesh.shape[DATA_AXIS]

    def sharding_for(leaf):
        spec = fsdp_spec(tuple(leaf.shape), num_shards) if fsdp else PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree.map(sharding_for, abstract_tree)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's numpy batch into global arrays split over ``data``.

    Every process passes its own rows; the global batch is their concatenation in
    process order.
    """
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value)) for name, value in local_batch.items()
    }


def host_tree(tree: Any) -> Any:
    """``tree`` as host numpy arrays on every process; a collective (all-gather) when it spans processes."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
