"""Run the command-line job with tcmalloc when the host has it (Linux), for faster CPU steps.

XLA:CPU allocates each execution's temporaries afresh; with glibc's allocator every buffer above
32 MiB is a new mmap that the step then page-faults in again, gigabytes per training step at
CULane and ApolloScape sizes. tcmalloc keeps freed pages for reuse: the ERFNet training step runs
1.3x (CULane, batch 4) to 2.9x (ApolloScape, batch 4) faster on the 2-core development CPU
(BENCHMARKS.md). TPU VMs preload tcmalloc for the same reason.

The preload has to be in place when the process starts, so ``reexec_with_tcmalloc`` re-executes
the interpreter with ``LD_PRELOAD`` set, once, before anything else is imported. Nothing happens
when tcmalloc is not installed (``apt install libtcmalloc-minimal4``), when it is already
preloaded, off Linux, or with ``INTRAKD_TCMALLOC=0``.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Callable, MutableMapping

ENV_SWITCH = "INTRAKD_TCMALLOC"
_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")


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
