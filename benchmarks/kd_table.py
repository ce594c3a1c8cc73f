"""Which distillation method? Students x methods x seeds on the synthetic twins, fair starts.

  python benchmarks/kd_table.py                          # the default setting -> RESULTS.md
  python benchmarks/kd_table.py --ablations              # + the IntRA-KD ablations (ERFNet)
  python benchmarks/kd_table.py --datasets=culane,llamas --students=erfnet --methods=baseline,sad
  python benchmarks/kd_table.py --setting=smoke --workdir=/tmp/kd  # seconds (the CI test)

For every dataset twin it trains one teacher (cached under ``<workdir>/teachers/`` by a hash of
its config, so later runs and other students reuse it), then every (student, method, seed) cell:
the baseline student (cross entropy only) or a distilled student (CE + the method's terms). All
cells of a seed start from identical parameters, dropout stream and data order (the stage's
initialisation key depends on the seed and the role only), so a row differs from the baseline in
its loss alone. Each cell is evaluated with the dataset's official metric (CULane F1, LLAMAS pixel
mAP, ApolloScape official mIoU) and mIoU, through the batch evaluation job.

The table reports mean +- std over seeds, and for each method the paired difference to the
baseline student of the same seed (mean +- std of the per-seed differences, with a 95 %
t-interval; "yes" when it excludes zero). Everything is resumable: a cell is done when its
``result.json`` exists; a killed run continues inside the cell it was training (orbax resume) and
then with the missing cells. Results: ``--output`` (markdown) and the same name with ``.json``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intrakd_jax import cpu_allocator  # noqa: E402

# As main.py: training steps run 1.3-2.9x faster on CPU with tcmalloc (apt install
# libtcmalloc-minimal4); the table's timings and its 90-minute budget assume it.
if __name__ == "__main__":
    cpu_allocator.reexec_with_tcmalloc()
    cpu_allocator.keep_freed_memory()  # without tcmalloc: glibc reuses freed pages
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax  # noqa: E402
import kd_plot  # noqa: E402  (benchmarks/kd_plot.py)
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from data_pipelines.util import format_seconds, write_file_atomic  # noqa: E402
from intrakd_jax import building, errors, models, train  # noqa: E402
from intrakd_jax.evaluation import report  # noqa: E402
from intrakd_jax.stage import train_stage  # noqa: E402

# Method -> (label, flattened config overrides). "baseline" is the student stage (CE only); every
# other method is the distill stage with config.distill.terms and the method's options.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("baseline (CE only)", {}),
    "intra_kd": ("IntRA-KD", {"distill.terms": ("intra_kd",)}),
    "kd": ("KD (logits)", {"distill.terms": ("kd",)}),
    "at": ("AT", {"distill.terms": ("at",)}),
    "skd": ("SKD (pixel + pair)", {"distill.terms": ("skd_pixel", "skd_pair")}),
    "sad": ("SAD (no teacher)", {"distill.terms": ("sad",)}),
    "cwd": ("CWD (logits)", {"distill.terms": ("cwd",)}),
}

# IntRA-KD ablations (issue: moments, normaliser, skewness denominator, kernel, tap level, lambda).
_IKD = {"distill.terms": ("intra_kd",)}
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "ikd_mean": (
        "IntRA-KD mean only",
        {**_IKD, "distill.intra_kd.moment_weights": (1.0, 0.0, 0.0)},
    ),
    "ikd_mean_var": (
        "IntRA-KD mean+var",
        {**_IKD, "distill.intra_kd.moment_weights": (1.0, 1.0, 0.0)},
    ),
    "ikd_count": ("IntRA-KD normaliser count", {**_IKD, "distill.intra_kd.normalizer": "count"}),
    "ikd_area": ("IntRA-KD normaliser area", {**_IKD, "distill.intra_kd.normalizer": "area"}),
    "ikd_skew_var": (
        "IntRA-KD skew / var",
        {**_IKD, "distill.intra_kd.skew_denominator": "var"},
    ),
    "ikd_k11": ("IntRA-KD kernel 11", {**_IKD, "distill.intra_kd.kernel_size": 11}),
    "ikd_mid": ("IntRA-KD 1/4 tap", {**_IKD, "distill.intra_kd.taps": (("mid", "mid", 1.0),)}),
    "ikd_both": (
        "IntRA-KD 1/8 + 1/4 taps",
        {**_IKD, "distill.intra_kd.taps": (("high", "high", 1.0), ("mid", "mid", 1.0))},
    ),
    "ikd_floor": ("IntRA-KD skew floor 0.1", {**_IKD, "distill.intra_kd.skew_floor": 0.1}),
    "ikd_minmass": ("IntRA-KD min mass 1", {**_IKD, "distill.intra_kd.min_mass": 1.0}),
    "ikd_guards": (
        "IntRA-KD floor 0.1 + min mass 1",
        {**_IKD, "distill.intra_kd.skew_floor": 0.1, "distill.intra_kd.min_mass": 1.0},
    ),
    "ikd_l1": ("IntRA-KD lambda 1", {**_IKD, "distill.intra_kd.weight": 1.0}),
    "ikd_l100": ("IntRA-KD lambda 100", {**_IKD, "distill.intra_kd.weight": 100.0}),
}
ALL_METHODS = {**METHODS, **ABLATIONS}


@dataclasses.dataclass(frozen=True)
class Setting:
    """A table setting: data, schedule and model sizes per dataset twin.

    Attributes:
      datasets: default dataset twins.
      students: student name -> (registry model, model kwargs, learning rate).
      methods: default student name -> its default methods (the reduced sets for the other
        students); students missing here run only on request, with the reduced set.
      seeds: default seeds.
      variant: the dataset config variant the cells start from.
      overrides: flattened config overrides applied to every cell and teacher.
      teacher_overrides: flattened overrides of the teacher (longer, wider: it must be better).
      student_steps: default student schedule length.
    """

    datasets: tuple[str, ...]
    students: dict[str, tuple[str, dict[str, Any], float]]
    methods: dict[str, tuple[str, ...]]
    seeds: tuple[int, ...]
    variant: str
    overrides: dict[str, Any]
    teacher_overrides: dict[str, Any]
    student_steps: int


_ALL = tuple(METHODS)
_REDUCED = ("baseline", "intra_kd")
SETTINGS: dict[str, Setting] = {
    "default": Setting(
        datasets=("apolloscape",),
        students={
            "erfnet": ("erfnet", {"channels": (16, 32, 64), "stage2_dropout": 0.1}, 0.2),
            "enet": ("enet", {}, 0.2),
            "resnet18": ("resnet18", {"base_width": 16, "head_channels": 64}, 0.05),
            "resnet34": ("resnet34", {"base_width": 16, "head_channels": 64}, 0.05),
        },
        # ResNet-34 only on request (--students=resnet34: 6 more cells, about 20 minutes).
        methods={"erfnet": _ALL, "enet": _REDUCED, "resnet18": _REDUCED},
        seeds=(0, 1, 2),
        variant="synthetic",
        # 80x240 instead of the demo's 96x288: the 33 cells fit about 90 minutes of this CPU.
        overrides={
            "data.image_hw": (80, 240),
            "data.teacher_image_hw": (80, 240),  # the teacher learns on what the students see
            "log_every_steps": 100,
            "checkpoint_every_steps": 250,
        },
        # The teacher must be clearly better than the students, or distillation cannot show
        # anything: twice the demo teacher's width (3.5M parameters) and three times the
        # students' steps; trained once and cached.
        teacher_overrides={
            "teacher.num_train_steps": 1500,
            "teacher.model_kwargs.base_width": 32,
            "teacher.model_kwargs.head_channels": 128,
        },
        student_steps=500,
    ),
    "smoke": Setting(
        datasets=("culane",),
        students={
            "erfnet": (
                "erfnet",
                {"channels": (4, 8, 16), "num_stage1_blocks": 1, "num_stage2_repeats": 1},
                0.05,
            ),
            "resnet18": ("resnet18", {"base_width": 4, "head_channels": 8}, 0.05),
        },
        methods={"erfnet": ("baseline", "intra_kd", "sad"), "resnet18": ("baseline", "intra_kd")},
        seeds=(0, 1),
        variant="smoke",
        overrides={},
        teacher_overrides={},
        student_steps=2,
    ),
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One trained student of the table."""

    dataset: str
    student: str
    method: str
    seed: int

    @property
    def stage(self) -> str:
        """The training stage that trains this cell."""
        return "student" if self.method == "baseline" else "distill"

    def directory(self, workdir: str) -> str:
        """Where the cell's stage, evaluation and ``result.json`` live."""
        return os.path.join(
            workdir, "cells", self.dataset, self.student, self.method, f"seed{self.seed}"
        )


