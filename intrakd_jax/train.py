"""Training stages, evaluation and the teacher -> student -> distilled-student pipeline.

``train_and_evaluate(config, workdir)`` is the one entry point; ``main.py``, notebooks and tests all
call it. ``config.mode`` picks what runs:

  teacher   train the teacher alone (cross entropy)            -> <workdir>/teacher/
  student   train the student alone: the baseline              -> <workdir>/student/
  distill   student + frozen teacher: CE + lambda * IntRA-KD   -> <workdir>/distill/
  evaluate  evaluate config.checkpoint on config.eval.split    -> <workdir>/evaluate/
  pipeline  teacher, student, distill, then a comparison table -> <workdir>/comparison.{md,json}
  check_data  check every file of the dataset; exit 1 if any problem -> <workdir>/data_check.*

Every training stage resumes automatically from its newest checkpoint; a finished stage is not
trained again. The data position is the step: the input pipeline is a pure function of
(seed, step), so a resumed run sees the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import logging as logging_std
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

import data_pipelines
from data_pipelines.pipeline import ProgressLogger, format_seconds
from intrakd_jax import batch_eval, checkpointing, models, optim, parallel, steps
from intrakd_jax.evaluation import report, visualize
from intrakd_jax.evaluation.llamas import PixelAPAccumulator

STAGES = ("teacher", "student", "distill")
MODES = (*STAGES, "evaluate", "pipeline", "check_data")


class ConfigError(ValueError):
    """The configuration asks for something that cannot work; the message names the field."""


# Problems with the user's input (config, data, checkpoints): reported as one clear message.
USER_ERRORS = (ConfigError, checkpointing.CheckpointError, data_pipelines.DataError)


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


def _dtype(config: ml_collections.ConfigDict):
    names = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if config.dtype not in names:
        raise ConfigError(f"config.dtype={config.dtype!r}; expected one of {sorted(names)}")
    return names[config.dtype]


def build_model(
    name: str,
    model_kwargs: dict,
    num_classes: int,
    dtype: Any,
    train: bool,
    field: str = "model",
):
    """Builds a registry model; ``train`` selects BatchNorm synced over the data axis.

    Raises:
      ConfigError: unknown model or arguments; the message names the config ``field``.
    """
    try:
        return models.get_model(
            name,
            num_classes=num_classes,
            dtype=dtype,
            bn_axis_name=parallel.DATA_AXIS if train else None,
            **{k: _tuplify(v) for k, v in dict(model_kwargs).items()},
        )
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{field}={name!r} with {dict(model_kwargs)}: {e}") from None


def _tuplify(value: Any) -> Any:
    """JSON metadata and CLI overrides give lists where module fields expect tuples."""
    return tuple(_tuplify(v) for v in value) if isinstance(value, list | tuple) else value


def _stage_model_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
    return config.teacher if stage == "teacher" else config.student


def _abstract_variables(model, image_hw, mesh) -> dict:
    """ShapeDtypeStructs (with replicated sharding) of a model's params and batch_stats."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_hw, 3)), train=False)
    )
    rep = parallel.replicated(mesh)
    return {
        k: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), v)
        for k, v in shapes.items()
        if k in ("params", "batch_stats")
    }


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def evaluate_variables(
    model,
    variables: Any,
    dataset,
    split: str,
    mesh,
    batch_size: int,
    max_batches: int | None = None,
    desc: str = "eval",
) -> dict:
    """Runs a model over a whole split (padded last batch masked) and computes its metrics.

    Returns:
      A dict with ``miou``, per-class ``iou``, ``pixel_accuracy``, and on LLAMAS the official
      per-class pixel AP (``ap``, ``map`` over lane classes, ``map_all``).
    """
    info = dataset.info
    eval_step = steps.make_eval_step(model, mesh, info.num_classes, info.ignore_label)
    conf = np.zeros((info.num_classes, info.num_classes), np.int64)
    ap = PixelAPAccumulator(info.num_classes, info.class_names) if info.name == "llamas" else None
    total = batch_eval.num_eval_batches(dataset.num_examples(split), batch_size, max_batches)
    progress = ProgressLogger(f"[{desc}] batches", total, every_s=10.0)
    predictions = batch_eval.predict_split(
        eval_step, variables, dataset, split, mesh, batch_size, total
    )
    for batch_conf, gbatch, probs in predictions:
        conf += batch_conf
        if ap is not None:
            host = parallel.to_host(
                {"probs": probs, "label": gbatch["label"], "mask": gbatch["mask"]}
            )
            ap.update(host["probs"], host["label"], host["mask"])
        progress.update()
    progress.finish()
    metrics = batch_eval.confusion_metrics(conf, info.class_names)
    if ap is not None:
        pixel_ap = ap.result()
        metrics["ap"] = {k: v["auc"] for k, v in pixel_ap["per_class"].items()}
        metrics["map"] = pixel_ap["map"]  # official AP averaged over the lane classes
        metrics["map_all"] = pixel_ap["map_all"]  # ... and with background
        metrics["pixel_ap"] = pixel_ap["per_class"]
    metrics["num_batches"] = total
    return metrics


