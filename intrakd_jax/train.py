"""Training stages, evaluation and the teacher -> student -> distilled-student pipeline.

``train_and_evaluate(config, workdir)`` is the one entry point; ``main.py``, notebooks and tests all
call it. ``config.mode`` picks what runs:

  teacher   train the teacher alone (cross entropy)            -> <workdir>/teacher/
  student   train the student alone: the baseline              -> <workdir>/student/
  distill   student + frozen teacher: CE + lambda * IntRA-KD   -> <workdir>/distill/
  evaluate  evaluate config.checkpoint on config.eval.split    -> <workdir>/evaluate/
            (stage checkpoints, or PyTorch/safetensors files with config.checkpoint_arch)
  pipeline  teacher, student, distill, then a comparison table -> <workdir>/comparison.{md,json}
  check_data  check every file of the dataset; exit 1 if any problem -> <workdir>/data_check.*
  predict   config.checkpoint on config.predict.input (images/video) -> <workdir>/predict/
  export    config.checkpoint as jax.export / SavedModel / TFLite -> <workdir>/export/
  explain   AOI maps and affinity graphs, teacher vs config.checkpoint -> <workdir>/explain/

Every training stage resumes automatically from its newest checkpoint; a finished stage is not
trained again. The data position is the step: the input pipeline is a pure function of
(seed, step), so a resumed run sees the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import logging as logging_std
import os
import tempfile
from collections.abc import Iterator

import ml_collections
import numpy as np
from absl import logging

import data_pipelines
from data_pipelines import check
from data_pipelines.util import write_file_atomic
from intrakd_jax import batch_eval, building, checkpointing, explain, export, parallel, predict
from intrakd_jax.errors import ConfigError, StorageError
from intrakd_jax.evaluation import report, visualize
from intrakd_jax.stage import STAGES, example_rows, train_stage

MODES = (*STAGES, "evaluate", "pipeline", "check_data", "predict", "export", "explain")

# Problems with the user's input (config, data, checkpoints): reported as one clear message.
USER_ERRORS = (ConfigError, checkpointing.CheckpointError, data_pipelines.DataError, StorageError)


class _QuietLibraries(logging_std.Filter):
    """Drops INFO chatter of orbax (dozens of lines per save) and clu notes; warnings pass."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        noisy = any(
            p in record.pathname for p in ("/orbax/", "/tensorstore/", "/etils/", "/clu/platform/")
        )
        return record.levelno >= logging_std.WARNING or not noisy


def quiet_library_logs() -> None:
    """Installs the filter on absl's handler once, so progress lines stay readable."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())


# ----------------------------------------------------------------------------------------------
# Evaluation job and pipeline
# ----------------------------------------------------------------------------------------------


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The batch evaluation job over one or several checkpoints (see ``intrakd_jax.batch_eval``).

    Returns:
      ``{run name: metrics}``, one entry per checkpoint of ``config.checkpoint``.
    """
    try:
        paths = batch_eval.checkpoint_paths(config.checkpoint)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    dataset = building.prepared_dataset(config.data)
    info = dataset.info
    split = config.eval.split or config.data.eval_split
    mesh = parallel.make_data_mesh(config.num_devices)
    results = {}
    for path in paths:
        model, variables, step, meta = building.load_eval_checkpoint(config, path, info, mesh)
        name = batch_eval.run_name(path, step)
        if name in results:  # the same stage of two workdirs
            name = f"{name}_{len(results)}"
        out_dir = os.path.join(workdir, batch_eval.EVAL_DIR, name, split)
        metrics = batch_eval.evaluate_one(config, dataset, split, model, variables, mesh, out_dir)
        metrics.update(checkpoint=os.path.abspath(path), step=step, model=meta["model"])
        results[name] = metrics
        if parallel.is_lead_process():
            with open(os.path.join(out_dir, "report.md")) as f:
                print(f"\n{name} on {info.name} {split} ({out_dir}):\n\n{f.read()}")
    if len(results) > 1 and parallel.is_lead_process():
        table = batch_eval.summary_table(results)
        report.write_report(
            os.path.join(workdir, batch_eval.EVAL_DIR),
            f"summary_{split}",
            results,
            {"summary": table},
        )
        print(f"\n{table}")
    return results