def plan(
    setting: Setting,
    datasets: Sequence[str],
    students: Sequence[str],
    methods: Sequence[str] | None,
    seeds: Sequence[int],
    ablations: bool,
) -> list[Cell]:
    """Every cell to run, seeds innermost so each row's seeds finish together.

    Raises:
      ValueError: an unknown student or method (the message lists the known ones).
    """
    for s in students:
        if s not in setting.students:
            raise ValueError(
                f"--students: unknown {s!r}; this setting has {list(setting.students)}"
            )
    for m in methods or ():
        if m not in ALL_METHODS:
            raise ValueError(f"--methods: unknown {m!r}; known: {list(ALL_METHODS)}")
    cells = []
    for dataset in datasets:
        for student in students:
            chosen = list(methods or setting.methods.get(student, _REDUCED))
            if ablations and student == "erfnet":
                chosen += [m for m in ABLATIONS if m not in chosen]
            for method in chosen:
                cells += [Cell(dataset, student, method, seed) for seed in seeds]
    return cells


def _base_config(
    setting: Setting, dataset: str, data_root: str | None
) -> ml_collections.ConfigDict:
    config = importlib.import_module(f"configs.{dataset}").get_config(setting.variant)
    if data_root:
        config.data.data_dir = os.path.join(data_root, dataset)
    config.update_from_flattened_dict(dict(setting.overrides))
    config.update_from_flattened_dict(dict(setting.teacher_overrides))
    config.eval.num_overlays = 0
    config.eval.write_predictions = False  # the official metrics need no files
    return config


