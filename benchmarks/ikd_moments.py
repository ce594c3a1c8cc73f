"""What each IntRA-KD moment graph asks of a student: loss, gradient and node statistics.

  python benchmarks/ikd_moments.py --config=configs/culane.py:synthetic \
      --teacher=runs/kd_table/teachers/<...>/teacher --student=<cell dir>/student [--batches=4]

For validation batches of the config's dataset, runs the frozen teacher and the student
checkpoint, then per moment graph (mean, variance, skewness) of the configured tap pair reports:
the loss term L_m and the norm of its gradient with respect to the student's parameters, times
lambda and relative to the cross entropy's (what the term pushes on the student against what the
labels push), and node statistics of both networks: the soft mass of the present classes' AOI at
the tap's resolution, the share of (node, channel) pairs whose variance is below 1e-4 (where the
standardised skewness divides by almost nothing) and the largest and median |skewness|. Used to
find why the higher-moment graphs hurt on the CULane twin (README, "Which distillation method?").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from intrakd_jax import building, checkpointing, parallel, stage  # noqa: E402
from intrakd_jax.evaluation import report  # noqa: E402
from intrakd_jax.losses import terms  # noqa: E402
from intrakd_jax.losses.intra_kd import aoi_maps, intra_kd_loss, moment_pool  # noqa: E402
from intrakd_jax.losses.segmentation import weighted_cross_entropy  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Dataset config (e.g. :synthetic).")
_TEACHER = flags.DEFINE_string("teacher", None, "Teacher checkpoint (stage dir or step dir).")
_STUDENT = flags.DEFINE_string(
    "student", None, "Student checkpoint (stage dir or step dir), or 'init': its initialisation."
)
_BATCHES = flags.DEFINE_integer("batches", 4, "Validation batches to average over.")
flags.mark_flags_as_required(["config", "teacher", "student"])

MOMENTS = ("mean", "variance", "skewness")


def _load(config, path: str, role: str, info, mesh):
    """A checkpoint's model (architecture from its metadata) and variables."""
    _, _, meta = checkpointing.read_meta(path)
    model = building.build_model(
        meta["model"], meta["model_kwargs"], info.num_classes, jnp.float32, False, role
    )
    abstract = building.abstract_variables(model, info.image_hw, mesh)
    variables, _ = checkpointing.load_variables(path, abstract, role)
    return model, variables


def _pool_options(term: terms.IntraKD) -> dict:
    """The term's moment-pooling options."""
    return dict(
        normalizer=term.normalizer,
        skew_denominator=term.skew_denominator,
        min_mass=term.min_mass,
        skew_floor=term.skew_floor,
    )


def gradient_report(term: terms.IntraKD, student, s_vars, images, t_taps, labels, n) -> dict:
    """Per moment: L_m and the norm of its gradient w.r.t. the student's parameters, beside CE's."""
    kwargs = dict(kernel_size=term.kernel_size, **_pool_options(term))

    def objective(params, alphas):
        logits, taps = student.apply({**s_vars, "params": params}, images, train=False)
        if alphas is None:
            return weighted_cross_entropy(logits, labels, jnp.ones(n), ignore_label=255)
        return sum(
            w * intra_kd_loss(taps[s], t_taps[t], labels, n, moment_weights=alphas, **kwargs)
            for s, t, w in term.taps
        )

    def norm(tree) -> float:
        return float(jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(tree))))

    out = {"ce_grad_norm": norm(jax.grad(objective)(s_vars["params"], None))}
    for m, name in enumerate(MOMENTS):
        alphas = tuple(float(k == m) for k in range(3))
        value, grad = jax.value_and_grad(objective)(s_vars["params"], alphas)
        out[f"{name}_loss"] = float(value)
        out[f"{name}_grad_norm"] = norm(grad)
    return out


def node_report(term: terms.IntraKD, feats_bhwc, labels, n: int, role: str) -> dict:
    """AOI mass and moment statistics of the present classes' nodes at one tap."""
    aoi = aoi_maps(labels, n, feats_bhwc.shape[1:3], term.kernel_size)
    mass_bn = np.asarray(jnp.sum(aoi, axis=(1, 2)))
    mean, var, skew = (np.asarray(x) for x in moment_pool(feats_bhwc, aoi, **_pool_options(term)))
    present = mass_bn > 0
    return {
        f"{role} smallest node mass": float(mass_bn[present].min()),
        f"{role} median node mass": float(np.median(mass_bn[present])),
        f"{role} share of (node, channel) with var < 1e-4": float((var[present] < 1e-4).mean()),
        f"{role} largest |skewness|": float(np.abs(skew[present]).max()),
        f"{role} median |skewness|": float(np.median(np.abs(skew[present]))),
    }


def main(argv) -> None:
    """Averages ``moment_report`` over validation batches and prints a table."""
    del argv
    config = _CONFIG.value
    dataset = building.prepared_dataset(config.data)
    info = dataset.info
    mesh = parallel.make_data_mesh(1)
    teacher, t_vars = _load(config, _TEACHER.value, "teacher", info, mesh)
    if _STUDENT.value == "init":
        # The student every stage of config.seed starts from (stage.init_key).
        student = building.build_model(
            config.student.model,
            building.model_kwargs(config.student),
            info.num_classes,
            jnp.float32,
            False,
        )
        s_vars = student.init(
            jax.random.split(stage.init_key(config.seed, "student"))[0],
            jnp.zeros((1, *info.image_hw, 3)),
        )
    else:
        student, s_vars = _load(config, _STUDENT.value, "student", info, mesh)
    spec = terms.distill_spec_from_config(
        config.distill, config.student.num_train_steps, student, teacher
    )
    (term,) = (t for t in spec.terms if isinstance(t, terms.IntraKD))
    rows = []
    batches = dataset.eval_batches(config.data.eval_split, config.eval_batch_size)
    for _, batch in zip(range(_BATCHES.value), batches, strict=False):
        images, labels = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
        _, s_taps = student.apply(s_vars, images, train=False)
        _, t_taps = teacher.apply(t_vars, images, train=False)
        n = info.num_classes
        row = gradient_report(term, student, s_vars, images, t_taps, labels, n)
        s_tap, t_tap, _ = term.taps[0]
        row.update(node_report(term, s_taps[s_tap], labels, n, "student"))
        row.update(node_report(term, t_taps[t_tap], labels, n, "teacher"))
        rows.append(row)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    table = [
        {
            "moment": name,
            "L_m": mean[f"{name}_loss"],
            "|dL_m/dtheta|": mean[f"{name}_grad_norm"],
            "lambda |dL_m/dtheta| / |dCE/dtheta|": term.weight
            * mean[f"{name}_grad_norm"]
            / max(mean["ce_grad_norm"], 1e-12),
        }
        for name in MOMENTS
    ]
    print(report.markdown_table(table, list(table[0]), float_fmt="{:.4g}"))
    nodes = [
        {"statistic": k, "value": v}
        for k, v in mean.items()
        if k.startswith(("student ", "teacher "))
    ]
    print()
    print(report.markdown_table(nodes, ["statistic", "value"], float_fmt="{:.4g}"))


if __name__ == "__main__":
    app.run(main)