def comparison_table(results: dict[str, dict], class_names) -> str:
    """The teacher / baseline / distilled comparison as a markdown table."""
    labels = {
        "teacher": "teacher",
        "student": "student (baseline)",
        "distill": "student + IntRA-KD",
    }
    rows = []
    for stage, m in results.items():
        row = {
            "run": labels.get(stage, stage),
            "model": m.get("model", ""),
            "params (M)": m["params"] / 1e6,
            "mIoU": m["miou"],
        }
        if "map" in m:
            row["lane mAP"] = m["map"]
        # Per-class columns only while the table stays readable (ApolloScape has 37 classes).
        for name in class_names[1:] if len(class_names) <= 8 else ():
            row[f"IoU {name}"] = m["iou_by_class"][name]
        row["train (s)"] = m.get("train_seconds", float("nan"))
        rows.append(row)
    columns = list(rows[0].keys())
    return report.markdown_table(rows, columns, float_fmt="{:.3f}")


def run_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
    """Teacher -> baseline student -> distilled student, then the comparison table."""
    dataset = building.prepared_dataset(config.data)
    results = {}
    for stage in STAGES:
        results[stage] = train_stage(config, workdir, stage, dataset)
    table = comparison_table(results, dataset.info.class_names)
    if parallel.is_lead_process():
        report.write_report(workdir, "comparison", results, {"comparison": table})
        examples = {s: dict(np.load(os.path.join(workdir, s, "examples.npz"))) for s in STAGES}
        preds = [examples[s]["pred"] for s in STAGES]
        figure = visualize.grid(
            example_rows(examples["teacher"], config.data, dataset.info.num_classes, preds, 4),
            ["input", "ground truth", "teacher", "student (baseline)", "student + IntRA-KD"],
        )
        visualize.save_png(os.path.join(workdir, "comparison.png"), figure)
    print(f"\nIntRA-KD on {dataset.info.name} ({config.data.eval_split} split):\n\n{table}\n")
    return results


def check_data(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """mode=check_data: lists every problem of the dataset's files (see data_pipelines.check).

    Prints the report and writes ``<workdir>/data_check.{txt,json}``.

    Raises:
      data_pipelines.DataError: the check found problems (main.py then exits with status 1).
    """
    result = check.check_dataset(data_pipelines.get_dataset(config.data))
    text = result.format()
    print(text)
    out = os.path.join(workdir, "data_check.txt")
    if parallel.is_lead_process():
        with open(out, "w") as f:
            f.write(text + "\n")
        report.write_json(os.path.join(workdir, "data_check.json"), result.to_json())
    if not result.ok:
        raise data_pipelines.DataError(
            f"data check found {result.num_problems} problem(s) in {result.dataset}; "
            f"the list is above and in {out}"
        )
    return result.to_json()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs what ``config.mode`` asks for in ``workdir`` and returns its metrics."""
    if config.mode not in MODES:
        raise ConfigError(f"config.mode={config.mode!r}; expected one of {MODES}")
    quiet_library_logs()
    building.check_config(config)  # a bad config stops before anything lands in the workdir
    with _storage_errors():
        _check_workdir(workdir)
        if parallel.is_lead_process():
            write_file_atomic(
                os.path.join(workdir, f"config_{config.mode}.json"),
                config.to_json_best_effort(indent=2).encode("utf-8"),
            )
        return _run_mode(config, workdir)


def _check_workdir(workdir: str) -> None:
    """Creates ``workdir`` and writes a probe file there.

    Raises:
      StorageError: it cannot be created or written (a file in the way, read-only, no permission).
    """
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as e:
        raise StorageError(
            f"--workdir={workdir} is not writable: {e.strerror or e} "
            f"({e.filename or workdir}); choose a writable place"
        ) from None


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    """A write the storage refuses (full disk, read-only) becomes a StorageError naming the file."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        if e.errno not in checkpointing.STORAGE_ERRNOS:
            raise
        raise StorageError(
            f"could not write {e.filename or 'a file'}: {e.strerror}. Completed stages and "
            "checkpoints are kept; free space (df -h) or fix the permissions, then run the same "
            "command again to resume"
        ) from e


def _run_mode(config: ml_collections.ConfigDict, workdir: str) -> dict:
    if config.mode == "check_data":
        return check_data(config, workdir)
    if config.mode == "pipeline":
        return run_pipeline(config, workdir)
    if config.mode == "evaluate":
        return evaluate_checkpoint(config, workdir)
    if config.mode == "predict":
        return predict.predict(config, workdir)
    if config.mode == "export":
        return export.export_checkpoint(config, workdir)
    if config.mode == "explain":
        return explain.explain(config, workdir)
    return train_stage(config, workdir, config.mode)
