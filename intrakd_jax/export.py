"""mode=export: a checkpoint as artifacts a runtime without the training code can run.

``python main.py --config=configs/culane.py --config.mode=export
--config.checkpoint=runs/culane/distill [--config.export.formats=jax,savedmodel,tflite]
[--config.export.output=DIR] --workdir=runs/culane`` writes into ``<workdir>/export/`` (or
``config.export.output``):

  metadata.json     what a runtime needs to know: input size, channel order, value range,
                    mean/std, crop_top and source frame size, class names, model, checkpoint,
                    format version, and a record of every artifact (size, sha256, platforms)
  model.jax_export  ``jax.export`` serialization (StableHLO, weights inside), batch size free,
                    lowered for cpu, cuda and tpu where possible; run it with
                    ``intrakd_jax.deploy.load`` (numpy + jax only)
  savedmodel/       TensorFlow SavedModel (``jax2tf``), signature ``serving_default``:
                    ``images`` -> ``probabilities``; metadata in ``assets/metadata.json`` and
                    the zero-argument function ``metadata()``
  model.tflite      TFLite flatbuffer of the same function, builtin ops only (XNNPACK runs it);
                    its input is ``[-1, H, W, 3]``: ``resize_tensor_input`` to the batch size
                    (``export_model(..., tflite_batch=N)``: fixed to N, a leaner, faster graph)
  export.json       summary: paths, what failed and why, each artifact's largest difference
                    from the Flax model on a random batch

Every artifact computes the same function (``inference_function``), whose input convention is
the one ``intrakd_jax.deploy`` states: float32 RGB (B, H, W, 3) with values 0..255 at the network
size (the source frame below its top ``crop_top`` rows, bilinearly resized to (H, W)); the
training normalisation ((x - mean) / std) is inside; the output is softmax probabilities float32
(B, H, W, K). ``export_model`` is the library entry point (no config): notebooks and tests call
it with a model and its variables.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging
from jax.experimental import jax2tf

from data_pipelines.sources import hide_gpus_from_tf
from intrakd_jax import building, checkpointing, deploy, parallel
from intrakd_jax.errors import ConfigError

FORMATS = ("jax", "savedmodel", "tflite")
# Platforms a jax.export / SavedModel artifact is lowered for when the lowering allows it (one
# program per platform inside one artifact; the runtime picks its own).
PLATFORMS = ("cpu", "cuda", "tpu")
# Model options that change how a model computes, not what (same parameters, same function).
# conv_impl "fast": on CPU the transposed convolutions are computed as stride-1 convolutions of
# the output phases; TFLite's converter (TF 2.21) maps XLA's own form, an input-dilated
# convolution with asymmetric padding, to a TRANSPOSE_CONV that is wrong by O(1) (ERFNet's
# 3x3/2 upsamplers), while the phase form converts exactly. GPU/TPU programs in the artifacts
# use XLA's convolutions either way (models/conv.py selects per platform). No remat.
INFERENCE_OPTIONS = {"conv_impl": "fast", "remat": False}
# The largest difference from the Flax model an artifact may show on the random check batch;
# beyond it the export lists the artifact as failed (float32 programs agree to about 1e-6).
CHECK_TOLERANCE = 1e-4
TFLITE_DEPRECATION = ".*tf.lite.Interpreter is deprecated.*"

_RESIZE = "bilinear, half-pixel centres (tf.image.resize, cv2.INTER_LINEAR), no antialiasing"


# ----------------------------------------------------------------------------------------------
# The exported function and its metadata
# ----------------------------------------------------------------------------------------------


def inference_model(model):
    """``model`` with ``INFERENCE_OPTIONS`` applied where it has those fields (same params)."""
    names = {f.name for f in dataclasses.fields(model)}
    updates = {k: v for k, v in INFERENCE_OPTIONS.items() if k in names}
    return model.clone(**updates) if updates else model


def inference_function(
    model, variables: Mapping[str, Any], mean_rgb: Sequence[float], std_rgb: Sequence[float]
) -> Callable[[jax.Array], jax.Array]:
    """The function every artifact holds: RGB 0..255 (B, H, W, 3) -> probabilities (B, H, W, K).

    The variables are captured as constants (host copies), so the function, and every artifact
    lowered from it, is self-contained.

    Args:
      model: a registry model (Flax Linen, ``apply(..., train=False) -> (logits, taps)``).
      variables: its ``params`` and ``batch_stats`` (other collections are ignored).
      mean_rgb: per-channel mean of the training normalisation, 0..255 scale.
      std_rgb: per-channel divisor applied after the mean.
    """
    model = inference_model(model)
    host = jax.device_get({k: variables[k] for k in ("params", "batch_stats") if k in variables})
    host = jax.tree.map(np.asarray, host)
    mean = np.asarray(mean_rgb, np.float32)
    std = np.asarray(std_rgb, np.float32)

    def predict(images_bhwc: jax.Array) -> jax.Array:
        # The same normalisation as data_pipelines' loader: (x - mean) / std.
        logits, _ = model.apply(host, (images_bhwc - mean) / std, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    return predict


def _jsonable(x: Any) -> Any:
    """``x`` as JSON values: tuples become lists, anything else unknown its ``str``."""
    return json.loads(json.dumps(x, default=str))


def make_metadata(
    *,
    model_name: str,
    class_names: Sequence[str],
    image_hw: Sequence[int],
    mean_rgb: Sequence[float],
    std_rgb: Sequence[float],
    crop_top: int = 0,
    source_hw: Sequence[int] | None = None,
    source_from: str | None = None,
    dataset: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    checkpoint: Mapping[str, Any] | None = None,
) -> dict:
    """The metadata of an export (format ``deploy.FORMAT_VERSION``), before any artifact.

    Args:
      model_name: the registry name (or PyTorch arch) of the model.
      class_names: one name per output class.
      image_hw: the network input (H, W) the artifacts take.
      mean_rgb: the training normalisation's mean (applied inside the artifacts).
      std_rgb: its divisor.
      crop_top: rows the data pipeline removes at the top of a source frame before resizing.
      source_hw: (H, W) of the dataset's source frames, when known.
      source_from: where ``source_hw`` comes from, for the record.
      dataset: the dataset's name.
      model_kwargs: the model's arguments, for the record.
      checkpoint: where the weights came from (``path``, ``step``, ...), for the record.

    Returns:
      A dict that ``deploy.check_metadata`` accepts.
    """
    h, w = (int(v) for v in image_hw)
    meta = {
        "format": deploy.FORMAT,
        "format_version": deploy.FORMAT_VERSION,
        "model": model_name,
        "model_kwargs": _jsonable(dict(model_kwargs or {})),
        "dataset": dataset,
        "classes": [str(n) for n in class_names],
        "num_classes": len(class_names),
        "input": {
            "hw": [h, w],
            "shape": [None, h, w, 3],
            "layout": "NHWC",
            "channels": 3,
            "channel_order": "RGB",
            "dtype": "float32",
            "value_range": [0.0, 255.0],
            "mean_rgb": [float(v) for v in mean_rgb],
            "std_rgb": [float(v) for v in std_rgb],
            "normalization": "inside the artifact: (x - mean_rgb) / std_rgb",
            "crop_top": int(crop_top),
            "source_hw": None if source_hw is None else [int(v) for v in source_hw],
            "source_hw_from": source_from,
            "preprocessing": (
                f"drop the top crop_top rows of the source frame, resize to {h}x{w} ({_RESIZE})"
            ),
        },
        "output": {
            "shape": [None, h, w, len(class_names)],
            "layout": "NHWC",
            "dtype": "float32",
            "meaning": "softmax class probabilities; argmax over the last axis gives class ids",
        },
        "checkpoint": _jsonable(dict(checkpoint or {})),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {"jax": jax.__version__},
        "artifacts": {},
    }
    return deploy.check_metadata(meta, "make_metadata")


def parse_formats(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``config.export.formats`` (comma string or sequence) as a tuple, in ``FORMATS`` order.

    Raises:
      ConfigError: empty, or a name outside ``FORMATS``.
    """
    items = value.split(",") if isinstance(value, str) else list(value or ())
    names = {str(v).strip().lower() for v in items if str(v).strip()}
    unknown = sorted(names - set(FORMATS))
    if unknown or not names:
        raise ConfigError(
            f"config.export.formats={value!r}; expected a comma-separated subset of "
            f"{','.join(FORMATS)}" + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return tuple(f for f in FORMATS if f in names)


# ----------------------------------------------------------------------------------------------
# One writer per format
# ----------------------------------------------------------------------------------------------


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_bytes(path: str, data: bytes) -> None:
    """Writes through a temporary name, so a killed export never leaves half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_json(path: str, obj: Any) -> None:
    _write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _short(e: BaseException, limit: int = 1500) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2 :]


def lower_jax(fn: Callable, image_hw: Sequence[int], platforms: Sequence[str] = PLATFORMS):
    """``jax.export`` of ``fn`` for (batch, H, W, 3) float32 with a symbolic batch size.

    Tries ``platforms`` together; when that lowering fails, lowers for this machine's platform
    alone.

    Returns:
      ``(exported, multi_platform_error)``, the error text None when all platforms lowered.
    """
    h, w = image_hw
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"batch, {h}, {w}, 3"), jnp.float32)
    try:
        return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(spec), None
    except Exception as e:  # lowering rules raise assorted types for an unsupported platform
        error = _short(e)
    logging.warning(
        "export: lowering for %s failed (%s); lowering for this platform", platforms, error
    )
    return jax.export.export(jax.jit(fn))(spec), error


def export_jax(fn: Callable, image_hw: Sequence[int], out_dir: str) -> dict:
    """Writes ``model.jax_export``; returns its record for the metadata."""
    exported, error = lower_jax(fn, image_hw)
    path = os.path.join(out_dir, deploy.JAX_FILE)
    _write_bytes(path, bytes(exported.serialize()))
    return {
        "file": deploy.JAX_FILE,
        "bytes": os.path.getsize(path),
        "sha256": _sha256(path),
        "platforms": list(exported.platforms),
        "multi_platform_error": error,
        "calling_convention_version": exported.calling_convention_version,
    }


@contextlib.contextmanager
def _absl_level_kept():
    """Restores the absl logger's level after TensorFlow's saving code.

    ``tf.saved_model.save`` sets absl's verbosity to FATAL and back to the *effective* level,
    which pins the ``absl`` logger at WARNING: every later ``logging.info`` of the process
    (training progress in a notebook, caplog in tests) would be dropped.
    """
    absl_logger = logging.get_absl_logger()
    level = absl_logger.level
    try:
        yield
    finally:
        absl_logger.setLevel(level)


def _tensorflow():
    """TensorFlow, kept off accelerators first (jax may hold them)."""
    hide_gpus_from_tf()
    return tf


def _tf_function(
    fn: Callable, image_hw: Sequence[int], platforms: Sequence[str], batch: int | None = None
):
    """``fn`` through jax2tf as a tf.function ``images`` -> ``probabilities``.

    The batch size is free unless ``batch`` fixes it.
    """
    _tensorflow()
    h, w = image_hw
    converted = jax2tf.convert(
        fn,
        polymorphic_shapes=None if batch else [f"(batch, {h}, {w}, 3)"],
        with_gradient=False,
        native_serialization_platforms=tuple(platforms),
    )
    return tf.function(
        lambda images: {"probabilities": converted(images)},
        input_signature=[tf.TensorSpec([batch, h, w, 3], tf.float32, name="images")],
        autograph=False,
    )


def export_savedmodel(fn: Callable, image_hw: Sequence[int], meta_path: str, out_dir: str) -> dict:
    """Writes ``savedmodel/`` (jax2tf, batch free); returns its record for the metadata."""
    _tensorflow()
    final = os.path.join(out_dir, deploy.SAVEDMODEL_DIR)
    tmp = f"{final}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    error = None
    platforms: Sequence[str] = PLATFORMS
    for attempt in (PLATFORMS, (jax.export.default_export_platform(),)):
        platforms = attempt
        try:
            serve = _tf_function(fn, image_hw, platforms)
            concrete = serve.get_concrete_function()
            break
        except Exception as e:  # as in lower_jax: retry for this platform alone
            if attempt != PLATFORMS:
                raise
            error = _short(e)
    with open(meta_path, encoding="utf-8") as f:
        text = f.read()
    module = tf.Module()
    module.serve = serve
    module.metadata = tf.function(lambda: tf.constant(text), input_signature=[])
    module.metadata_file = tf.saved_model.Asset(meta_path)  # copied to assets/metadata.json
    tf.saved_model.save(module, tmp, signatures={"serving_default": concrete})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return {
        "dir": deploy.SAVEDMODEL_DIR,
        "signature": "serving_default",
        "input": "images",
        "output": "probabilities",
        "platforms": list(platforms),
        "multi_platform_error": error,
    }


def export_tflite(
    fn: Callable, image_hw: Sequence[int], out_dir: str, batch: int | None = None
) -> dict:
    """Writes ``model.tflite`` (builtin ops; else with select TF ops); returns its record.

    With a free batch size (``batch`` None) every shape in the graph depends on the batch, so
    the converter can fold no BatchNorm into its convolution and broadcasts stay explicit; a
    fixed ``batch`` gives the lean graph (one CONV_2D with fused ReLU per convolution), about
    1.4x faster under XNNPACK at CULane size (BENCHMARKS.md), for that batch size only.

    Raises:
      RuntimeError: the converter rejected the model with both op sets (the message holds the
        converter's reasons).
    """
    _tensorflow()
    # CPU lowering only: TFLite runs the CPU program, and one platform keeps the graph simple.
    holder = tf.Module()
    holder.serve = _tf_function(fn, image_hw, ("cpu",), batch)
    concrete = holder.serve.get_concrete_function()
    builtins = [tf.lite.OpsSet.TFLITE_BUILTINS]
    errors = []
    for ops in (builtins, [*builtins, tf.lite.OpsSet.SELECT_TF_OPS]):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], holder)
        converter.target_spec.supported_ops = ops
        try:
            flatbuffer = converter.convert()
        except Exception as e:  # the converter raises ConverterError and others
            errors.append(f"with {'+'.join(o.name for o in ops)}: {_short(e)}")
            continue
        path = os.path.join(out_dir, deploy.TFLITE_FILE)
        _write_bytes(path, flatbuffer)
        h, w = image_hw
        return {
            "file": deploy.TFLITE_FILE,
            "bytes": os.path.getsize(path),
            "sha256": _sha256(path),
            "ops": [o.name for o in ops],
            "needs_flex_delegate": len(ops) > 1,
            "input_shape_signature": [batch or -1, h, w, 3],
            "fixed_batch": batch,
            "note": (
                f"batch fixed to {batch}"
                if batch
                else "resize_tensor_input(input index, [B, H, W, 3]) before allocate_tensors()"
            ),
        }
    raise RuntimeError("the TFLite converter rejected the model: " + " | ".join(errors))


# ----------------------------------------------------------------------------------------------
# Checking the artifacts against the Flax model
# ----------------------------------------------------------------------------------------------


def run_tflite(path: str, images: np.ndarray, num_threads: int | None = None) -> np.ndarray:
    """Runs ``model.tflite`` on a batch (any batch size); for checks and tests."""
    _tensorflow()
    with warnings.catch_warnings():
        # TF 2.20+ points at the ai_edge_litert package; this interpreter still runs the file.
        warnings.filterwarnings("ignore", TFLITE_DEPRECATION, UserWarning)
        interpreter = tf.lite.Interpreter(model_path=path, num_threads=num_threads)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], np.asarray(images, np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def _check_artifacts(
    fn: Callable,
    paths: Mapping[str, str],
    image_hw: Sequence[int],
    tflite_batch: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """The largest |probability difference| of each artifact from ``fn`` on a random batch."""
    h, w = image_hw
    size = (tflite_batch or 2, h, w, 3)  # batch 2 unless the TFLite file fixes another
    images = np.random.default_rng(seed).uniform(0, 255, size).astype(np.float32)
    want = np.asarray(jax.jit(fn)(images))
    got = {}
    if "jax" in paths:
        got["jax"] = deploy.load(paths["jax"])(images)
    if "savedmodel" in paths:
        loaded = _tensorflow().saved_model.load(paths["savedmodel"])
        got["savedmodel"] = loaded.signatures["serving_default"](images=images)["probabilities"]
    if "tflite" in paths:
        got["tflite"] = run_tflite(paths["tflite"], images)
    return {k: float(np.max(np.abs(np.asarray(v) - want))) for k, v in got.items()}


# ----------------------------------------------------------------------------------------------
# Library entry point
# ----------------------------------------------------------------------------------------------


def export_model(
    model,
    variables: Mapping[str, Any],
    metadata: Mapping[str, Any],
    out_dir: str,
    formats: str | Sequence[str] = FORMATS,
    check: bool = True,
    tflite_batch: int | None = None,
) -> dict:
    """Writes the artifacts of ``formats`` for a model and its variables into ``out_dir``.

    A format whose conversion fails is reported (``failed``: format -> reason) and the others
    are still written; previous artifacts in ``out_dir`` are replaced, stale ones removed.

    Args:
      model: a registry model.
      variables: its ``params`` and ``batch_stats``.
      metadata: ``make_metadata(...)`` (validated again here); its input size, mean and std
        define the exported function.
      out_dir: the export folder (created).
      formats: any of ``FORMATS`` (comma string or sequence).
      check: run every artifact once on a random batch and record its largest difference from
        the Flax model (``max_abs_diff``).
      tflite_batch: None (default) for a TFLite file with a free batch size; a batch size to
        fix it to, for a leaner and faster graph (see ``export_tflite``).

    Returns:
      The summary also written to ``export.json``: ``output``, ``metadata`` (path), ``paths``
      (format -> path of each written artifact), ``artifacts`` (format -> record), ``failed``,
      ``max_abs_diff``.

    Raises:
      ConfigError: unknown formats, or a ``tflite_batch`` that is not a positive int.
      deploy.ArtifactError: malformed metadata.
    """
    formats = parse_formats(formats)
    if tflite_batch is not None and (
        isinstance(tflite_batch, bool) or not isinstance(tflite_batch, int) or tflite_batch < 1
    ):
        raise ConfigError(f"tflite_batch={tflite_batch!r}; expected None or a positive int")
    meta = copy.deepcopy(deploy.check_metadata(dict(metadata), "metadata"))
    image_hw = tuple(meta["input"]["hw"])
    fn = inference_function(model, variables, meta["input"]["mean_rgb"], meta["input"]["std_rgb"])
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    for stale in (deploy.JAX_FILE, deploy.TFLITE_FILE, deploy.SUMMARY_FILE):
        if os.path.exists(os.path.join(out_dir, stale)):
            os.remove(os.path.join(out_dir, stale))
    shutil.rmtree(os.path.join(out_dir, deploy.SAVEDMODEL_DIR), ignore_errors=True)
    meta_path = os.path.join(out_dir, deploy.METADATA_FILE)
    meta["artifacts"] = {}
    if {"savedmodel", "tflite"} & set(formats):
        meta["versions"]["tensorflow"] = _tensorflow().__version__
    _write_json(meta_path, meta)  # the SavedModel carries this first version as an asset

    writers = {
        "jax": lambda: export_jax(fn, image_hw, out_dir),
        "savedmodel": lambda: export_savedmodel(fn, image_hw, meta_path, out_dir),
        "tflite": lambda: export_tflite(fn, image_hw, out_dir, tflite_batch),
    }
    paths, failed = {}, {}
    for fmt in formats:
        start = time.perf_counter()
        logging.info("export: writing %s", fmt)
        try:
            with _absl_level_kept():
                record = writers[fmt]()
        except Exception as e:  # one format failing must not lose the others
            failed[fmt] = _short(e, 4000)
            logging.warning("export: %s failed: %s", fmt, failed[fmt])
            continue
        record["seconds"] = round(time.perf_counter() - start, 2)
        meta["artifacts"][fmt] = record
        paths[fmt] = os.path.join(out_dir, record.get("file") or record["dir"])
        logging.info("export: %s -> %s (%.1f s)", fmt, paths[fmt], record["seconds"])
    _write_json(meta_path, meta)

    with _absl_level_kept():
        diffs = _check_artifacts(fn, paths, image_hw, tflite_batch) if check else {}
    for fmt, diff in diffs.items():
        meta["artifacts"][fmt]["max_abs_diff"] = diff
        meta["artifacts"][fmt]["check_passed"] = diff <= CHECK_TOLERANCE
        if diff > CHECK_TOLERANCE:
            # Kept on disk for inspection, but not offered as a working artifact.
            failed[fmt] = (
                f"written to {paths.pop(fmt)}, but its probabilities differ from the Flax "
                f"model's by up to {diff:.3g} on a random batch (tolerance {CHECK_TOLERANCE:g})"
            )
            logging.warning("export: %s", failed[fmt])
    _write_json(meta_path, meta)
    summary = {
        "output": out_dir,
        "metadata": meta_path,
        "paths": paths,
        "artifacts": meta["artifacts"],
        "failed": failed,
        "max_abs_diff": diffs,
        "model": meta["model"],
        "checkpoint": meta["checkpoint"],
    }
    _write_json(os.path.join(out_dir, deploy.SUMMARY_FILE), summary)
    return summary


# ----------------------------------------------------------------------------------------------
# mode=export
# ----------------------------------------------------------------------------------------------


# The benchmarks' official frame sizes: the source frame size of a real-data config whose data
# is not on this machine.
def export_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Writes the artifacts of ``config.export.formats`` for ``config.checkpoint``.

    ``config.checkpoint`` is one stage directory (its ``best/`` checkpoint, else the newest of
    ``checkpoints/``), a manager directory, a step folder, or a PyTorch/safetensors file with
    ``config.checkpoint_arch``. The input size is ``config.data.image_hw``; class names, mean,
    std and crop come from ``config.data``.

    Returns:
      The summary ``export_model`` returns (also in ``<output>/export.json``).

    Raises:
      ConfigError: no or several checkpoints, unknown formats.
      checkpointing.CheckpointError: the checkpoint is missing, or was trained on another
        dataset than ``config.data`` names (its class names would be wrong).
    """
    path = (config.get("checkpoint") or "").strip()
    if not path or "," in path:
        raise ConfigError(
            f"config.checkpoint={config.get('checkpoint')!r}: mode=export needs exactly one "
            "checkpoint, e.g. --config.checkpoint=runs/demo/distill (a stage dir, its best/ or "
            "checkpoints/, a step folder, or a PyTorch file with --config.checkpoint_arch)"
        )
    export_config = config.get("export") or ml_collections.ConfigDict()
    formats = parse_formats(export_config.get("formats") or ",".join(FORMATS))
    out_dir = export_config.get("output") or os.path.join(workdir, "export")
    dataset, source_hw, source_from = building.inference_dataset(config.data)
    info, options = dataset.info, dataset.options
    mesh = parallel.make_data_mesh(1)
    model, variables, step, meta = building.load_eval_checkpoint(config, path, info, mesh)
    trained_on = meta.get("dataset")
    if trained_on is not None and trained_on != info.name:
        raise checkpointing.CheckpointError(
            f"checkpoint {path} was trained on {trained_on}, but config.data.name is "
            f"{info.name!r}: the export would label its outputs with {info.name}'s classes; use "
            f"the {trained_on} config"
        )
    trained_hw = meta.get("image_hw")
    if trained_hw and tuple(trained_hw) != tuple(info.image_hw):
        logging.info(
            "export: checkpoint trained at %s, exporting at config.data.image_hw=%s",
            tuple(trained_hw),
            tuple(info.image_hw),
        )
    checkpoint = {
        "path": os.path.abspath(path),
        "step": int(step),
        "stage": meta.get("stage"),
        "trained_image_hw": trained_hw,
        "dtype": config.dtype,
    }
    if "source_meta" in meta:
        checkpoint["source_meta"] = meta["source_meta"]
    metadata = make_metadata(
        model_name=meta["model"],
        class_names=info.class_names,
        image_hw=info.image_hw,
        mean_rgb=options.mean_rgb,
        std_rgb=options.std_rgb,
        crop_top=options.crop_top,
        source_hw=source_hw,
        source_from=source_from,
        dataset=info.name,
        model_kwargs=meta.get("model_kwargs"),
        checkpoint=checkpoint,
    )
    print(
        f"Exporting {meta['model']} (step {step} of {path}) at {info.image_hw[0]}x"
        f"{info.image_hw[1]}, {info.num_classes} classes, as {', '.join(formats)} -> {out_dir}"
    )
    # tflite_batch: not a field of configs/default.py yet; read when a config has it.
    summary = export_model(
        model, variables, metadata, out_dir, formats, tflite_batch=export_config.get("tflite_batch")
    )
    lines = [f"  metadata     {summary['metadata']}"]
    for fmt, p in summary["paths"].items():
        diff = summary["max_abs_diff"].get(fmt)
        check = "" if diff is None else f"  (max |diff| vs Flax {diff:.1e})"
        lines.append(f"  {fmt:12s} {p}{check}")
    for fmt, reason in summary["failed"].items():
        lines.append(f"  {fmt:12s} FAILED: {reason}")
    lines.append(f"  summary      {os.path.join(summary['output'], deploy.SUMMARY_FILE)}")
    print("\n".join(["Export written:", *lines]))
    return summary