def predict_examples(model, variables, dataset, split, mesh, batch_size: int) -> dict:
    """Predictions of the first eval batch: display images, labels and argmax class maps."""
    eval_step = steps.make_eval_step(
        model, mesh, dataset.info.num_classes, dataset.info.ignore_label
    )
    batch = next(iter(dataset.eval_batches(split, parallel.local_batch_size(batch_size, mesh))))
    _, probs = eval_step(variables, parallel.to_global(batch, mesh))
    keep = batch["mask"]
    return {
        "image": batch["image"][keep],
        "label": batch["label"][keep],
        "pred": np.asarray(jax.device_get(probs)).argmax(-1)[keep],
    }


def _example_rows(examples: dict, data_config, columns: list[np.ndarray], n: int) -> list:
    num_classes = len(data_config.class_weights)
    rows = []
    for i in range(min(n, len(examples["image"]))):
        img = visualize.denormalize(examples["image"][i], data_config.mean_rgb, data_config.std_rgb)
        row = [img, visualize.colorize(examples["label"][i], num_classes)]
        row += [visualize.overlay(img, preds[i], num_classes) for preds in columns]
        rows.append(row)
    return rows


def _metrics_table(metrics: dict, class_names) -> str:
    rows = []
    for k, name in enumerate(class_names):
        row = {"class": name, "IoU": metrics["iou"][k]}
        if "ap" in metrics:
            row["AP"] = metrics["ap"][name]
        rows.append(row)
    columns = ["class", "IoU"] + (["AP"] if "ap" in metrics else [])
    summary = {"class": "**mean**", "IoU": metrics["miou"]}
    if "ap" in metrics:
        summary["AP"] = metrics["map"]
    return report.markdown_table([*rows, summary], columns)


# ----------------------------------------------------------------------------------------------
# Training stages
# ----------------------------------------------------------------------------------------------


def _load_teacher(config, workdir, dataset, mesh, dtype):
    path = config.teacher.checkpoint or os.path.join(workdir, "teacher")
    what = "teacher checkpoint (config.teacher.checkpoint)"
    try:
        _, _, meta = checkpointing.read_meta(path)
    except checkpointing.CheckpointError as e:
        raise checkpointing.CheckpointError(
            f"{e}\nThe distill stage needs a trained teacher: run --config.mode=teacher with the "
            f"same --workdir first, or set config.teacher.checkpoint."
        ) from None
    want = {"model": config.teacher.model, "model_kwargs": dict(config.teacher.model_kwargs)}
    got = {"model": meta.get("model"), "model_kwargs": meta.get("model_kwargs")}
    if meta.get("model") != want["model"] or _jsonish(got["model_kwargs"]) != _jsonish(
        want["model_kwargs"]
    ):
        raise checkpointing.CheckpointError(
            f"{what} at {path} holds {got['model']} {got['model_kwargs']}, but config.teacher "
            f"asks for {want['model']} {want['model_kwargs']}"
        )
    teacher = build_model(
        config.teacher.model,
        config.teacher.model_kwargs,
        dataset.info.num_classes,
        dtype,
        False,
        "config.teacher.model",
    )
    abstract = _abstract_variables(teacher, dataset.info.image_hw, mesh)
    variables, _ = checkpointing.load_variables(path, abstract, what)
    return teacher, variables


def _jsonish(x: Any) -> Any:
    """Normalises tuples to lists (JSON round trip) for comparing model arguments."""
    return json.loads(json.dumps(x))