def config_hash(config: ml_collections.ConfigDict, fields: Sequence[str]) -> str:
    """A short hash of the config fields that determine a trained model.

    Unset fields (None), model arguments at the model's default and the runtime-only model
    arguments (``building.RUNTIME_KWARGS``) are left out, so adding a config field or model
    option later, or switching the convolution implementation, does not invalidate the cache.
    """
    parts = {f: config[f].to_dict() if hasattr(config[f], "to_dict") else config[f] for f in fields}
    parts = _without_unset(building.jsonish(parts))
    for section in ("teacher", "student"):
        model = parts.get(section, {})
        kwargs = model.get("model_kwargs")
        # How a model computes (convolution implementation, remat) does not change what it
        # learns: a teacher trained with conv_impl=fast serves runs with onednn.
        for group in [kwargs, *(kwargs or {}).values()]:
            if isinstance(group, dict):
                for key in building.RUNTIME_KWARGS & set(group):
                    del group[key]
        if isinstance(kwargs, dict) and model.get("model") in models.list_models():
            defaults = models.model_defaults(model["model"])
            defaults = building.jsonish({k: v for k, v in defaults.items() if k in kwargs})
            for key in [k for k, v in kwargs.items() if defaults.get(k, object()) == v]:
                del kwargs[key]
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _without_unset(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _without_unset(v) for k, v in tree.items() if v is not None}
    return tree


