"""Tests for intrakd_jax.cpu_allocator: the tcmalloc re-exec and glibc's kept freed memory."""

import os
import subprocess
import sys
from pathlib import Path

from intrakd_jax import cpu_allocator


class _Exec:
    def __init__(self):
        self.calls = []

    def __call__(self, path, argv):
        self.calls.append((path, argv))


def _run(env, found="libtcmalloc_minimal.so.4", platform="linux"):
    execv = _Exec()
    done = cpu_allocator.reexec_with_tcmalloc(env, execv, lambda: found, platform)
    return done, execv.calls


def test_reexecs_once_with_the_library_prepended_to_ld_preload():
    env = {"LD_PRELOAD": "/opt/other.so"}
    done, calls = _run(env)
    assert done
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4:/opt/other.so"
    assert calls == [(sys.executable, [sys.executable, *sys.orig_argv[1:]])]
    # The re-executed process sees the preload and goes on without a second exec.
    assert _run(env) == (False, [])


def test_empty_ld_preload_gets_only_the_library():
    env = {}
    assert _run(env)[0]
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4"


def test_no_reexec_when_switched_off_missing_or_not_linux():
    assert _run({cpu_allocator.ENV_SWITCH: "0"}) == (False, [])
    assert _run({}, found=None) == (False, [])
    assert _run({}, platform="darwin") == (False, [])
    env = {"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}
    assert _run(env) == (False, [])
    assert env["LD_PRELOAD"] == "/usr/lib/libtcmalloc.so.4"


def test_keep_freed_memory_sets_glibcs_three_parameters():
    calls = []

    def mallopt(param, value):
        calls.append((param, value))
        return 1

    assert cpu_allocator.keep_freed_memory({}, "linux", mallopt)
    # malloc.h: M_ARENA_MAX = -8, M_MMAP_MAX = -4, M_TRIM_THRESHOLD = -1 (-1 as value = SIZE_MAX).
    assert calls == [(-8, 1), (-4, 0), (-1, -1)]


def test_keep_freed_memory_does_nothing_when_off_elsewhere_or_under_tcmalloc():
    def mallopt(param, value):
        raise AssertionError("mallopt must not be called")

    off = {cpu_allocator.KEEP_SWITCH: "0"}
    assert not cpu_allocator.keep_freed_memory(off, "linux", mallopt)
    assert not cpu_allocator.keep_freed_memory({}, "darwin", mallopt)
    tcmalloc = {"LD_PRELOAD": "libtcmalloc_minimal.so.4"}
    assert not cpu_allocator.keep_freed_memory(tcmalloc, "linux", mallopt)
    # glibc refusing a setting is reported, not hidden.
    assert not cpu_allocator.keep_freed_memory({}, "linux", lambda param, value: 0)


_FAULTS_SCRIPT = """
import resource, sys, threading
from intrakd_jax import cpu_allocator
if sys.argv[1] == "keep":
    assert cpu_allocator.keep_freed_memory()
import numpy as np
faults = []
def work():
    # A worker thread, as XLA's: 256 MiB blocks, allocated, written, freed, three times.
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.empty(64 * 2**20, np.float32)
        a.fill(1.0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del a
t = threading.Thread(target=work)
t.start()
t.join()
print(*faults)
"""


def test_kept_memory_is_reused_without_page_faults_in_a_real_process():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), cpu_allocator.KEEP_SWITCH: "1"}
    env.pop("LD_PRELOAD", None)

    def faults(mode):
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS_SCRIPT, mode],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return [int(v) for v in out.stdout.split()]

    default, kept = faults("default"), faults("keep")
    # glibc's defaults map (and fault in) a fresh block every time: at least one fault per 2 MiB
    # huge page, 128 of them; kept, the second and third blocks reuse the first one's pages.
    assert min(default) >= 100, default
    assert kept[0] >= 100 and max(kept[1:]) <= 10, kept
