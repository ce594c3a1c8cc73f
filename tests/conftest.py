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
import pytest  # noqa: E402

# Compile time dominates tiny test programs; numerics are unchanged by this flag.
jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def run_smoke_pipeline(tmp_path):
    """Runs a dataset config's ':smoke' variant end to end under ``tmp_path``.

    Checks what every run must produce (three stages, each with a valid-split evaluation and an
    mIoU in [0, 1]) and returns ``(results, comparison.md text)`` for dataset-specific checks.
    """

    def run(config_module):
        from intrakd_jax import train

        config = config_module.get_config("smoke")
        config.data.data_dir = str(tmp_path / "data")
        results = train.train_and_evaluate(config, str(tmp_path / "work"))
        assert set(results) == {"teacher", "student", "distill"}
        for stage in results:
            assert (tmp_path / "work" / stage / "eval_valid.json").exists()
            assert 0.0 <= results[stage]["miou"] <= 1.0
        return results, (tmp_path / "work" / "comparison.md").read_text()

    return run
