"""Tests for intrakd_jax.cpu_allocator: when main.py re-executes itself with tcmalloc preloaded."""

import sys

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