def train_stage(config: ml_collections.ConfigDict, workdir: str, stage: str, dataset=None) -> dict:
    """Trains one stage (teacher, student or distill) to completion and evaluates it.

    Resumes from ``<workdir>/<stage>/checkpoints`` if present. Writes TensorBoard scalars, the
    ``best/`` checkpoint by validation mIoU, and ``eval_<split>.{json,md}``.

    Returns:
      The final validation metrics plus ``params`` (count) and ``train_seconds``.
    """
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {STAGES}")
    dataset = dataset or _prepared_dataset(config)
    info = dataset.info
    dtype = _dtype(config)
    mesh = parallel.make_data_mesh(config.num_devices)
    stage_dir = os.path.join(workdir, stage)
    os.makedirs(stage_dir, exist_ok=True)
    mcfg = _stage_model_config(config, stage)
    num_steps = int(mcfg.num_train_steps)
    field = f"config.{'teacher' if stage == 'teacher' else 'student'}.model"
    model = build_model(mcfg.model, mcfg.model_kwargs, info.num_classes, dtype, True, field)
    eval_model = build_model(mcfg.model, mcfg.model_kwargs, info.num_classes, dtype, False, field)

    teacher, teacher_vars, distill = None, {}, None
    if stage == "distill":
        teacher, teacher_vars = _load_teacher(config, workdir, dataset, mesh, dtype)
        d = config.distill
        distill = steps.DistillSettings(
            weight=float(d.weight),
            taps=tuple((str(s), str(t), float(w)) for s, t, w in d.taps),
            kernel_size=int(d.kernel_size),
            moment_weights=tuple(float(w) for w in d.moment_weights),
            normalizer=d.normalizer,
            skew_denominator=d.skew_denominator,
            logit_kd_weight=float(d.logit_kd_weight),
            logit_kd_temperature=float(d.logit_kd_temperature),
        )
        _check_taps(eval_model, teacher, distill.taps, info.image_hw)

    abstract_params = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *info.image_hw, 3)), train=False)
    )["params"]
    tx = optim.make_optimizer(
        abstract_params,
        learning_rate=mcfg.learning_rate,
        num_steps=num_steps,
        momentum=config.optim.momentum,
        weight_decay=config.optim.weight_decay,
        poly_power=config.optim.poly_power,
        head_lr_mult=mcfg.head_lr_mult,
        clip_grad_norm=config.optim.clip_grad_norm,
    )
    rep = parallel.replicated(mesh)

    def init(rng):
        return steps.create_train_state(eval_model, tx, rng, info.image_hw)

    seed_key = jax.random.key(config.seed + STAGES.index(stage))
    abstract_state = jax.eval_shape(init, seed_key)
    abstract_state = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), abstract_state
    )

    ckpts = checkpointing.StageCheckpoints(stage_dir, max_to_keep=config.max_checkpoints_to_keep)
    restored = ckpts.restore_latest(abstract_state)
    if restored is None:
        state = steps.run_once(init, seed_key, out_shardings=rep)
        logging.info("[%s] starting from scratch (%d steps)", stage, num_steps)
    else:
        state, meta = restored
        _check_resume_meta(meta, mcfg, stage, stage_dir)
        logging.info("[%s] resumed from step %d of %d", stage, int(state.step), num_steps)
    start_step = int(jax.device_get(state.step))
    eval_split = config.eval.split or config.data.eval_split
    report_file = os.path.join(stage_dir, f"eval_{eval_split}.json")
    if start_step >= num_steps and os.path.exists(report_file):
        ckpts.close()
        logging.info("[%s] already finished (%d steps); report %s", stage, num_steps, report_file)
        return _read_json(report_file, {})
    n_params = models.count_params(state.params)
    meta = {
        "stage": stage,
        "model": mcfg.model,
        "model_kwargs": _jsonish(dict(mcfg.model_kwargs)),
        "num_classes": info.num_classes,
        "dataset": info.name,
        "image_hw": list(info.image_hw),
        "dtype": config.dtype,
        "num_params": n_params,
    }

    train_step = steps.make_train_step(
        model,
        tx,
        mesh,
        info.num_classes,
        info.class_weights,
        info.ignore_label,
        teacher=teacher,
        distill=distill,
    )
    local_bs = parallel.local_batch_size(config.batch_size, mesh)
    writer = _tensorboard_writer(stage_dir)
    if start_step == 0:
        writer.write_hparams({"stage": stage, "model": mcfg.model, "params": n_params})
    progress = periodic_actions.ReportProgress(
        num_train_steps=num_steps,
        writer=writer,
        every_secs=None,
        every_steps=config.log_every_steps,
    )
    timing_file = os.path.join(stage_dir, "train_seconds.json")
    train_seconds = _read_json(timing_file, {"seconds": 0.0})["seconds"]

    def validate(state: steps.TrainState) -> dict:
        return evaluate_variables(
            eval_model,
            {"params": state.params, "batch_stats": state.batch_stats},
            dataset,
            eval_split,
            mesh,
            config.eval_batch_size,
            config.eval.max_batches,
            desc=f"{stage} eval",
        )

    pending: list[dict[str, jax.Array]] = []
    t_start = time.time()
    t_log = t_start
    step_at_log = start_step
    batches: Iterator = _training_data(config, stage, dataset).train_batches(
        local_bs,
        seed=config.seed,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    with metric_writers.ensure_flushes(writer):
        for step in range(start_step + 1, num_steps + 1):
            batch = parallel.to_global(next(batches), mesh)
            state, metrics = train_step(state, teacher_vars, batch)
            pending.append(metrics)
            progress(step)
            if step % config.log_every_steps == 0 or step == num_steps:
                # The only host sync of the loop: fetch the metrics of the last interval at once.
                host = jax.device_get(pending)
                pending = []
                scalars = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
                if getattr(batches, "num_skipped", 0):  # config.data.skip_corrupt
                    scalars["skipped_corrupt"] = float(batches.num_skipped)
                if not np.isfinite(scalars["loss"]):
                    raise FloatingPointError(
                        f"[{stage}] loss is {scalars['loss']} at step {step}; "
                        f"last good checkpoint: {ckpts.latest_step()}"
                    )
                now = time.time()
                rate = (step - step_at_log) / max(now - t_log, 1e-9)
                t_log, step_at_log = now, step
                writer.write_scalars(step, scalars)
                logging.info(
                    "[%s] step %d/%d  %s  %.2f steps/s  ETA %s",
                    stage,
                    step,
                    num_steps,
                    "  ".join(f"{k} {v:.4f}" for k, v in scalars.items()),
                    rate,
                    format_seconds((num_steps - step) / max(rate, 1e-9)),
                )
            if step % config.checkpoint_every_steps == 0 or step == num_steps:
                ckpts.save(step, state, {**meta, "step": step})
                _write_json(timing_file, {"seconds": train_seconds + time.time() - t_start})
            if config.eval_every_steps and step % config.eval_every_steps == 0 and step < num_steps:
                m = validate(state)
                writer.write_scalars(step, {"val_miou": m["miou"]})
                ckpts.save_best(step, state, {**meta, "step": step}, m)
    train_seconds += time.time() - t_start
    _write_json(timing_file, {"seconds": train_seconds})

    metrics = validate(state)
    final_variables = {"params": state.params, "batch_stats": state.batch_stats}
    final_step = int(jax.device_get(state.step))
    ckpts.save_best(final_step, state, {**meta, "step": final_step}, metrics)
    ckpts.wait()
    ckpts.close()
    writer.write_scalars(final_step, {"val_miou": metrics["miou"]})
    metrics.update(params=n_params, train_seconds=train_seconds, model=mcfg.model, stage=stage)
    report.write_report(
        stage_dir,
        f"eval_{eval_split}",
        metrics,
        {"per-class": _metrics_table(metrics, info.class_names)},
    )
    examples = predict_examples(
        eval_model, final_variables, dataset, eval_split, mesh, config.eval_batch_size
    )
    if jax.process_index() == 0:
        np.savez_compressed(os.path.join(stage_dir, "examples.npz"), **examples)
        visualize.save_png(
            os.path.join(stage_dir, "examples.png"),
            visualize.grid(
                _example_rows(examples, config.data, [examples["pred"]], 4),
                ["input", "ground truth", f"{stage} prediction"],
            ),
        )
    logging.info("[%s] %s mIoU %.4f", stage, eval_split, metrics["miou"])
    return metrics


def _tensorboard_writer(stage_dir: str) -> metric_writers.MetricWriter:
    """TensorBoard scalars from process 0 only; the console gets one progress line per log step."""
    if jax.process_index() > 0:
        return metric_writers.MultiWriter([])
    return metric_writers.AsyncWriter(metric_writers.SummaryWriter(stage_dir))


def _tap_names(model, image_hw) -> list[str]:
    (_, taps), _ = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, *image_hw, 3)))
    )
    return sorted(taps)


