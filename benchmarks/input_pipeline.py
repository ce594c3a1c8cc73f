"""Input pipeline throughput, and training fed by the pipeline versus fed from memory.

  python benchmarks/input_pipeline.py --dataset=culane
  python benchmarks/input_pipeline.py --dataset=all --data_root=/tmp/bench_data

1. Throughput: a synthetic twin of the dataset at the official frame size (1640x590 CULane,
   3384x2710 ApolloScape, 1276x717 LLAMAS; written once under --data_root) goes through the
   real training pipeline of the dataset's official config (decode, crop, scale, crop/pad,
   rotation, normalisation; batch 4 at the official input size). Images/s with one map worker
   (``num_parallel_calls=1``: the per-core rate) and with AUTOTUNE (all cores).
2. Feeding: the ``:synthetic`` config's student train step (the demo's ERFNet at its input size)
   runs --train_steps steps on batches from the real pipeline, then the same number of steps on
   one batch held in memory, alternating for --rounds rounds; the ratio of the median step
   rates is the pipeline's overhead.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import importlib  # noqa: E402

import harness  # noqa: E402  (benchmarks/harness.py, beside this script)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import data_pipelines  # noqa: E402
from intrakd_jax import parallel  # noqa: E402

_DATASET = flags.DEFINE_enum(
    "dataset", "all", ["all", "llamas", "culane", "apolloscape"], "dataset(s)"
)
_DATA_ROOT = flags.DEFINE_string("data_root", "data/bench", "where full-size twins are written")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 16, "frames in each full-size twin")
_BATCHES = flags.DEFINE_integer("batches", 8, "timed batches per throughput measurement")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 25, "steps per feeding measurement")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "alternating pipeline/memory rounds (medians)")

# Synthetic-generator settings for a full-size twin (field -> value in config.data.synthetic).
FULL_SIZE = {
    "llamas": {"image_wh": (1276, 717)},
    "culane": {"image_wh": (1640, 590)},
    "apolloscape": {"scale": 1.0},
}


def _config(name: str, variant: str = ""):
    return importlib.import_module(f"configs.{name}").get_config(variant)


def _full_size_dataset(name: str, num_parallel_calls: int):
    c = _config(name)
    d = c.data
    d.data_dir = os.path.join(_DATA_ROOT.value, f"{name}_full")
    d.synthetic.update(
        enabled=True, num_train=_NUM_IMAGES.value, num_valid=2, num_test=2, **FULL_SIZE[name]
    )
    if name == "culane":
        d.synthetic.num_test = 9  # one image per test category
    d.num_parallel_calls = num_parallel_calls
    dataset = data_pipelines.get_dataset(d)
    dataset.prepare()
    return dataset, c


def throughput(name: str) -> dict:
    """Images/s of the official training pipeline with 1 worker and with AUTOTUNE."""
    out = {}
    for label, npc in (("1 worker", 1), ("autotune", -1)):
        dataset, c = _full_size_dataset(name, npc)
        it = dataset.train_batches(4, seed=0)
        for _ in range(2):  # warm-up: graph tracing, file cache
            next(it)
        t = time.perf_counter()
        for _ in range(_BATCHES.value):
            next(it)
        out[label] = 4 * _BATCHES.value / (time.perf_counter() - t)
        out["input_hw"] = tuple(c.data.image_hw)
    return out


def feeding(name: str) -> dict:
    """Student steps/s fed by the real pipeline and by one batch in memory (demo config)."""
    c = _config(name, "synthetic")
    dataset = data_pipelines.get_dataset(c.data)
    dataset.prepare()
    info = dataset.info
    mesh = parallel.make_data_mesh()
    student, eval_student, _ = harness.build_models(c, info.num_classes, jnp.float32)
    state, step = harness.student_state_and_step(
        student,
        eval_student,
        info.image_hw,
        mesh,
        info.class_weights,
        c.student.learning_rate,
        10_000,
    )
    local_bs = parallel.local_batch_size(c.batch_size, mesh)
    batches = dataset.train_batches(local_bs, seed=0)

    def run(get_batch) -> float:
        nonlocal state
        state, metrics = step(state, None, parallel.to_global(get_batch(), mesh))
        jax.block_until_ready(metrics)  # warm-up (and compile on the first call)
        t = time.perf_counter()
        for _ in range(_TRAIN_STEPS.value):
            state, metrics = step(state, None, parallel.to_global(get_batch(), mesh))
        jax.block_until_ready(metrics)
        return _TRAIN_STEPS.value / (time.perf_counter() - t)

    held = next(batches)
    rates = {"pipeline": [], "memory": []}
    for _ in range(_ROUNDS.value):  # alternate, so that drifting load hits both alike
        rates["pipeline"].append(run(lambda: next(batches)))
        rates["memory"].append(run(lambda: held))
    return {
        **{k: float(np.median(v)) for k, v in rates.items()},
        "input_hw": tuple(info.image_hw),
    }


def main(_):
    names = ["llamas", "culane", "apolloscape"] if _DATASET.value == "all" else [_DATASET.value]
    print(f"jax {jax.__version__}, {os.cpu_count()} CPU cores, {jax.devices()[0].platform}")
    for name in names:
        tp = throughput(name)
        print(
            f"{name}: official pipeline to {tp['input_hw']} from full-size frames: "
            f"{tp['1 worker']:.1f} images/s with 1 worker, {tp['autotune']:.1f} with AUTOTUNE"
        )
        fd = feeding(name)
        overhead = 1.0 - fd["pipeline"] / fd["memory"]
        print(
            f"{name}: demo student step at {fd['input_hw']}: {fd['pipeline']:.2f} steps/s fed "
            f"by the pipeline, {fd['memory']:.2f} from memory -> overhead {100 * overhead:.1f} %"
        )


if __name__ == "__main__":
    app.run(main)
