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

__all__ = ["data_mesh", "replicate", "shard_batch", "initialize_distributed", "check_batch_size", "use_cpu_devices"]

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


def use_cpu_devices(n: int | None) -> None:
    """Expose `n` CPU devices to JAX in this process (None: leave JAX's default, one).

    On a CPU, JAX runs one device's program on one thread, and an MPS contraction's small
    per-site operations do not use XLA's intra-op threads: with n devices (e.g. one per core)
    the data-parallel mesh gives each core its own slice of every batch (docs/bench/speed_ii.md).
    Must happen before the first JAX computation of the process (JAX's jax_num_cpu_devices).
    Raises: DistillError when JAX already started with another number of CPU devices.
    """
    if n is None:
        return
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backend is up: fine if it already has n CPU devices
        have = len(jax.devices("cpu"))
        if have != n:
            raise DistillError(f"runtime.cpu_devices = {n} cannot take effect: JAX already started with {have} CPU "
                               "device(s) in this process; set it before any JAX work (a fresh process), or leave "
                               "it null") from None


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
    """Every array of `tree` replicated on every device of the mesh (with several processes: from
    each process's own copy, which must be equal everywhere — same seed, same data)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(local(x)))
            return jax.random.wrap_key_data(jax.make_array_from_callback(data.shape, sharding, lambda i: data[i]))
        host = np.asarray(local(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

    return jax.tree.map(put, tree)


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


# ----------------------------------------------------------------------- several processes


def is_primary() -> bool:
    """Whether this process writes files (process 0; always true with one process)."""
    return jax.process_index() == 0


def barrier(tag: str) -> None:
    """Wait until every process reaches the barrier `tag` (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(tag)


def agree(value: int) -> int:
    """Process 0's `value`, on every process (e.g. its PID, to name a shared folder)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))


def local(x):
    """This process's copy of a replicated array (a global array spanning several processes
    cannot be read whole by one of them); other values unchanged."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x.addressable_data(0)
    return x