# A teacher's directory is named by the hash of its fields; a cell's directory by its name, so
# the cell records the hash of its whole config (``_claim``).
TEACHER_FIELDS = ("teacher", "data", "optim", "batch_size", "seed")
CELL_FIELDS = ("teacher", "student", "distill", "data", "optim", "batch_size", "seed")


def teacher_dir(workdir: str, dataset: str, config: ml_collections.ConfigDict) -> str:
    """The cached teacher's workdir: one per dataset and teacher config."""
    return os.path.join(workdir, "teachers", f"{dataset}-{config_hash(config, TEACHER_FIELDS)}")


def cell_config(
    setting: Setting, cell: Cell, base: ml_collections.ConfigDict, teacher_path: str, steps: int
) -> ml_collections.ConfigDict:
    """The config of one cell: the student, the method's terms, the seed and the teacher."""
    config = ml_collections.ConfigDict(base.to_dict())
    model, kwargs, lr = setting.students[cell.student]
    config.student.model = model
    config.student.model_kwargs[model].update(dict(kwargs))
    config.student.learning_rate = lr
    config.student.num_train_steps = steps
    config.update_from_flattened_dict(dict(ALL_METHODS[cell.method][1]))
    config.seed = cell.seed
    config.teacher.checkpoint = os.path.join(teacher_path, "teacher")
    return config


def _official(dataset: str, metrics: dict) -> float:
    """The dataset's headline official metric from the evaluation job's metrics."""
    if dataset == "culane":
        # No true positive makes precision and recall 0/0 (the official tool prints nan): F1 0.
        f1 = float(metrics["culane_f1"]["f1"])
        return 0.0 if math.isnan(f1) else f1
    if dataset == "llamas":
        return float(metrics["map"])
    return float(metrics["official"]["miou"])


OFFICIAL_NAMES = {"culane": "CULane F1", "llamas": "pixel mAP", "apolloscape": "official mIoU"}


