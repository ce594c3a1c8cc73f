"""Building what a run needs from its config: models, their abstract variables, the teacher, data.

Shared by the training stages (``intrakd_jax.stage``), the batch evaluation job and the
benchmarks, so a model named in a config is built, checked and loaded one way everywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

import data_pipelines
from data_pipelines.formats import apolloscape as apolloscape_format
from data_pipelines.formats import culane as culane_format
from data_pipelines.formats import llamas as llamas_format
from intrakd_jax import checkpointing, models, parallel, weights
from intrakd_jax.errors import ConfigError

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
    """The models' compute dtype named by ``config.dtype``.

    Raises:
      ConfigError: an unknown dtype name.
    """
    if config.dtype not in _DTYPES:
        raise ConfigError(f"config.dtype={config.dtype!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[config.dtype]


def build_model(
    name: str,
    model_kwargs: Mapping[str, Any],
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


def jsonish(x: Any) -> Any:
    """Normalises tuples to lists (a JSON round trip), for comparing model arguments."""
    return json.loads(json.dumps(x))


def abstract_variables(model, image_hw, mesh=None) -> dict:
    """``jax.ShapeDtypeStruct``s of a model's ``params`` and ``batch_stats``, nothing computed.

    Args:
      model: a registry model.
      image_hw: the input size the variables are built for.
      mesh: when given, every leaf carries the replicated sharding over it (for restoring).
    """
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_hw, 3)), train=False)
    )
    sharding = parallel.replicated(mesh) if mesh is not None else None
    return {
        k: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), v)
        for k, v in shapes.items()
        if k in ("params", "batch_stats")
    }


def model_kwargs(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The arguments of ``model_config.model`` (``config.teacher`` or ``config.student``).

    ``model_kwargs`` is either the model's arguments (the teacher) or one section of arguments
    per model name (the student: ``model_kwargs.<model>``).

    Raises:
      ConfigError: sections per model, but none for the chosen one.
    """
    kwargs = dict(model_config.model_kwargs)
    sections = {
        k: v for k, v in kwargs.items() if isinstance(v, Mapping | ml_collections.ConfigDict)
    }
    if not sections:
        return kwargs
    if model_config.model not in sections:
        raise ConfigError(
            f"model={model_config.model!r} has no section in model_kwargs (sections: "
            f"{sorted(sections)}); the registry's models are {models.list_models()}"
        )
    return dict(sections[model_config.model])


# Model arguments that change how a model computes, not which arrays it has: a checkpoint trained
# with one value runs, resumes and distils with any other.
RUNTIME_KWARGS = frozenset({"conv_impl", "remat"})


def _architecture(kwargs: Any) -> Any:
    if not isinstance(kwargs, dict):
        return kwargs
    return {k: v for k, v in kwargs.items() if k not in RUNTIME_KWARGS}


def check_checkpoint_model(meta: Mapping[str, Any], model_config, what: str, fix: str) -> None:
    """Fails when a checkpoint holds another architecture than ``model_config`` asks for.

    ``RUNTIME_KWARGS`` (the convolution implementation, rematerialisation) are not compared.

    Args:
      meta: the checkpoint's metadata (``model``, ``model_kwargs``).
      model_config: ``config.teacher`` or ``config.student``.
      what: names the checkpoint in the message.
      fix: what the user can do about it.

    Raises:
      checkpointing.CheckpointError: model name or arguments differ.
    """
    want_kwargs = _architecture(jsonish(model_kwargs(model_config)))
    have_kwargs = _architecture(jsonish(meta.get("model_kwargs")))
    if meta.get("model") == model_config.model and isinstance(have_kwargs, dict):
        # A checkpoint written before a model option existed was built with its default.
        defaults = models.model_defaults(model_config.model)
        for a, b in ((have_kwargs, want_kwargs), (want_kwargs, have_kwargs)):
            a.update({k: jsonish(defaults[k]) for k in set(b) - set(a) if k in defaults})
    if meta.get("model") != model_config.model or have_kwargs != want_kwargs:
        raise checkpointing.CheckpointError(
            f"{what} holds {meta.get('model')} {meta.get('model_kwargs')}, but the config asks "
            f"for {model_config.model} {want_kwargs}; {fix}"
        )


