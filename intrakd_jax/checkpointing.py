"""Orbax checkpoints of a training stage: periodic ones for resuming, and the best by validation.

A stage directory holds two CheckpointManagers:
  ``checkpoints/``  the latest few saves (train state + JSON metadata), used for automatic resume;
  ``best/``         the single best save by a validation metric (mIoU), used as the teacher for
                    distillation and for evaluation.
Each save has two items: ``state`` (the array pytree) and ``meta`` (JSON: stage, model name and
arguments, step, metrics). Saves are atomic (orbax writes to a temporary folder and renames), so a
run killed mid-save resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from intrakd_jax.errors import StorageError

LATEST_DIR = "checkpoints"
BEST_DIR = "best"


class CheckpointError(ValueError):
    """A checkpoint is missing or does not fit the model it is loaded into."""


def _manager(path: str, max_to_keep: int, best_metric: str | None) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        best_fn=(lambda m: m[best_metric]) if best_metric else None,
        best_mode="max",
        keep_checkpoints_without_metrics=best_metric is None,
        # A save cut short (SIGKILL, full disk) leaves a *.orbax-checkpoint-tmp folder, never
        # read as a checkpoint; the next run removes it.
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(
        os.path.abspath(path), options=options, item_names=("state", "meta")
    )


# What orbax and tensorstore say when the storage refuses a write (their errors are ValueErrors
# with the OS error in the text, raised at the next save or wait).
_IO_MARKERS = (
    "RESOURCE_EXHAUSTED",
    "No space left",
    "Read-only file system",
    "Permission denied",
    "Disk quota",
    "File too large",
    "os_error_code",
)
# OS errors that mean "this place cannot be written", as opposed to a missing input.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
)


def is_storage_failure(e: BaseException) -> bool:
    """True when ``e`` is the storage refusing a write (full, read-only, no permission)."""
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
        return True
    return isinstance(e, OSError | ValueError) and any(m in str(e) for m in _IO_MARKERS)


def _is_late_write_callback(unraisable: Any) -> bool:
    """True for tensorstore reporting a write finished after orbax closed the save's event loop.

    When one write of a save fails (a full disk), orbax's event loop ends with the error while the
    save's other tensorstore writes are still in flight; each then delivers its result to the
    closed loop, and tensorstore prints the RuntimeError (hundreds of tracebacks per save). Nobody
    awaits those results: the failed save is already a StorageError and its folder is never read.
    """
    exc = unraisable.exc_value
    if unraisable.object is not None or not isinstance(exc, RuntimeError):
        return False
    if str(exc) != "Event loop is closed" or exc.__traceback__ is None:
        return False
    frames = [f.f_code.co_name for f, _ in traceback.walk_tb(exc.__traceback__)]
    return "call_soon_threadsafe" in frames


def _quiet_late_write_callbacks() -> None:
    """Drops the late-callback tracebacks of a failed save; other unraisable errors pass on."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_late_write_callbacks", False):
        return

    def hook(unraisable: Any) -> None:
        if not _is_late_write_callback(unraisable):
            previous(unraisable)

    hook._drops_late_write_callbacks = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _last_line(e: BaseException) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


