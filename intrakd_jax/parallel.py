"""Data-parallel helpers: the 1-D ``data`` mesh, host batches to global arrays, multi-host start.

The training and evaluation steps are ``jax.shard_map`` programs over a 1-D mesh with one axis,
``DATA_AXIS``. Its axis type is Auto (not ``jax.make_mesh``'s default Explicit), because Explicit
axes turn scatter-like metric ops (confusion matrices) into sharding-type errors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
    """Joins a multi-host job when asked to, before anything touches the XLA backend.

    Set ``INTRAKD_DISTRIBUTED=1`` on every host of a TPU pod slice or Slurm/k8s GPU job; jax
    auto-detects the coordinator there. On a single host nothing happens (a bare
    ``jax.distributed.initialize()`` raises there because no coordinator is defined).
    """
    if os.environ.get("INTRAKD_DISTRIBUTED", "0") not in ("0", "", "false", "False"):
        jax.distributed.initialize()
        logging.info(
            "joined distributed job: process %d of %d", jax.process_index(), jax.process_count()
        )


def make_data_mesh(num_devices: int | None = None) -> Mesh:
    """Builds the 1-D data-parallel mesh over all (or the first ``num_devices``) devices.

    Args:
      num_devices: use only this many devices (tests compare 1 against 4); None for all.

    Returns:
      A mesh with the single Auto axis ``data``.
    """
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(
                f"config.num_devices={num_devices} but only {len(devices)} devices are visible"
            )
        devices = devices[:num_devices]
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
    if global_batch_size % num_devices:
        raise ValueError(
            f"batch size {global_batch_size} is not divisible by the {num_devices} devices of "
            "the data mesh; choose a multiple (config.batch_size / config.eval_batch_size)"
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