def _checkpoint_arch(arch: str | None, path: str, field: str) -> str:
    """The arch of a PyTorch/safetensors file given in a config; ConfigError when unset."""
    if not arch:
        raise ConfigError(
            f"{path} is a PyTorch/safetensors file: set {field} to its arch, one of "
            f"{', '.join(weights.ARCHS)} (e.g. intrakd_pspnet for pspnet_46_6.pth.tar)"
        )
    spec = weights.get_arch(arch)
    if not spec.has_classifier:
        raise ConfigError(
            f"{field}={arch!r} holds a backbone only (no classifier), so it cannot be evaluated "
            "or distilled from; start a training stage from it with config.<teacher|student>"
            ".init_from instead"
        )
    return arch


def import_for_inference(path: str, arch: str, num_classes: int, dtype: Any, mesh):
    """A released PyTorch/safetensors model, its variables replicated on ``mesh``, and metadata.

    The model reads the project's RGB input. Returns ``(model, variables, meta)`` with the
    checkpoint's plain values (``epoch``, ``arch``, ``best_mIoU``) as metadata.
    """
    ckpt = weights.read_checkpoint(path)
    model, variables = weights.import_checkpoint(ckpt, arch, num_classes=num_classes, dtype=dtype)
    return model, parallel.replicate(variables, mesh), ckpt.meta


def load_eval_checkpoint(config: ml_collections.ConfigDict, path: str, info, mesh):
    """The model and variables of one ``config.checkpoint`` entry for the evaluation job.

    A stage checkpoint (orbax) names its model in its metadata; a PyTorch/safetensors file
    (e.g. the released ``pspnet_46_6.pth.tar``) is imported as ``config.checkpoint_arch``.

    Returns:
      ``(model, variables, step, meta)``; ``meta["model"]`` names the model.
    """
    dtype = compute_dtype(config)
    if weights.is_torch_checkpoint(path):
        arch = _checkpoint_arch(config.get("checkpoint_arch"), path, "config.checkpoint_arch")
        model, variables, file_meta = import_for_inference(
            path, arch, info.num_classes, dtype, mesh
        )
        step = file_meta.get("epoch", 0)
        meta = {"model": arch, "source_meta": file_meta}
        return model, variables, step if isinstance(step, int) else 0, meta
    _, step, meta = checkpointing.read_meta(path)
    model = build_model(meta["model"], meta.get("model_kwargs", {}), info.num_classes, dtype, False)
    abstract = abstract_variables(model, info.image_hw, mesh)
    variables, _ = checkpointing.load_variables(path, abstract, "config.checkpoint")
    return model, variables, step, meta


def build_teacher(config: ml_collections.ConfigDict, num_classes: int, dtype: Any):
    """The teacher model of ``config.teacher`` for inference (frozen: running BN statistics).

    A PyTorch/safetensors ``config.teacher.checkpoint`` gives the model of its arch
    (``config.teacher.checkpoint_arch``) instead of ``config.teacher.model``.
    """
    path = config.teacher.checkpoint
    if weights.is_torch_checkpoint(path):
        field = "config.teacher.checkpoint_arch"
        arch = _checkpoint_arch(config.teacher.get("checkpoint_arch"), path, field)
        return weights.arch_model(arch, num_classes, dtype=dtype)
    return build_model(
        config.teacher.model,
        model_kwargs(config.teacher),
        num_classes,
        dtype,
        False,
        "config.teacher.model",
    )


def load_teacher(config: ml_collections.ConfigDict, default_path: str, teacher, image_hw, mesh):
    """The frozen teacher's variables from ``config.teacher.checkpoint``, replicated on ``mesh``.

    Args:
      config: the run's config.
      default_path: where the teacher is when ``config.teacher.checkpoint`` is unset.
      teacher: the teacher model (``build_teacher``).
      image_hw: the input size.
      mesh: the data mesh the variables are replicated over.

    Raises:
      checkpointing.CheckpointError: no checkpoint there, or one of another architecture.
    """
    path = config.teacher.checkpoint or default_path
    what = "teacher checkpoint (config.teacher.checkpoint)"
    if weights.is_torch_checkpoint(path):
        field = "config.teacher.checkpoint_arch"
        arch = _checkpoint_arch(config.teacher.get("checkpoint_arch"), path, field)
        _, variables, _ = import_for_inference(path, arch, teacher.num_classes, teacher.dtype, mesh)
        return variables
    try:
        _, _, meta = checkpointing.read_meta(path)
    except checkpointing.CheckpointError as e:
        raise checkpointing.CheckpointError(
            f"{e}\nThe distill stage needs a trained teacher: run --config.mode=teacher with the "
            f"same --workdir first, or set config.teacher.checkpoint."
        ) from None
    check_checkpoint_model(
        meta, config.teacher, f"{what} at {path}", "set config.teacher to match it"
    )
    variables, _ = checkpointing.load_variables(
        path, abstract_variables(teacher, image_hw, mesh), what
    )
    return variables