class StageCheckpoints:
    """The periodic and the best checkpoint managers of one training stage.

    Args:
      stage_dir: the stage's work directory.
      max_to_keep: how many periodic checkpoints to keep.
      best_metric: the metrics key that ranks the ``best/`` checkpoints (higher is better).
    """

    def __init__(self, stage_dir: str, max_to_keep: int = 2, best_metric: str = "miou"):
        _quiet_late_write_callbacks()
        self.stage_dir = stage_dir
        self.latest = _manager(os.path.join(stage_dir, LATEST_DIR), max_to_keep, None)
        self.best = _manager(os.path.join(stage_dir, BEST_DIR), 1, best_metric)
        self.best_metric = best_metric

    def latest_step(self) -> int | None:
        """The step of the newest complete periodic checkpoint, or None."""
        return self.latest.latest_step()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Turns a refused write (full disk, read-only) into a StorageError that says what is kept.

        Orbax writes into a temporary folder and renames it when complete, so the newest
        complete checkpoint is never the half-written one.
        """
        try:
            yield
        except Exception as e:
            if not is_storage_failure(e):
                raise
            newest = self.latest.latest_step()
            kept = (
                f"the newest complete checkpoint is step {newest}, kept"
                if newest is not None
                else "no complete checkpoint was written yet"
            )
            raise StorageError(
                f"could not write a checkpoint under {self.stage_dir}: {_last_line(e)}; {kept}. "
                "Free space (df -h) or use another --workdir, then run the same command again "
                "to resume"
            ) from e

    def save(self, step: int, state: Any, meta: Mapping[str, Any], force: bool = False) -> None:
        """Saves a periodic checkpoint (asynchronously).

        Raises:
          StorageError: this or the previous (asynchronous) save could not be written.
        """
        with self._writing():
            self.latest.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))
                ),
                force=force,
            )

    def save_best(self, step: int, state: Any, meta: Mapping[str, Any], metrics: dict) -> None:
        """Offers a validated state to ``best/``; orbax keeps it only if it ranks best."""
        value = metrics.get(self.best_metric)
        if value is None or not np.isfinite(value) or step in self.best.all_steps():
            return
        with self._writing():
            self.best.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))
                ),
                metrics={self.best_metric: float(value)},
                force=True,
            )

    def latest_meta(self) -> dict | None:
        """The metadata of the newest periodic checkpoint (no arrays read), or None."""
        step = self.latest.latest_step()
        if step is None:
            return None
        restored = self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore_latest(self, abstract_state: Any) -> Any | None:
        """The newest periodic checkpoint's state in ``abstract_state``'s structure/shardings.

        Its metadata is ``latest_meta()``, read (and checked) before the arrays.
        """
        step = self.latest.latest_step()
        if step is None:
            return None
        restored = self.latest.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored["state"]

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk (StorageError if one failed)."""
        with self._writing():
            self.latest.wait_until_finished()
            self.best.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the managers (StorageError if a save failed)."""
        with self._writing():
            self.latest.close()
            self.best.close()


def find_checkpoint(path: str) -> tuple[str, int]:
    """Finds the checkpoint to load from a user-given path.

    Accepts a stage directory (prefers ``best/``, else ``checkpoints/``), a manager directory
    (``.../best``), or one step directory (``.../best/120``).

    Returns:
      (manager directory, step).

    Raises:
      CheckpointError: nothing loadable is there; the message names the path.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint path {path} does not exist")
    base = os.path.basename(path)
    if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
        return os.path.dirname(path), int(base)
    candidates = [os.path.join(path, BEST_DIR), os.path.join(path, LATEST_DIR), path]
    for directory in candidates:
        if not os.path.isdir(directory):
            continue
        steps = [
            int(d)
            for d in os.listdir(directory)
            if d.isdigit() and os.path.isdir(os.path.join(directory, d, "state"))
        ]
        if steps:
            return directory, max(steps)
    raise CheckpointError(
        f"no checkpoint found under {path}: expected a stage directory with {BEST_DIR}/ or "
        f"{LATEST_DIR}/ holding numbered step folders (as written by a training stage)"
    )


def _reader(directory: str) -> ocp.CheckpointManager:
    """A reading manager that knows the handlers of both items (metadata, partial reads)."""
    return ocp.CheckpointManager(
        directory,
        item_handlers={"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(create=False),
    )


def read_meta(path: str) -> tuple[str, int, dict]:
    """Reads the JSON metadata of the checkpoint that ``find_checkpoint(path)`` selects."""
    directory, step = find_checkpoint(path)
    with _reader(directory) as mngr:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    return directory, step, dict(meta)


def _shape_mismatches(expected: Any, found: Any, prefix: str = "") -> list[str]:
    """Lists paths whose presence or shape differs between two nested dicts of arrays/metadata."""
    problems = []
    if isinstance(expected, Mapping) and isinstance(found, Mapping):
        for key in sorted(set(expected) | set(found)):
            sub = f"{prefix}/{key}"
            if key not in found:
                problems.append(f"{sub}: missing in checkpoint")
            elif key not in expected:
                problems.append(f"{sub}: in checkpoint but not in the model")
            else:
                problems.extend(_shape_mismatches(expected[key], found[key], sub))
        return problems
    if tuple(expected.shape) != tuple(found.shape):
        problems.append(
            f"{prefix}: model expects shape {tuple(expected.shape)}, checkpoint has "
            f"{tuple(found.shape)}"
        )
    return problems


def load_variables(
    path: str, abstract_variables: Mapping[str, Any], what: str
) -> tuple[dict, dict]:
    """Loads model variables (``params`` and ``batch_stats``) from a stage checkpoint.

    The checkpoint's array shapes are compared with the model's before anything is read, so a
    checkpoint of another architecture stops with a message listing what differs.

    Args:
      path: stage directory, manager directory or step directory.
      abstract_variables: ``{"params": ..., "batch_stats": ...}`` of ShapeDtypeStructs (with
        shardings) for the model the checkpoint must fit.
      what: a name for messages, e.g. "teacher checkpoint (config.teacher.checkpoint)".

    Returns:
      (variables, meta).
    """
    directory, step = find_checkpoint(path)
    with _reader(directory) as mngr:
        tree = mngr.item_metadata(step)["state"].tree
        found = {k: tree.get(k, {}) for k in abstract_variables}
        problems = _shape_mismatches(dict(abstract_variables), found)
        if problems:
            shown = "\n  ".join(problems[:10])
            more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise CheckpointError(
                f"{what} at {directory}/{step} does not fit the configured model "
                f"({len(problems)} differences):\n  {shown}{more}"
            )
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=dict(abstract_variables),
                    restore_args=jax.tree.map(
                        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding),
                        dict(abstract_variables),
                    ),
                    partial_restore=True,
                ),
                meta=ocp.args.JsonRestore(),
            ),
        )
    logging.info("loaded %s from %s/%d", what, directory, step)
    return dict(restored["state"]), dict(restored["meta"])
