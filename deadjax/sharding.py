"""The member axis over devices: one ``Mesh`` axis, ``members``.

A population's state has a leading member axis; every leaf is sharded along
it over all devices (one CPU, N forced CPU devices, several GPUs, or every
chip of a multi-host TPU slice), and the data are replicated. Members are
independent, so XLA partitions the vmapped program without communication.
Population sizes are padded to a multiple of the device count; padding
members never reach results, summaries or checkpoints.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "members"


def mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def members() -> NamedSharding:
    """Shards a leading member axis over every device."""
    return NamedSharding(mesh(), PartitionSpec(AXIS))


def replicated() -> NamedSharding:
    return NamedSharding(mesh(), PartitionSpec())


def population_size(num_points: int, max_population: int) -> int:
    """Members per chunk: up to ``max_population`` (rounded up to a multiple of
    the device count), never more than the group needs (also rounded up)."""
    d = jax.device_count()
    wanted = min(max_population, num_points)
    return int(math.ceil(wanted / d) * d)


def map_members(fn):
    """``fn`` of one member applied to every member of a population whose
    leading axis is sharded over the mesh (the member sharding): each device
    runs ``fn`` on its own members one after another (``shard_map`` of
    ``lax.map``), without communication. Where ``jax.vmap`` would batch every
    operation over all of a device's members, this keeps one member's arrays
    in cache through a loop of many small steps (the CPU linear algebra of
    :mod:`deadjax.linalg`). ``fn`` sees one member and uses no collective, so
    ``shard_map``'s check of varying axes is off: it would reject any loop
    whose carry starts from a constant."""
    spec = PartitionSpec(AXIS)
    return jax.shard_map(lambda tree: jax.lax.map(fn, tree), mesh=mesh(), in_specs=spec,
                         out_specs=spec, check_vma=False)


def shard_members(tree):
    """Places every leaf (leading member axis) on the member sharding."""
    sharding = members()
    return jax.tree.map(lambda a: jax.device_put(a, sharding), tree)


def replicate(tree):
    sharding = replicated()
    return jax.tree.map(lambda a: jax.device_put(a, sharding), tree)


def to_host(tree):
    """NumPy copies of (possibly multi-host) arrays, on every process."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def is_writer() -> bool:
    """Only process 0 writes results, summaries and metadata."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """``flag`` or-ed over every process (one small collective when there are
    several), so that all of them take the same decision at the same step."""
    if jax.process_count() == 1:
        return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray([flag], np.int32))
    return bool(np.asarray(flags).any())