def _check_taps(student, teacher, pairs, image_hw) -> None:
    """Fails before compiling anything if config.distill.taps names a tap a model lacks."""
    s_names, t_names = _tap_names(student, image_hw), _tap_names(teacher, image_hw)
    for s_tap, t_tap, _ in pairs:
        if s_tap not in s_names or t_tap not in t_names:
            raise ConfigError(
                f"config.distill.taps has ({s_tap!r}, {t_tap!r}); the student's taps are "
                f"{s_names} and the teacher's {t_names}"
            )


def _check_resume_meta(meta: dict, mcfg, stage: str, stage_dir: str) -> None:
    if meta.get("model") != mcfg.model or _jsonish(meta.get("model_kwargs")) != _jsonish(
        dict(mcfg.model_kwargs)
    ):
        raise checkpointing.CheckpointError(
            f"{stage_dir}/checkpoints was written for {meta.get('model')} "
            f"{meta.get('model_kwargs')}, but the config now asks for {mcfg.model} "
            f"{dict(mcfg.model_kwargs)}; use another --workdir or restore the config"
        )


def _read_json(path: str, default: Any) -> Any:
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, obj: Any) -> None:
    if jax.process_index() != 0:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _training_data(config: ml_collections.ConfigDict, stage: str, dataset):
    """The teacher may train on its own crop (ApolloScape: PSPNet 460x1380, ERFNet 496x1488).

    ``config.data.teacher_image_hw`` (when set) replaces ``image_hw`` for the teacher's
    training batches only; evaluation and the distill stage keep ``image_hw``.
    """
    hw = config.data.get("teacher_image_hw")
    if stage != "teacher" or not hw or tuple(hw) == tuple(dataset.info.image_hw):
        return dataset
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    data_config.image_hw = tuple(hw)
    return data_pipelines.get_dataset(data_config)


