"""Data parallelism on JAX's own engine: a 1-D device mesh with a `data` axis.

Every training step runs on all devices of the mesh: the batch is split along its first axis
(`NamedSharding(mesh, P("data"))`) and the train state is replicated (`P()`); XLA inserts the
gradient all-reduce. With several processes (hosts), call `initialize_distributed` first: each
process then feeds its own slice of every global batch and the mesh spans all processes'
devices.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from distill.errors import DistillError

__all__ = ["data_mesh", "replicate", "shard_batch", "initialize_distributed", "check_batch_size"]

DATA_AXIS = "data"


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """`jax.distributed.initialize` for a multi-host run (arguments default to the environment
    variables DISTILL_COORDINATOR, DISTILL_NUM_PROCESSES, DISTILL_PROCESS_ID; on Slurm / TPU pods JAX
    finds them itself). Call before any other JAX work. On CPU the collectives are gloo's.
    Raises: DistillError when the coordinator cannot be reached or the arguments are inconsistent."""
    coordinator = coordinator or os.environ.get("DISTILL_COORDINATOR")
    env_n, env_id = os.environ.get("DISTILL_NUM_PROCESSES"), os.environ.get("DISTILL_PROCESS_ID")
    num_processes = num_processes if num_processes is not None else (int(env_n) if env_n else None)
    process_id = process_id if process_id is not None else (int(env_id) if env_id else None)
    if coordinator is None and num_processes is None:
        return
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    except Exception as err:  # noqa: BLE001 - any failure to join is the user's setup
        raise DistillError(f"could not join the multi-process run at {coordinator!r} as process {process_id} of "
                           f"{num_processes} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                           "check the coordinator address and that every process uses the same count") from None


def data_mesh(n_devices: int | None = None) -> Mesh:
    """A mesh over the first `n_devices` devices (None: all devices of all processes), axis `data`.
    Raises: DistillError if more devices are asked for than exist."""
    devices = jax.devices()
    if n_devices is not None:
        if n_devices > len(devices):
            raise DistillError(f"runtime.devices = {n_devices} but only {len(devices)} device(s) are visible "
                               f"({devices[0].platform}); lower it or leave it null for all")
        devices = devices[:n_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh, key: str) -> None:
    """Raises: DistillError unless `batch_size` splits evenly over the mesh's devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise DistillError(f"{key} = {batch_size} does not split evenly over {n} devices; use a multiple of {n} "
                           f"(e.g. {max(n, batch_size // n * n)})")


def replicate(tree, mesh: Mesh):
    """Every array of `tree` replicated on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """The global batch (every process passes the same arrays) split along axis 0 over the mesh.

    With one process this is a device_put; with several, each process contributes the rows that
    belong to its own devices (`jax.make_array_from_process_local_data`)."""
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    out = {}
    for name, arr in batch.items():
        rows = np.array_split(np.arange(arr.shape[0]), jax.process_count())[jax.process_index()]
        out[name] = jax.make_array_from_process_local_data(sharding, arr[rows], arr.shape)
    return out
