"""CPU allocators for faster steps: tcmalloc when the host has it, else glibc tuned to keep memory.

XLA:CPU allocates each execution's temporaries afresh; with glibc's allocator every buffer above
32 MiB is a new mmap that the step then page-faults in again, gigabytes per training step at
CULane and ApolloScape sizes. tcmalloc keeps freed pages for reuse: the ERFNet training step runs
1.3x (CULane, batch 4) to 2.9x (ApolloScape, batch 4) faster on the 2-core development CPU
(BENCHMARKS.md). TPU VMs preload tcmalloc for the same reason.

The preload has to be in place when the process starts, so ``reexec_with_tcmalloc`` re-executes
the interpreter with ``LD_PRELOAD`` set, once, before anything else is imported. Nothing happens
when tcmalloc is not installed (``apt install libtcmalloc-minimal4``), when it is already
preloaded, off Linux, or with ``INTRAKD_TCMALLOC=0``.

Without tcmalloc, ``keep_freed_memory`` gets the same effect from glibc's own allocator at run
time (``mallopt``, nothing to install): one arena for all threads, no mmap for large blocks and
no trimming, so a step's temporaries reuse the pages the previous step freed. Why all three: XLA
allocates the step's temporaries (1.5 GB at CULane size, batch 4) from a worker thread; glibc
gives a worker thread its own arena, whose heaps are at most 64 MiB, and serves any larger block
there with a fresh mmap regardless of ``M_MMAP_MAX``. Measured on the development CPU: 372,000
page faults per ERFNet training step at CULane size, batch 4, before, none after
(BENCHMARKS.md). The cost: the process keeps its peak heap until it exits. It must run before
the threads that allocate exist (before jax creates its CPU client), so ``main.py`` and the
benchmarks call it first thing; ``INTRAKD_KEEP_FREED_MEMORY=0`` disables it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable, MutableMapping

ENV_SWITCH = "INTRAKD_TCMALLOC"
KEEP_SWITCH = "INTRAKD_KEEP_FREED_MEMORY"
_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def find_tcmalloc() -> str | None:
    """The tcmalloc shared library's name as the dynamic loader finds it, or None."""
    for name in _LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def reexec_with_tcmalloc(
    environ: MutableMapping[str, str] | None = None,
    execv: Callable[[str, list[str]], object] = os.execv,
    find: Callable[[], str | None] = find_tcmalloc,
    platform: str = sys.platform,
) -> bool:
    """Re-executes this process with tcmalloc preloaded when that is possible and useful.

    Args:
      environ: Environment to read and update (``os.environ`` by default).
      execv: Replaces the process (``os.execv``; injectable for tests).
      find: Locates the library.
      platform: ``sys.platform``.

    Returns:
      False when nothing was done (only a test's ``execv`` returns; the real one does not).
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_SWITCH, "1") == "0" or not platform.startswith("linux"):
        return False
    if "tcmalloc" in env.get("LD_PRELOAD", ""):
        return False  # already preloaded (by us before the re-exec, or by the user / the VM)
    library = find()
    if library is None:
        return False
    env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    # orig_argv keeps interpreter options (-u, -X ...) and the script or -m module as given.
    execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    return True


def keep_freed_memory(
    environ: MutableMapping[str, str] | None = None,
    platform: str = sys.platform,
    mallopt: Callable[[int, int], int] | None = None,
) -> bool:
    """Tunes glibc malloc to reuse freed memory (one arena, no mmap, no trim); see the module doc.

    Call it before jax (or any library that starts threads) allocates. Does nothing with
    ``INTRAKD_KEEP_FREED_MEMORY=0``, off Linux, under a preloaded tcmalloc (which already keeps
    freed memory), or where the C library has no ``mallopt`` (e.g. musl).

    Args:
      environ: Environment to read (``os.environ`` by default).
      platform: ``sys.platform``.
      mallopt: The C library's ``mallopt`` (looked up by default; injectable for tests).

    Returns:
      True when glibc accepted all three settings.
    """
    env = os.environ if environ is None else environ
    if env.get(KEEP_SWITCH, "1") == "0" or not platform.startswith("linux"):
        return False
    if "tcmalloc" in env.get("LD_PRELOAD", ""):
        return False
    if mallopt is None:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            return False
    # -1 as the trim threshold is SIZE_MAX inside glibc: never give the heap's top back.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    return all([mallopt(param, value) == 1 for param, value in settings])