def _prepared_dataset(config: ml_collections.ConfigDict):
    dataset = data_pipelines.get_dataset(config.data)
    dataset.prepare()
    return dataset


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
    dataset = _prepared_dataset(config)
    info = dataset.info
    split = config.eval.split or config.data.eval_split
    mesh = parallel.make_data_mesh(config.num_devices)
    results = {}
    for path in paths:
        _, step, meta = checkpointing.read_meta(path)
        model = build_model(
            meta["model"], meta.get("model_kwargs", {}), info.num_classes, _dtype(config), False
        )
        abstract = _abstract_variables(model, info.image_hw, mesh)
        variables, _ = checkpointing.load_variables(path, abstract, "config.checkpoint")
        name = batch_eval.run_name(path, step)
        if name in results:  # the same stage of two workdirs
            name = f"{name}_{len(results)}"
        out_dir = os.path.join(workdir, batch_eval.EVAL_DIR, name, split)
        metrics = batch_eval.evaluate_one(config, dataset, split, model, variables, mesh, out_dir)
        metrics.update(checkpoint=os.path.abspath(path), step=step, model=meta["model"])
        results[name] = metrics
        if jax.process_index() == 0:
            with open(os.path.join(out_dir, "report.md")) as f:
                print(f"\n{name} on {info.name} {split} ({out_dir}):\n\n{f.read()}")
    if len(results) > 1:
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
    dataset = _prepared_dataset(config)
    results = {}
    for stage in STAGES:
        results[stage] = train_stage(config, workdir, stage, dataset)
    table = comparison_table(results, dataset.info.class_names)
    report.write_report(workdir, "comparison", results, {"comparison": table})
    if jax.process_index() == 0:
        examples = {s: dict(np.load(os.path.join(workdir, s, "examples.npz"))) for s in STAGES}
        preds = [examples[s]["pred"] for s in STAGES]
        figure = visualize.grid(
            _example_rows(examples["teacher"], config.data, preds, 4),
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
    from data_pipelines import check

    result = check.check_dataset(data_pipelines.get_dataset(config.data))
    text = result.format()
    print(text)
    out = os.path.join(workdir, "data_check.txt")
    if jax.process_index() == 0:
        with open(out, "w") as f:
            f.write(text + "\n")
        _write_json(os.path.join(workdir, "data_check.json"), result.to_json())
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
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"config_{config.mode}.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    if config.mode == "check_data":
        return check_data(config, workdir)
    if config.mode == "pipeline":
        return run_pipeline(config, workdir)
    if config.mode == "evaluate":
        return evaluate_checkpoint(config, workdir)
    return train_stage(config, workdir, config.mode)
