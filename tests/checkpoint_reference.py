"""Reading a training state straight from a stage's orbax checkpoints, for tests that compare runs.

Independent of ``intrakd_jax.checkpointing``'s loaders (which need the model): the raw pytree of
one step, every array on one device.
"""

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from intrakd_jax import checkpointing


def saved_steps(stage_dir: Path) -> list[int]:
    """The steps of the complete checkpoints in ``<stage_dir>/checkpoints``, oldest first."""
    directory = Path(stage_dir) / checkpointing.LATEST_DIR
    with ocp.CheckpointManager(
        str(directory), options=ocp.CheckpointManagerOptions(create=False)
    ) as mngr:
        return sorted(mngr.all_steps())


def saved_state(stage_dir: Path, step: int, newest: bool = True) -> dict:
    """The ``state`` item saved at ``step`` in ``<stage_dir>/checkpoints``.

    ``newest``: also assert that ``step`` is the newest checkpoint there.
    """
    directory = Path(stage_dir) / checkpointing.LATEST_DIR
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.CheckpointManager(
        str(directory),
        item_handlers={"state": ocp.PyTreeCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(create=False),
    ) as mngr:
        assert not newest or mngr.latest_step() == step, mngr.all_steps()
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
