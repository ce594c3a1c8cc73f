"""Images/s of the distillation step and the share of it spent in the IntRA-KD loss.

  python benchmarks/step.py --config=configs/llamas.py:synthetic
  python benchmarks/step.py --config=configs/llamas.py --batch=4 --steps=5

Runs on random data of the config's input size (no dataset needed) on all visible devices:
  1. the full jitted distill step (teacher forward, student forward/backward, CE + IntRA-KD, SGD);
  2. the IntRA-KD loss and its gradient alone, on taps of the shapes the step produces.
The loss share is time(2) / time(1). Medians over --steps timed runs after one warm-up.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from intrakd_jax import optim, parallel, steps, train  # noqa: E402
from intrakd_jax.losses.intra_kd import multi_tap_intra_kd_loss  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/llamas.py:synthetic", "config file")
_BATCH = flags.DEFINE_integer("batch", None, "global batch (default: config.batch_size)")
_STEPS = flags.DEFINE_integer("steps", 5, "timed runs")
NUM_CLASSES = {"llamas": 5}


def _median_seconds(fn, runs: int) -> float:
    jax.block_until_ready(fn())  # compile + warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(_):
    c = _CONFIG.value
    batch_size = _BATCH.value or c.batch_size
    n = NUM_CLASSES.get(c.data.name, 5) if c.data.label_type == "multiclass" else 2
    hw = tuple(c.data.image_hw)
    dtype = train._dtype(c)
    mesh = parallel.make_data_mesh(c.num_devices)
    student = train.build_model(c.student.model, c.student.model_kwargs, n, dtype, True)
    eval_student = train.build_model(c.student.model, c.student.model_kwargs, n, dtype, False)
    teacher = train.build_model(c.teacher.model, c.teacher.model_kwargs, n, dtype, False)
    dummy = jnp.zeros((1, *hw, 3))
    params = jax.eval_shape(lambda: eval_student.init(jax.random.key(0), dummy))["params"]
    tx = optim.make_optimizer(params, c.student.learning_rate, c.student.num_train_steps)
    rep = parallel.replicated(mesh)
    state = steps.run_once(
        lambda k: steps.create_train_state(eval_student, tx, k, hw),
        jax.random.key(0),
        out_shardings=rep,
    )
    tvars = steps.run_once(lambda k: teacher.init(k, dummy), jax.random.key(1), out_shardings=rep)
    taps = tuple((s, t, w) for s, t, w in c.distill.taps)
    step = steps.make_train_step(
        student,
        tx,
        mesh,
        n,
        [1.0] * n,
        teacher=teacher,
        distill=steps.DistillSettings(weight=c.distill.weight, taps=taps),
    )
    rng = np.random.default_rng(0)
    batch = parallel.to_global(
        {
            "image": rng.normal(size=(batch_size, *hw, 3)).astype(np.float32),
            "label": rng.integers(0, n, size=(batch_size, *hw)).astype(np.int32),
        },
        mesh,
    )
    holder = {"state": state}

    def run_step():
        holder["state"], metrics = step(holder["state"], tvars, batch)
        return metrics

    t_step = _median_seconds(run_step, _STEPS.value)

    svars = {"params": holder["state"].params, "batch_stats": holder["state"].batch_stats}
    s_taps = jax.eval_shape(lambda: eval_student.apply(svars, dummy))[1]
    t_taps = jax.eval_shape(lambda: teacher.apply(tvars, dummy))[1]
    s_feats = {
        k: jnp.asarray(rng.normal(size=(batch_size, *v.shape[1:])), jnp.float32)
        for k, v in s_taps.items()
    }
    t_feats = {
        k: jnp.asarray(rng.normal(size=(batch_size, *v.shape[1:])), jnp.float32)
        for k, v in t_taps.items()
    }
    labels = batch["label"]
    loss_grad = jax.jit(
        jax.value_and_grad(lambda s: multi_tap_intra_kd_loss(s, t_feats, labels, n, taps))
    )
    t_loss = _median_seconds(lambda: loss_grad(s_feats), _STEPS.value)
    print(
        f"devices: {mesh.devices.size} x {jax.devices()[0].platform}; input {hw}; batch "
        f"{batch_size}; student {c.student.model} {dict(c.student.model_kwargs)}; teacher "
        f"{c.teacher.model} {dict(c.teacher.model_kwargs)}"
    )
    print(f"distill step: {t_step * 1e3:.1f} ms  ->  {batch_size / t_step:.2f} images/s")
    print(f"IntRA-KD loss+grad: {t_loss * 1e3:.2f} ms  ->  loss share {t_loss / t_step:.3f}")


if __name__ == "__main__":
    app.run(main)
