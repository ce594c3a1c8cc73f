"""One training stage (teacher, baseline student or distilled student), from set-up to report.

``train_stage`` reads as its four steps:

  set_up   models, optimiser, the frozen teacher and the distillation terms, from the config
  resume   restore the newest checkpoint (or initialise, from a pretrained file when
           ``init_from`` says so); a finished stage stops here
  loop     the jitted shard_map step over the deterministic batch stream, with logging,
           checkpoints and periodic validation
  finish   final validation, best checkpoint, report and example predictions

Fair comparisons: every student stage of a seed (the baseline and each distillation method)
starts from the same parameters and dropout stream (the initialisation key depends on the seed and
on the role, teacher or student, never on the stage) and reads the same batches (the data order is a
function of the seed and the step), so the stages differ only in their loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils

import data_pipelines
from data_pipelines.util import format_seconds
from intrakd_jax import (
    building,
    checkpointing,
    inference,
    models,
    optim,
    parallel,
    steps,
    weights,
)
from intrakd_jax.errors import ConfigError, StorageError
from intrakd_jax.evaluation import report, visualize
from intrakd_jax.losses import terms

STAGES = ("teacher", "student", "distill")


def init_key(seed: int, stage: str) -> jax.Array:
    """The initialisation key of a stage: one per (seed, role), shared by all student stages.

    The teacher uses ``seed`` and every student stage ``seed + 1`` (the baseline student's key
    before fair starts existed, so its numbers are unchanged).
    """
    return jax.random.key(seed if stage == "teacher" else seed + 1)


@dataclasses.dataclass
class StageSetup:
    """What ``set_up`` builds from the config; the other steps read it."""

    stage: str
    config: ml_collections.ConfigDict
    dataset: Any
    mesh: Any
    stage_dir: str
    num_steps: int
    model: Any  # BatchNorm synced over the data axis, dropout on
    eval_model: Any
    tx: Any
    teacher: Any  # None unless a distillation term needs the frozen teacher
    teacher_vars: Any
    distill: Any
    eval_split: str
    meta: dict[str, Any]


def _model_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
    return config.teacher if stage == "teacher" else config.student


def set_up(config: ml_collections.ConfigDict, workdir: str, stage: str, dataset) -> StageSetup:
    """Builds the models, optimiser, teacher and distillation settings of ``stage``.

    Raises:
      ConfigError: unknown stage, model, dtype or distillation setting (the field is named).
      checkpointing.CheckpointError: the distill stage's teacher is missing or does not fit.
    """
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {STAGES}")
    info = dataset.info
    dtype = building.compute_dtype(config)
    mesh = parallel.make_data_mesh(config.num_devices)
    mcfg = _model_config(config, stage)
    field = f"config.{'teacher' if stage == 'teacher' else 'student'}.model"
    kwargs = building.model_kwargs(mcfg)
    model = building.build_model(mcfg.model, kwargs, info.num_classes, dtype, True, field)
    eval_model = building.build_model(mcfg.model, kwargs, info.num_classes, dtype, False, field)
    num_steps = int(mcfg.num_train_steps)
    teacher, teacher_vars, distill = None, {}, None
    if stage == "distill":
        teacher, teacher_vars, distill = _distillation(
            config, workdir, dataset, mesh, eval_model, num_steps
        )
    tx = optim.make_optimizer(
        building.abstract_variables(eval_model, info.image_hw)["params"],
        learning_rate=mcfg.learning_rate,
        num_steps=num_steps,
        momentum=config.optim.momentum,
        weight_decay=config.optim.weight_decay,
        poly_power=config.optim.poly_power,
        head_lr_mult=mcfg.head_lr_mult,
        clip_grad_norm=config.optim.clip_grad_norm,
    )
    meta = {
        "stage": stage,
        "model": mcfg.model,
        "model_kwargs": building.jsonish(kwargs),
        "num_classes": info.num_classes,
        "dataset": info.name,
        "image_hw": list(info.image_hw),
        "dtype": config.dtype,
    }
    return StageSetup(
        stage=stage,
        config=config,
        dataset=dataset,
        mesh=mesh,
        stage_dir=os.path.join(workdir, stage),
        num_steps=num_steps,
        model=model,
        eval_model=eval_model,
        tx=tx,
        teacher=teacher,
        teacher_vars=teacher_vars,
        distill=distill,
        eval_split=config.eval.split or config.data.eval_split,
        meta=meta,
    )


def _distillation(config, workdir: str, dataset, mesh, eval_student, num_steps: int):
    """The distillation terms, the frozen teacher (when a term needs one) and its variables.

    Raises:
      ConfigError: an unknown term, option or tap (the field is named).
      checkpointing.CheckpointError: the teacher checkpoint is missing or does not fit.
    """
    info = dataset.info
    teacher = building.build_teacher(config, info.num_classes, building.compute_dtype(config))
    spec = terms.distill_spec_from_config(config.distill, num_steps, eval_student, teacher)
    teacher_vars = {}
    if spec.needs_teacher:
        default_path = os.path.join(workdir, "teacher")
        teacher_vars = building.load_teacher(config, default_path, teacher, info.image_hw, mesh)
    else:
        teacher = None
    terms.check_taps(
        spec,
        building.tap_names(eval_student, info.image_hw),
        building.tap_names(teacher, info.image_hw) if teacher is not None else None,
    )
    return teacher, teacher_vars, spec


def resume(s: StageSetup) -> tuple[steps.TrainState, checkpointing.StageCheckpoints]:
    """The newest checkpoint's state, or a fresh one from the stage's initialisation key.

    Raises:
      checkpointing.CheckpointError: the checkpoints hold another architecture.
    """
    rep = parallel.replicated(s.mesh)
    image_hw = s.dataset.info.image_hw

    def init(rng):
        return steps.create_train_state(s.eval_model, s.tx, rng, image_hw)

    key = init_key(s.config.seed, s.stage)
    abstract_state = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), jax.eval_shape(init, key)
    )
    ckpts = checkpointing.StageCheckpoints(
        s.stage_dir, max_to_keep=s.config.max_checkpoints_to_keep
    )
    found = ckpts.latest_meta()
    if found is not None:
        # Checked before any array is read: a changed model is a clear error, not a shape error.
        where, fix = f"{s.stage_dir}/checkpoints", "use another --workdir or restore the config"
        building.check_checkpoint_model(found, _model_config(s.config, s.stage), where, fix)
        have, want = found.get("num_classes"), s.dataset.info.num_classes
        if have is not None and have != want:
            raise checkpointing.CheckpointError(
                f"{where} holds a {have}-class {found.get('model')}, but the config asks for "
                f"{want} classes ({s.dataset.info.name}); {fix}"
            )
    state = ckpts.restore_latest(abstract_state)
    if state is None:
        state = steps.run_once(init, key, out_shardings=rep)
        if _model_config(s.config, s.stage).get("init_from"):
            return init_from_checkpoint(s, state), ckpts
        logging.info("[%s] starting from scratch (%d steps)", s.stage, s.num_steps)
        return state, ckpts
    logging.info("[%s] resumed from step %d of %d", s.stage, int(state.step), s.num_steps)
    return state, ckpts


def init_from_checkpoint(s: StageSetup, state: steps.TrainState) -> steps.TrainState:
    """A fresh state whose arrays named in ``config.<role>.init_from`` come from that file.

    ``init_from`` is ``(arch, path)`` of a PyTorch/safetensors checkpoint (``weights.ARCHS``).
    Arrays the checkpoint does not hold, and a classifier of another class count, keep their
    initialisation; the log says how many arrays were imported and which stayed random. The
    optimiser state stays as initialised (SGD momentum starts at zero either way).

    Raises:
      ConfigError: ``init_from`` is not an (arch, path) pair.
      weights.WeightsError: the file is unreadable or does not fit the model.
    """
    role = "teacher" if s.stage == "teacher" else "student"
    value = _model_config(s.config, s.stage).init_from
    if not (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, str) for v in value)
    ):
        raise ConfigError(
            f"config.{role}.init_from={value!r}; expected (arch, path), e.g. "
            "\"('torchvision_resnet101', 'resnet101-5d3b4d8f.pth')\""
        )
    arch, path = value
    variables, report = weights.load_into(
        state.variables,
        weights.read_checkpoint(path),
        arch,
        s.eval_model,
        new_head_ok=True,
    )
    logging.info("[%s] initialised from a pretrained checkpoint: %s", s.stage, report.summary())
    return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])


def _report_path(s: StageSetup) -> str:
    return os.path.join(s.stage_dir, f"eval_{s.eval_split}.json")


def validate(s: StageSetup, state: steps.TrainState) -> dict:
    """Validation metrics of the state's variables on the stage's evaluation split."""
    return inference.evaluate_variables(
        s.eval_model,
        state.variables,
        s.dataset,
        s.eval_split,
        s.mesh,
        s.config.eval_batch_size,
        s.config.eval.max_batches,
        desc=f"{s.stage} eval",
    )


class NonFiniteLoss(Exception):  # noqa: N818 -- named for what the user sees
    """The loss or a gradient went NaN/inf; the stage stopped before saving that state.

    The newest checkpoint is the last one saved before the bad step, untouched. Attributes:
    ``step`` (the first non-finite step), ``report_path`` (``nonfinite.json`` in the stage
    directory: the step, its values, the last finite step's values, the skipped steps).
    """

    def __init__(self, message: str, step: int, report_path: str):
        """Records the message, the step and where the report is."""
        super().__init__(message)
        self.step, self.report_path = step, report_path


def _format_values(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.6g}" for k, v in values.items())


class _IntervalLog:
    """Step metrics: checked for non-finite values, averaged per logging interval.

    The metrics stay on device until ``check`` (before every checkpoint, validation and log
    line) fetches them: one host sync per interval, and no state of a non-finite step is ever
    saved. With ``max_skips`` > 0 the step function skips non-finite updates and this counts them.
    """

    def __init__(self, s: StageSetup, start_step: int, writer, batches, max_skips: int) -> None:
        self.s, self.writer, self.batches, self.max_skips = s, writer, batches, max_skips
        self.pending: list[tuple[int, dict[str, jax.Array]]] = []
        self.checked: list[dict[str, float]] = []  # finite steps since the last log line
        self.last_finite: tuple[int, dict[str, float]] | None = None
        self.skipped: list[int] = []  # non-finite steps skipped in this run
        self.t_log, self.step_at_log = time.time(), start_step

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        """Queues one step's (device) metrics."""
        self.pending.append((step, metrics))

    def check(self, last_good_step: int | None) -> None:
        """Fetches the queued metrics; raises NonFiniteLoss at a non-finite step not skipped."""
        if not self.pending:
            return
        host = jax.device_get([m for _, m in self.pending])
        steps_ = [step for step, _ in self.pending]
        self.pending = []
        for step, raw in zip(steps_, host, strict=True):
            values = {k: float(v) for k, v in raw.items()}
            nonfinite = values.pop("nonfinite", 0.0) > 0 or not all(
                np.isfinite(v) for v in values.values()
            )
            if not nonfinite:
                self.checked.append(values)
                self.last_finite = (step, values)
                continue
            if len(self.skipped) < self.max_skips:
                self.skipped.append(step)
                logging.warning(
                    "[%s] step %d: non-finite %s; update skipped (%d of at most %d, "
                    "config.optim.skip_nonfinite_steps)",
                    self.s.stage,
                    step,
                    ", ".join(k for k, v in values.items() if not np.isfinite(v)) or "gradient",
                    len(self.skipped),
                    self.max_skips,
                )
                continue
            raise self._stop(step, values, last_good_step)

    def _stop(self, step: int, values: dict[str, float], last_good_step: int | None):
        bad = [k for k, v in values.items() if not np.isfinite(v)]
        # Name the terms first: "loss" and "grad_norm" only follow from them.
        terms_ = [k for k in bad if k not in ("loss", "grad_norm")]
        what = ", ".join(terms_) if terms_ else ("loss" if "loss" in bad else "gradient")
        path = os.path.join(self.s.stage_dir, "nonfinite.json")
        _write_json(
            path,
            {
                "stage": self.s.stage,
                "step": step,
                "nonfinite": bad,
                "values": {k: str(v) if not np.isfinite(v) else v for k, v in values.items()},
                "last_finite_step": self.last_finite[0] if self.last_finite else None,
                "last_finite_values": self.last_finite[1] if self.last_finite else None,
                "last_good_checkpoint": last_good_step,
                "skipped_steps": self.skipped,
                "max_skips": self.max_skips,
            },
        )
        last = (
            f"last finite step {self.last_finite[0]}: {_format_values(self.last_finite[1])}"
            if self.last_finite
            else "no finite step in this run"
        )
        skipped = (
            f" after skipping {len(self.skipped)} (steps {self.skipped}, the cap)"
            if self.skipped
            else ""
        )
        kept = (
            f"the newest checkpoint (step {last_good_step}) is from before it and is kept"
            if last_good_step is not None
            else "no checkpoint was saved"
        )
        return NonFiniteLoss(
            f"[{self.s.stage}] non-finite {what} at step {step}{skipped} "
            f"({_format_values(values)}); {last}; {kept}; report {path}. Lower the learning "
            "rate or set config.optim.clip_grad_norm, check the data (config.mode=check_data), "
            "or let config.optim.skip_nonfinite_steps=N skip up to N such steps",
            step,
            path,
        )

    def flush(self, step: int, last_good_step: int | None) -> None:
        """Checks the queued metrics, then writes the interval's means (finite steps only)."""
        self.check(last_good_step)
        scalars = {}
        if self.checked:
            scalars = {k: float(np.mean([m[k] for m in self.checked])) for k in self.checked[0]}
        self.checked = []
        if getattr(self.batches, "num_skipped", 0):  # config.data.skip_corrupt
            scalars["skipped_corrupt"] = float(self.batches.num_skipped)
        if self.skipped:
            scalars["skipped_nonfinite"] = float(len(self.skipped))
        stage, num_steps = self.s.stage, self.s.num_steps
        now = time.time()
        rate = (step - self.step_at_log) / max(now - self.t_log, 1e-9)
        self.t_log, self.step_at_log = now, step
        self.writer.write_scalars(step, scalars)
        logging.info(
            "[%s] step %d/%d  %s  %.2f steps/s  ETA %s",
            stage,
            step,
            num_steps,
            "  ".join(f"{k} {v:.4f}" for k, v in scalars.items()),
            rate,
            format_seconds((num_steps - step) / max(rate, 1e-9)),
        )


def _stage_batches(s: StageSetup, start_step: int) -> Iterator:
    """The stage's training batches from ``start_step`` on (this process's slice).

    The teacher may train on its own crop (ApolloScape: PSPNet 460x1380, ERFNet 496x1488):
    ``config.data.teacher_image_hw`` (when set) replaces ``image_hw`` for the teacher's training
    batches only; evaluation and the distill stage keep ``image_hw``.
    """
    dataset, config = s.dataset, s.config
    hw = config.data.get("teacher_image_hw")
    if s.stage == "teacher" and hw and tuple(hw) != tuple(dataset.info.image_hw):
        data_config = ml_collections.ConfigDict(config.data.to_dict())
        data_config.image_hw = tuple(hw)
        dataset = data_pipelines.get_dataset(data_config)
    return dataset.train_batches(
        parallel.local_batch_size(config.batch_size, s.mesh),
        seed=config.seed,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


class Preempted(Exception):  # noqa: N818 -- a stop on request, not a failure
    """SIGTERM/SIGINT stopped a stage after it saved a checkpoint at the current step.

    Attributes:
      exit_status: 128 + the signal number (143 for SIGTERM, 130 for SIGINT), what shells and
        schedulers expect of a process stopped by that signal.
    """

    def __init__(self, stage: str, step: int, signum: int):
        """Records where the stage stopped and why."""
        name = signal.Signals(signum).name
        super().__init__(
            f"[{stage}] {name} received: checkpoint saved at step {step}; run the same command "
            "again to resume"
        )
        self.exit_status = 128 + signum


class _StopRequests:
    """SIGTERM/SIGINT during training ask the loop to save and stop after the current step.

    With several processes jax's preemption service agrees on the step instead (every host of a
    preempted slice gets SIGTERM; ``multihost_utils.reached_preemption_sync_point``), so its own
    SIGTERM handling stays in place. A second SIGINT interrupts at once (KeyboardInterrupt).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                if signum == signal.SIGTERM and jax.process_count() > 1:
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logging.warning(
            "%s received: saving a checkpoint after this step, then stopping",
            signal.Signals(signum).name,
        )

    def stop_at(self, step: int) -> int | None:
        """The signal to stop for at ``step``, or None to go on."""
        if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
            return self.signum or signal.SIGTERM
        return self.signum


def loop(
    s: StageSetup,
    state: steps.TrainState,
    ckpts: checkpointing.StageCheckpoints,
    meta: dict,
    writer: metric_writers.MetricWriter,
) -> tuple[steps.TrainState, float]:
    """Trains from the state's step to ``num_steps``; returns the state and the seconds spent.

    Raises:
      Preempted: SIGTERM/SIGINT; a checkpoint of the current step was saved.
      NonFiniteLoss: a non-finite loss or gradient (beyond ``config.optim.skip_nonfinite_steps``
        skipped ones); nothing after the last good checkpoint was saved.
    """
    config = s.config
    max_skips = _max_nonfinite_skips(config)
    start_step = int(jax.device_get(state.step))
    if start_step == 0:
        writer.write_hparams(
            {"stage": s.stage, "model": meta["model"], "params": meta["num_params"]}
        )
    progress = periodic_actions.ReportProgress(
        num_train_steps=s.num_steps,
        writer=writer,
        every_secs=None,
        every_steps=config.log_every_steps,
    )
    timing_file = os.path.join(s.stage_dir, "train_seconds.json")
    seconds_before = _read_json(timing_file, {"seconds": 0.0})["seconds"]
    t_start = time.time()
    info = s.dataset.info
    train_step = steps.make_train_step(
        s.model,
        s.tx,
        s.mesh,
        info.num_classes,
        info.class_weights,
        info.ignore_label,
        teacher=s.teacher,
        distill=s.distill,
        skip_nonfinite=max_skips > 0,
    )
    logging.info(
        "[%s] %d %s device(s), global batch %d (%d per device)",
        s.stage,
        s.mesh.size,
        s.mesh.devices.flat[0].platform,
        config.batch_size,
        config.batch_size // s.mesh.size,
    )
    batches = _stage_batches(s, start_step)
    log = _IntervalLog(s, start_step, writer, batches, max_skips)
    with _StopRequests() as stop, _waiting_on_error(ckpts):
        for step in range(start_step + 1, s.num_steps + 1):
            batch = parallel.to_global(next(batches), s.mesh)
            state, metrics = train_step(state, s.teacher_vars, batch)
            log.add(step, metrics)
            progress(step)
            signum = stop.stop_at(step)
            if step % config.log_every_steps == 0 or step == s.num_steps or signum:
                log.flush(step, ckpts.latest_step())
            if step % config.checkpoint_every_steps == 0 or step == s.num_steps or signum:
                log.check(ckpts.latest_step())  # never save the state of a non-finite step
                ckpts.save(step, state, {**meta, "step": step}, force=bool(signum))
                _write_json(timing_file, {"seconds": seconds_before + time.time() - t_start})
            if signum:
                ckpts.wait()  # complete on disk before the process goes
                raise Preempted(s.stage, step, signum)
            if (
                config.eval_every_steps
                and step % config.eval_every_steps == 0
                and step < s.num_steps
            ):
                log.check(ckpts.latest_step())
                m = validate(s, state)
                writer.write_scalars(step, {"val_miou": m["miou"]})
                ckpts.save_best(step, state, {**meta, "step": step}, m)
    train_seconds = seconds_before + time.time() - t_start
    _write_json(timing_file, {"seconds": train_seconds})
    return state, train_seconds


def _max_nonfinite_skips(config: ml_collections.ConfigDict) -> int:
    value = config.optim.get("skip_nonfinite_steps", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"config.optim.skip_nonfinite_steps={value!r}; expected an int >= 0 (0: stop at the "
            "first non-finite loss or gradient; N: skip up to N such steps per run)"
        )
    return value


@contextlib.contextmanager
def _waiting_on_error(ckpts: checkpointing.StageCheckpoints) -> Iterator[None]:
    """On an error, lets the checkpoint save in flight complete before the error propagates."""
    try:
        yield
    except (Preempted, StorageError):  # saved already / the saves are what failed
        raise
    except Exception:
        try:
            ckpts.wait()
        except Exception as e:  # the first error is the one to report
            logging.warning("the checkpoint save in flight failed too: %s", e)
        raise


def finish(
    s: StageSetup,
    state: steps.TrainState,
    ckpts: checkpointing.StageCheckpoints,
    meta: dict,
    writer: metric_writers.MetricWriter,
    train_seconds: float,
) -> dict:
    """Final validation, best checkpoint, report and example predictions; returns the metrics."""
    metrics = validate(s, state)
    final_step = int(jax.device_get(state.step))
    ckpts.save_best(final_step, state, {**meta, "step": final_step}, metrics)
    ckpts.wait()
    ckpts.close()
    writer.write_scalars(final_step, {"val_miou": metrics["miou"]})
    metrics.update(
        params=meta["num_params"], train_seconds=train_seconds, model=meta["model"], stage=s.stage
    )
    info = s.dataset.info
    if parallel.is_lead_process():
        report.write_report(
            s.stage_dir,
            f"eval_{s.eval_split}",
            metrics,
            {"per-class": _metrics_table(metrics, info.class_names)},
        )
    examples = inference.predict_examples(
        s.eval_model,
        state.variables,
        s.dataset,
        s.eval_split,
        s.mesh,
        s.config.eval_batch_size,
    )
    if parallel.is_lead_process():
        np.savez_compressed(os.path.join(s.stage_dir, "examples.npz"), **examples)
        visualize.save_png(
            os.path.join(s.stage_dir, "examples.png"),
            visualize.grid(
                example_rows(examples, s.config.data, info.num_classes, [examples["pred"]], 4),
                ["input", "ground truth", f"{s.stage} prediction"],
            ),
        )
    logging.info("[%s] %s mIoU %.4f", s.stage, s.eval_split, metrics["miou"])
    return metrics


def train_stage(config: ml_collections.ConfigDict, workdir: str, stage: str, dataset=None) -> dict:
    """Trains one stage (teacher, student or distill) to completion and evaluates it.

    Resumes from ``<workdir>/<stage>/checkpoints`` if present; a finished stage (all steps done
    and its report written) is not trained or evaluated again. Writes TensorBoard scalars, the
    ``best/`` checkpoint by validation mIoU, and ``eval_<split>.{json,md}``.

    Returns:
      The final validation metrics plus ``params`` (count) and ``train_seconds``.
    """
    s = set_up(config, workdir, stage, dataset or building.prepared_dataset(config.data))
    os.makedirs(s.stage_dir, exist_ok=True)
    state, ckpts = resume(s)
    if int(jax.device_get(state.step)) >= s.num_steps and os.path.exists(_report_path(s)):
        ckpts.close()
        logging.info(
            "[%s] already finished (%d steps); report %s", stage, s.num_steps, _report_path(s)
        )
        return _read_json(_report_path(s), {})
    meta = {**s.meta, "num_params": models.count_params(state.params)}
    writer = _tensorboard_writer(s.stage_dir)
    with metric_writers.ensure_flushes(writer):
        state, train_seconds = loop(s, state, ckpts, meta, writer)
        return finish(s, state, ckpts, meta, writer, train_seconds)


def _tensorboard_writer(stage_dir: str) -> metric_writers.MetricWriter:
    """TensorBoard scalars from process 0 only; the console gets one progress line per log step."""
    if not parallel.is_lead_process():
        return metric_writers.MultiWriter([])
    return metric_writers.AsyncWriter(metric_writers.SummaryWriter(stage_dir))


def example_rows(
    examples: dict, data_config, num_classes: int, columns: list[np.ndarray], n: int
) -> list:
    """Figure rows: input, ground truth and one overlay per prediction column, ``n`` images."""
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


def _read_json(path: str, default: Any) -> Any:
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, obj: Any) -> None:
    if parallel.is_lead_process():
        report.write_json(path, obj)
