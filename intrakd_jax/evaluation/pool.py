"""Process pools over images for the metrics: all cores by default, results in order, progress.

Every folder-level metric (CULane F1, LLAMAS pixel AP and lane F1, ApolloScape mIoU) scores images
independently and then adds the per-image results up in a fixed order, so the numbers do not
depend on the number of processes. `map_images` runs those per-image functions and logs
``done/total``, rate and ETA (`data_pipelines.util.ProgressLogger`) while they run.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from data_pipelines.util import ProgressLogger

TaskT = TypeVar("TaskT")
ResultT = TypeVar("ResultT")


def resolve_workers(workers: int | None) -> int:
    """Number of processes: None means all CPU cores.

    Raises:
      ValueError: for a count below 1.
    """
    count = (os.cpu_count() or 1) if workers is None else int(workers)
    if count < 1:
        raise ValueError(f"workers must be >= 1 or None (all cores), got {workers}")
    return count


def mp_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing start method: fork where it is safe, forkserver or spawn otherwise."""
    # fork starts fastest, but not once JAX has started its (multithreaded) backends here.
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    if sys.platform.startswith("linux") and not getattr(xla_bridge, "_backends", None):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if sys.platform != "win32" else "spawn")


def map_images(
    fn: Callable[[TaskT], ResultT],
    tasks: Sequence[TaskT],
    *,
    workers: int | None = None,
    what: str = "images",
    units: Sequence[int] | None = None,
    progress_every_s: float = 5.0,
) -> list[ResultT]:
    """``[fn(task) for task in tasks]`` in a process pool, in task order, with progress and ETA.

    Args:
      fn: a module-level function (the pool sends it to the workers by name).
      tasks: its arguments, one per call (picklable).
      workers: processes (None: all CPU cores; 1: in this process, no pool).
      what: what the progress lines count, e.g. "LLAMAS pixel AP images".
      units: images per task when a task holds several (progress counts images); default 1.
      progress_every_s: seconds between progress lines.

    Returns:
      The results, in the order of `tasks`.

    Raises:
      ValueError: for a worker count below 1 or `units` of the wrong length; whatever `fn`
        raises (re-raised here, from the first failing task in task order).
    """
    count = resolve_workers(workers)
    sizes = [1] * len(tasks) if units is None else [int(u) for u in units]
    if len(sizes) != len(tasks):
        raise ValueError(f"map_images: {len(sizes)} units for {len(tasks)} tasks")
    progress = ProgressLogger(what, sum(sizes), every_s=progress_every_s)
    results: list[ResultT] = []
    if count == 1 or len(tasks) <= 1:
        for task, size in zip(tasks, sizes, strict=True):
            results.append(fn(task))
            progress.update(size)
    else:
        # Not multiprocessing.Pool: its terminate() (what leaving `with Pool` after an exception
        # calls) can block for good on the task-queue lock that an idle worker holds, which hung
        # the CLIs now and then on a missing prediction file. The executor cancels the tasks not
        # yet started and waits for the running ones.
        executor = ProcessPoolExecutor(min(count, len(tasks)), mp_context=mp_context())
        try:
            for result, size in zip(executor.map(fn, tasks), sizes, strict=True):
                results.append(result)
                progress.update(size)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
    progress.finish()
    return results
