"""Data-parallel helpers: the 1-D ``data`` mesh, host batches to global arrays, multi-host start.

The training and evaluation steps are ``jax.shard_map`` programs over a 1-D mesh with one axis,
``DATA_AXIS``. Its axis type is Auto (not ``jax.make_mesh``'s default Explicit), because Explicit
axes turn scatter-like metric ops (confusion matrices) into sharding-type errors.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from intrakd_jax.errors import ConfigError

DATA_AXIS = "data"


def _detected_cluster() -> str | None:
    """The multi-process launcher this process runs under, if one is recognisable."""
    env = os.environ
    tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
    if env.get("SLURM_JOB_ID") and tasks and tasks.isdigit() and int(tasks) > 1:
        return "Slurm"
    if importlib.util.find_spec("libtpu") is not None:  # a Cloud TPU VM (jax[tpu] installed)
        return "Cloud TPU"
    return None


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins a multi-process job, before anything touches the XLA backend.

    Explicit arguments (``main.py --coordinator_address --num_processes --process_id``) join
    that job. Otherwise ``INTRAKD_DISTRIBUTED=1``, a Slurm step with several tasks, or a Cloud
    TPU VM let jax find the job itself (``jax.distributed.initialize()`` auto-detects TPU pod
    slices, Slurm and Kubernetes); a TPU VM that is not part of a pod slice stays one process.
    On CPU, jax's gloo collectives connect the processes.

    Returns:
      Whether this process joined a job of more than one process.

    Raises:
      ConfigError: only some of the explicit arguments given, or INTRAKD_DISTRIBUTED=1 where
        jax finds no job.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ConfigError(
                "--coordinator_address, --num_processes and --process_id go together; got "
                f"{coordinator_address!r}, {num_processes!r}, {process_id!r}"
            )
        jax.distributed.initialize(coordinator_address, int(num_processes), int(process_id))
    else:
        asked = os.environ.get("INTRAKD_DISTRIBUTED", "0") not in ("0", "", "false", "False")
        cluster = _detected_cluster()
        if not asked and cluster is None:
            return False
        try:
            jax.distributed.initialize()
        except ValueError as e:  # no coordinator found: a single host
            if asked:
                raise ConfigError(
                    f"INTRAKD_DISTRIBUTED=1 but jax found no multi-process job ({e}); pass "
                    "--coordinator_address/--num_processes/--process_id"
                ) from None
            logging.info("%s detected, but no multi-process job: one process", cluster)
            return False
    logging.info(
        "joined a distributed job: process %d of %d, %d of %d devices here",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return jax.process_count() > 1


def is_lead_process() -> bool:
    """Whether this process writes the run's files (reports, figures, JSON): process 0."""
    return jax.process_index() == 0


def make_data_mesh(num_devices: int | None = None) -> Mesh:
    """Builds the 1-D data-parallel mesh over all (or ``num_devices``) devices.

    With several processes, ``num_devices`` takes the same number of devices from every
    process (each host feeds its own devices).

    Args:
      num_devices: use only this many devices (tests compare 1 against 4); None for all.

    Returns:
      A mesh with the single Auto axis ``data``.

    Raises:
      ValueError: more devices than visible, or a count that does not split over the processes.
    """
    devices = jax.devices()
    if num_devices is not None:
        processes = jax.process_count()
        if not 1 <= num_devices <= len(devices) or num_devices % processes:
            raise ValueError(
                f"config.num_devices={num_devices} but {len(devices)} devices are visible over "
                f"{processes} process(es); use a multiple of {processes} up to {len(devices)}"
            )
        per_process = num_devices // processes
        by_process = [[d for d in devices if d.process_index == p] for p in range(processes)]
        devices = [d for mine in by_process for d in mine[:per_process]]
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of arrays held whole on every device (parameters, optimiser state, scalars)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of batches: the leading axis is split over ``data``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """Per-process batch size; checks that the global batch splits evenly over devices."""
    num_devices = mesh.devices.size
    if global_batch_size < 1 or global_batch_size % num_devices:
        lower = max(num_devices, global_batch_size // num_devices * num_devices)
        nearest = f"{lower} or {lower + num_devices}" if lower < global_batch_size else str(lower)
        raise ConfigError(
            f"batch size {global_batch_size} does not split over the {num_devices} devices of "
            f"the data mesh ({jax.process_count()} process(es)); use {nearest} "
            "(config.batch_size / config.eval_batch_size / config.predict.batch_size)"
        )
    return global_batch_size // jax.process_count()


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Stitches this process's slice of a batch into global arrays sharded over ``data``."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def to_host(tree: Any) -> Any:
    """Fetches a (possibly multi-host) sharded pytree to numpy on every process."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)
