"""One JAX mesh over every device of a run: ``jax.distributed`` across processes, data-parallel along ``data``.

A run's processes (one per Ray actor, or just this one) call ``join`` once,
before JAX computes anything; ``jax.devices()`` then lists every device of
every process, and one jitted step over arrays laid out on ``run_mesh()``
is the whole data-parallel step: XLA inserts the gradient all-reduce
(Gloo between CPU processes, NCCL between GPUs), so no gradient ever leaves
the processes that compute it. Each process feeds only its own rows of the
global batch (``global_batch``).

Parameters are replicated, or with ``fsdp`` sharded along ``data`` too
(each array split on its largest dimension the device count divides: the
ZeRO-3 layout, gathered by XLA where a step needs them), for models whose
weights and optimizer state do not fit one device.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def free_address(host: str) -> str:
    """``host:port`` with a port free now on this machine: where rank 0's coordinator listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return f"{host}:{s.getsockname()[1]}"


def join(coordinator: str, processes: int, rank: int, *, timeout_s: int = 300) -> None:
    """Join the run's ``processes`` into one JAX runtime (a no-op for one process).

    Must run before the process's first JAX computation; a process can join
    only once, so a restarted run starts fresh processes.
    """
    if processes == 1:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=processes, process_id=rank,
                               initialization_timeout=timeout_s)


def run_mesh() -> Mesh:
    """Every device of every joined process on the one ``data`` axis."""
    return jax.make_mesh((jax.device_count(),), (AXIS,), axis_types=(AxisType.Auto,))


def is_primary() -> bool:
    """The process that writes checkpoint hashes, evaluates and exports (rank 0)."""
    return jax.process_index() == 0


def layout(tree: Any, mesh: Mesh, fsdp: bool) -> Any:
    """A ``NamedSharding`` per leaf: replicated, or under ``fsdp`` split on the largest dimension ``data`` divides."""
    n = mesh.shape[AXIS]

    def one(leaf: Any) -> NamedSharding:
        shape = np.shape(leaf)
        if fsdp and n > 1:
            dims = [d for d in np.argsort(shape)[::-1] if shape[d] % n == 0 and shape[d] >= n]
            if dims:
                spec = [None] * len(shape)
                spec[int(dims[0])] = AXIS
                return NamedSharding(mesh, PartitionSpec(*spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, tree)


def needs_fsdp(setting: bool | None, mesh: Mesh, *trees: Any) -> bool:
    """``setting`` when given; else shard when ``trees`` (what a step holds: the state, the frozen weights) and a
    gradient as large as the parameters would take over half of one device's memory. CPUs report no limit."""
    if setting is not None:
        return setting
    if mesh.shape[AXIS] == 1:
        return False
    limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    if not limit:
        return False
    held = sum(leaf.nbytes for tree in trees for leaf in jax.tree.leaves(tree))
    return held > limit / 2


def place(tree: Any, shardings: Any) -> Any:
    """Lay out a pytree that every process holds whole (same values everywhere) on the mesh."""
    def one(leaf: Any, sharding: NamedSharding) -> jax.Array:
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def to_host(tree: Any) -> Any:
    """Numpy copies of a pytree of mesh arrays, whole in every process (a collective: every process calls it)."""
    def one(leaf: Any) -> np.ndarray:
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            return np.asarray(leaf)
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(one, tree)


def local_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> slice:
    """The rows of a ``data``-split array that this process's devices hold (one contiguous block)."""
    rows = [index[0].indices(global_shape[0])[:2]
            for index in sharding.addressable_devices_indices_map(global_shape).values()]
    return slice(min(r[0] for r in rows), max(r[1] for r in rows))


def global_batch(arrays: dict[str, np.ndarray], indices: np.ndarray, mesh: Mesh) -> dict[str, jax.Array]:
    """The micro-batch of example ``indices`` as arrays split along ``data``, built from this process's rows.

    The batch is padded to a multiple of the device count with rows whose
    ``loss_mask`` is 0: they add nothing to the masked loss sum or the token
    count, so the step's loss and gradient are those of the unpadded batch.
    """
    n = mesh.shape[AXIS]
    pad = -len(indices) % n
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    out = {}
    for name, a in arrays.items():
        full = a[indices]
        if pad:
            filler = np.zeros((pad, *full.shape[1:]), full.dtype)
            if name != "loss_mask":
                filler[:] = full[:1]
            full = np.concatenate([full, filler])
        rows = local_rows(sharding, full.shape)
        out[name] = jax.make_array_from_process_local_data(sharding, full[rows], full.shape)
    return out


def time_all_reduce(tree: Any, mesh: Mesh, repeats: int = 5) -> float:
    """Seconds for one all-reduce over ``data`` of as many float32 values as ``tree`` holds (best of ``repeats``)."""
    size = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(tree))
    n = mesh.shape[AXIS]
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    rows = local_rows(sharding, (n, size))
    x = jax.make_array_from_process_local_data(sharding, np.ones((rows.stop - rows.start, size), np.float32),
                                               (n, size))
    reduce = jax.jit(lambda a: a.sum(0), out_shardings=NamedSharding(mesh, PartitionSpec()))
    return best_seconds(lambda: reduce(x).block_until_ready(), repeats)


def best_seconds(run: Callable[[], Any], repeats: int) -> float:
    """The shortest of ``repeats`` timed calls of ``run``, after one untimed call that compiles and warms it."""
    import time

    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


__all__ = [
    "AXIS",
    "best_seconds",
    "free_address",
    "global_batch",
    "is_primary",
    "join",
    "layout",
    "needs_fsdp",
    "place",
    "run_mesh",
    "time_all_reduce",
    "to_host",
]
