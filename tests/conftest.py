"""Test setup: four simulated CPU devices, fast compiles, TF kept off accelerators.

XLA_FLAGS must be set before jax initialises its backend, so this runs before any test module
imports jax.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

# Compile time dominates tiny test programs; numerics are unchanged by this flag.
jax.config.update("jax_disable_most_optimizations", True)
