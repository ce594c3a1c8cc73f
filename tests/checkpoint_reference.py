"""Reading a training state straight from a stage's orbax checkpoints, for tests that compare runs.

Independent of ``intrakd_jax.checkpointing``'s loaders (which need the model): the raw pytree of
one step, every array on one device.
"""

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from intrakd_jax import checkpointing


def saved_state(stage_dir: Path, step: int) -> dict:
    """The ``state`` item saved at ``step`` in ``<stage_dir>/checkpoints`` (the newest save)."""
    directory = Path(stage_dir) / checkpointing.LATEST_DIR
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.CheckpointManager(
        str(directory),
        item_handlers={"state": ocp.PyTreeCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(create=False),
    ) as mngr:
        assert mngr.latest_step() == step
        tree = mngr.item_metadata(step)["state"].tree
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree
        )
        restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=device), target)
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args)
            ),
        )
    return restored["state"]