def tap_names(model, image_hw) -> list[str]:
    """The names of a model's feature taps, sorted (nothing computed)."""
    (_, taps), _ = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, *image_hw, 3)))
    )
    return sorted(taps)


def prepared_dataset(data_config: ml_collections.ConfigDict):
    """The dataset named by ``config.data``, prepared (synthetic twin written, labels cached)."""
    dataset = data_pipelines.get_dataset(data_config)
    dataset.prepare()
    return dataset


# The official frame size of each benchmark: what config.data.crop_top refers to when the
# dataset's own frames are not on this machine.
OFFICIAL_FRAME_HW = {
    "culane": culane_format.IMAGE_HW,
    "llamas": llamas_format.IMAGE_HW,
    "apolloscape": apolloscape_format.IMAGE_HW,
}


def inference_dataset(data_config: ml_collections.ConfigDict):
    """The dataset's class table, input options and frame size, without needing its files.

    For jobs that run a model on other inputs (mode=predict, export). The frame size (what
    ``crop_top`` counts rows of) is read from the dataset's own frames when they are on this
    machine (a synthetic twin only once generated: nothing is generated here), else it is the
    synthetic twin's ``image_wh``, else the benchmark's official frame size.

    Returns:
      ``(dataset, frame_hw, frame_from)``: the reader (serving at least ``info`` and
      ``options``), the (height, width) or None, and where it came from (for logs and metadata).
    """
    data_dir = data_config.get("data_dir")
    if data_dir and os.path.isdir(data_dir) and os.listdir(data_dir):
        split = data_config.get("eval_split") or "valid"
        try:
            reader = data_pipelines.get_dataset(data_config)
            return reader, tuple(reader.source_image_hw(split)), f"the {split} frames in {data_dir}"
        except (data_pipelines.DataError, OSError, ValueError, IndexError, KeyError):
            pass
    dataset = data_pipelines.get_dataset(data_config, need_files=False)
    synthetic = data_config.get("synthetic")
    is_synthetic = bool(synthetic is not None and synthetic.get("enabled"))
    if is_synthetic and synthetic.get("image_wh"):
        width, height = synthetic.image_wh
        return dataset, (int(height), int(width)), "the synthetic twin's image_wh"
    name = dataset.info.name
    if name in OFFICIAL_FRAME_HW:
        return dataset, tuple(OFFICIAL_FRAME_HW[name]), f"the official {name} frame size"
    return dataset, None, None


def check_config(config: ml_collections.ConfigDict) -> None:
    """Checks what every mode needs before anything is written: dataset, dtype, models.

    Reads no data (the dataset root's layout is looked at, except for predict/export, which run
    on other inputs) and builds no parameters.

    Raises:
      data_pipelines.DataConfigError: an unknown dataset, an invalid ``config.data`` field, or a
        data_dir that is not the dataset's root, a field of the wrong type (the field is named).
      ConfigError: an unknown dtype, or a teacher/student model name or argument that does not
        exist (the message names the field).
    """
    # Names looked up in tables below: a list or dict there would fail with "unhashable type".
    for field, value in (
        ("dtype", config.get("dtype")),
        ("data.name", config.data.get("name")),
        ("teacher.model", config.teacher.get("model")),
        ("student.model", config.student.get("model")),
    ):
        if not isinstance(value, str):
            error = data_pipelines.DataConfigError if field.startswith("data.") else ConfigError
            raise error(f"config.{field} must be a name (a string), got {value!r}")
    # The data folder itself is checked too, except for jobs that run on other inputs.
    need_files = config.get("mode") not in ("predict", "export")
    info = data_pipelines.get_dataset(config.data, need_files=need_files).info
    dtype = compute_dtype(config)
    for role in ("teacher", "student"):
        section = config[role]
        if role == "teacher" and weights.is_torch_checkpoint(section.get("checkpoint")):
            continue  # the model comes from the checkpoint's arch
        build_model(
            section.model,
            model_kwargs(section),
            info.num_classes,
            dtype,
            False,
            f"config.{role}.model",
        )