def evaluate_stage(config: ml_collections.ConfigDict, run_dir: str, stage: str) -> dict:
    """The batch evaluation job on a finished stage; returns its metrics."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.mode = "evaluate"
    config.checkpoint = os.path.join(run_dir, stage)
    (metrics,) = train.evaluate_checkpoint(config, os.path.join(run_dir, "eval")).values()
    return metrics


def run_cell(cell: Cell, config: ml_collections.ConfigDict, workdir: str, dataset_obj) -> dict:
    """Trains and evaluates one cell (resuming), caches and returns its result."""
    cell_dir = cell.directory(workdir)
    _claim(cell_dir, config_hash(config, CELL_FIELDS))
    done = os.path.join(cell_dir, "result.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    stage_metrics = train_stage(config, cell_dir, cell.stage, dataset_obj)
    metrics = evaluate_stage(config, cell_dir, cell.stage)
    result = {
        **dataclasses.asdict(cell),
        "miou": float(metrics["miou"]),
        "official": _official(cell.dataset, metrics),
        "params": int(stage_metrics["params"]),
        "train_seconds": float(stage_metrics["train_seconds"]),
    }
    report.write_json(done, result)
    return result


def _claim(directory: str, digest: str) -> None:
    """Marks ``directory`` as holding the run of config ``digest``; refuses another config's run.

    Without it a changed setting (steps, image size, teacher) would silently reuse results
    trained under the old one.
    """
    path = os.path.join(directory, "config_hash")
    if os.path.exists(path):
        with open(path) as f:
            found = f.read().strip()
        if found != digest:
            raise errors.ConfigError(
                f"{directory} holds a run of another config (hash {found}, this one is {digest}); "
                "pass a new --workdir or delete that directory"
            )
        return
    os.makedirs(directory, exist_ok=True)
    write_file_atomic(path, (digest + "\n").encode())


def train_teacher(base: ml_collections.ConfigDict, tdir: str, dataset_obj) -> dict:
    """Trains (or reuses) the dataset's teacher and evaluates it like a cell."""
    done = os.path.join(tdir, "result.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    stage_metrics = train_stage(base, tdir, "teacher", dataset_obj)
    metrics = evaluate_stage(base, tdir, "teacher")
    name = base.data.name
    result = {
        "dataset": name,
        "model": base.teacher.model,
        "model_kwargs": building.jsonish(dict(base.teacher.model_kwargs)),
        "num_train_steps": int(base.teacher.num_train_steps),
        "miou": float(metrics["miou"]),
        "official": _official(name, metrics),
        "params": int(stage_metrics["params"]),
        "train_seconds": float(stage_metrics["train_seconds"]),
    }
    report.write_json(done, result)
    return result


# Two-sided 95 % Student t quantiles by degrees of freedom (scipy.stats.t.ppf(0.975, df)).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired_difference(method: Sequence[float], baseline: Sequence[float]) -> dict:
    """Per-seed differences ``method - baseline``: mean, std and a 95 % t-interval.

    Returns:
      ``mean``, ``std`` (ddof 1; 0 for one seed), ``ci`` (half width; inf for one seed) and
      ``significant`` (the interval excludes zero).
    """
    d = np.asarray(method, np.float64) - np.asarray(baseline, np.float64)
    n = d.size
    std = float(d.std(ddof=1)) if n > 1 else 0.0
    ci = _T975.get(n - 1, 1.96) * std / math.sqrt(n) if n > 1 else math.inf
    mean = float(d.mean())
    return {"mean": mean, "std": std, "ci": ci, "significant": bool(abs(mean) > ci)}


def _mean_std(values: Sequence[float]) -> str:
    v = np.asarray(values, np.float64)
    std = v.std(ddof=1) if v.size > 1 else 0.0
    return f"{v.mean():.3f} ± {std:.3f}"


def _delta(d: dict) -> str:
    sign = "+" if d["mean"] >= 0 else "−"
    ci = "n/a" if math.isinf(d["ci"]) else f"{d['ci']:.3f}"
    text = f"{sign}{abs(d['mean']):.3f} ± {d['std']:.3f} (CI ±{ci})"
    return text + (" **yes**" if d["significant"] else "")


def summarize(results: list[dict], teachers: dict[str, dict]) -> tuple[str, dict]:
    """The markdown tables and their JSON: one table per (dataset, student).

    Rows are methods in table order; each has mIoU and the official metric (mean +- std over
    seeds), the paired difference to the baseline of the same seeds, the number of seeds on which
    the method beats the baseline, parameters and mean training time per cell.
    """
    md, js = [], {}
    by_key: dict[tuple[str, str], dict[str, dict[int, dict]]] = {}
    for r in results:
        by_key.setdefault((r["dataset"], r["student"]), {}).setdefault(r["method"], {})[
            r["seed"]
        ] = r
    for (dataset, student), rows in by_key.items():
        off = OFFICIAL_NAMES[dataset]
        t = teachers[dataset]
        md.append(
            f"### {dataset} twin, student {student}\n\nTeacher {t['model']} "
            f"({t['params'] / 1e6:.2f}M params, {t['num_train_steps']} steps): mIoU "
            f"{t['miou']:.3f}, {off} {t['official']:.3f}.\n"
        )
        base = rows.get("baseline", {})
        table_rows, entry = [], {}
        for method, seeds in rows.items():
            common = sorted(set(seeds) & set(base))
            runs = [seeds[s] for s in sorted(seeds)]
            row = {
                "method": ALL_METHODS[method][0],
                "seeds": len(runs),
                "mIoU": _mean_std([r["miou"] for r in runs]),
                off: _mean_std([r["official"] for r in runs]),
            }
            e = {"seeds": {s: seeds[s] for s in sorted(seeds)}}
            if method != "baseline" and common:
                for key, name in (("miou", "mIoU"), ("official", off)):
                    d = paired_difference(
                        [seeds[s][key] for s in common], [base[s][key] for s in common]
                    )
                    e[f"delta_{key}"] = d
                    row[f"Δ {name} vs baseline"] = _delta(d)
                wins = sum(seeds[s]["official"] > base[s]["official"] for s in common)
                row["seeds better"] = f"{wins}/{len(common)}"
            ikd = rows.get("intra_kd", {})
            shared = sorted(set(seeds) & set(ikd))
            if method not in ("baseline", "intra_kd") and shared:
                # IntRA-KD against this method, same seeds: the paper's claim is that it wins.
                d = paired_difference(
                    [ikd[s]["official"] for s in shared], [seeds[s]["official"] for s in shared]
                )
                e["intra_kd_minus_this_official"] = d
                row[f"IntRA-KD − this, {off}"] = _delta(d)
            row["params (M)"] = f"{runs[0]['params'] / 1e6:.3f}"
            row["train s/cell"] = f"{np.mean([r['train_seconds'] for r in runs]):.0f}"
            table_rows.append(row)
            entry[method] = e
        deltas = [f"Δ {n} vs baseline" for n in ("mIoU", off)]
        columns = ["method", "seeds", "mIoU", off, *deltas, "seeds better"]
        if any(f"IntRA-KD − this, {off}" in r for r in table_rows):
            columns.append(f"IntRA-KD − this, {off}")
        columns.append("params (M)")
        columns.append("train s/cell")
        for r in table_rows:
            for c in columns:
                r.setdefault(c, "")
        md.append(report.markdown_table(table_rows, columns))
        js[f"{dataset}/{student}"] = {"teacher": t, "methods": entry}
    return "\n\n".join(md) + "\n", js


def write_results(output: str, header: str, tables: str, payload: dict) -> None:
    """Writes the markdown report, its JSON twin and its picture (``.json``, ``.png`` beside it)."""
    stem = os.path.splitext(output)[0]
    payload = {
        **payload,
        "labels": {k: v[0] for k, v in ALL_METHODS.items()},
        "official_names": OFFICIAL_NAMES,
    }
    picture = f"\n![every seed of every method]({os.path.basename(stem)}.png)\n"
    write_file_atomic(output, (header + picture + "\n" + tables).encode("utf-8"))
    report.write_json(stem + ".json", payload)
    kd_plot.write(stem + ".png", payload)


_SETTING = flags.DEFINE_enum("setting", "default", list(SETTINGS), "Sizes and default selection.")
_DATASETS = flags.DEFINE_list("datasets", None, "Dataset twins (default: the setting's).")
_STUDENTS = flags.DEFINE_list("students", None, "Students (default: the setting's default set).")
_METHODS = flags.DEFINE_list("methods", None, "Methods for every student (default: per student).")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds (default: the setting's).")
_STEPS = flags.DEFINE_integer("student_steps", None, "Student schedule length.")
_TEACHER_STEPS = flags.DEFINE_integer("teacher_steps", None, "Teacher schedule length.")
_ABLATIONS = flags.DEFINE_bool("ablations", False, "Add the IntRA-KD ablations (ERFNet rows).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/kd_table", "Teachers, cells and evaluations.")
_DATA_ROOT = flags.DEFINE_string(
    "data_root", None, "Where the twins are generated (default: the configs' data/synthetic/)."
)
_OUTPUT = flags.DEFINE_string("output", "RESULTS.md", "Markdown report (.json written beside).")


def run_table(
    setting: Setting,
    cells: list[Cell],
    workdir: str,
    student_steps: int,
    teacher_steps: int | None = None,
    data_root: str | None = None,
) -> tuple[list[dict], dict[str, dict]]:
    """Trains the teachers and every cell (resuming), with progress and ETA per cell.

    Returns:
      The cell results and the teacher result per dataset.
    """
    teachers, results = {}, []
    t0, done_time, fresh = time.time(), 0.0, 0
    for dataset in dict.fromkeys(c.dataset for c in cells):
        base = _base_config(setting, dataset, data_root)
        if teacher_steps:
            base.teacher.num_train_steps = teacher_steps
        dataset_obj = building.prepared_dataset(base.data)
        tdir = teacher_dir(workdir, dataset, base)
        logging.info("[kd_table] %s teacher in %s", dataset, tdir)
        teachers[dataset] = train_teacher(base, tdir, dataset_obj)
        todo = [c for c in cells if c.dataset == dataset]
        for cell in todo:
            start = time.time()
            cached = os.path.exists(os.path.join(cell.directory(workdir), "result.json"))
            config = cell_config(setting, cell, base, tdir, student_steps)
            results.append(run_cell(cell, config, workdir, dataset_obj))
            if not cached:
                done_time += time.time() - start
                fresh += 1
            left = sum(
                not os.path.exists(os.path.join(c.directory(workdir), "result.json")) for c in cells
            )
            eta = left * done_time / max(fresh, 1)
            logging.info(
                "[kd_table] %d/%d cells (%s %s %s seed %d: mIoU %.3f), elapsed %s, ETA %s",
                len(results),
                len(cells),
                cell.dataset,
                cell.student,
                cell.method,
                cell.seed,
                results[-1]["miou"],
                format_seconds(time.time() - t0),
                format_seconds(eta) if fresh else "n/a",
            )
    return results, teachers


def main(argv: Sequence[str]) -> None:
    """Plans, runs (resuming) and reports the table."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setting = SETTINGS[_SETTING.value]
    datasets = _DATASETS.value or list(setting.datasets)
    students = _STUDENTS.value or list(setting.methods)
    seeds = [int(s) for s in (_SEEDS.value or setting.seeds)]
    steps = _STEPS.value or setting.student_steps
    cells = plan(setting, datasets, students, _METHODS.value, seeds, _ABLATIONS.value)
    logging.info("[kd_table] %d cells over %s", len(cells), datasets)
    train.quiet_library_logs()
    # The cells of a method differ only in their seed, i.e. in values, not programs: a persistent
    # compilation cache compiles each method's step once for all seeds (and later runs).
    jax.config.update("jax_compilation_cache_dir", os.path.join(_WORKDIR.value, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    t0 = time.time()
    results, teachers = run_table(
        setting, cells, _WORKDIR.value, steps, _TEACHER_STEPS.value, _DATA_ROOT.value
    )
    tables, payload = summarize(results, teachers)
    trained = sum(r["train_seconds"] for r in [*results, *teachers.values()])
    command = "python benchmarks/kd_table.py " + " ".join(argv_flags())
    header = (
        f"# Which distillation method? (synthetic twins, fair starts)\n\n"
        f"Command: `{command}`  \n"
        f"Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, "
        f"{os.cpu_count()} CPU cores; wall time of this invocation "
        f"{format_seconds(time.time() - t0)} (cells already done are reused); training "
        f"time of the teachers and all cells {format_seconds(trained)}.\n\n"
        f"Setting `{_SETTING.value}`: students trained {steps} steps; mean ± std over seeds "
        f"{seeds}; Δ = per-seed paired difference to the baseline student (same initial "
        f"weights and data order), ± its std, with the 95 % t-interval half width; **yes** when "
        f"the interval excludes zero. `IntRA-KD − this`: the same paired difference between "
        f"IntRA-KD and that method.\n"
    )
    write_results(
        _OUTPUT.value, header, tables, {"setting": _SETTING.value, "results": results, **payload}
    )
    print(header + "\n" + tables)


def argv_flags() -> list[str]:
    """The flags given on the command line (for the report's header)."""
    return [a for a in sys.argv[1:] if a.startswith("--")]


if __name__ == "__main__":
    app.run(main)
