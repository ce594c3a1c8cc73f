"""Placing a PyTorch checkpoint's arrays into a project model's variables.

Names: every Flax array has one checkpoint name, given by the arch (``archs.py``): the module path
renamed, and the leaf ``kernel``/``scale`` -> ``weight``, ``bias`` -> ``bias``, BatchNorm
``mean``/``var`` -> ``running_mean``/``running_var``. Layouts: a conv weight ``(out, in, kh, kw)``
becomes the kernel ``(kh, kw, in, out)``; a ``ConvTranspose2d`` weight ``(in, out, kh, kw)``
becomes ``(kh, kw, out, in)``, the layout of the project's transposed convolutions
(``transpose_kernel=True``), by the same transpose and without a spatial flip (the parity tests
prove both by equal outputs). PyTorch BatchNorm momentum m is Flax momentum 1 - m; the running
statistics carry over as they are.

Every checkpoint entry is placed, declared unused by the arch (e.g. ``fc``), or set aside
(``num_batches_tracked``); anything else, an array the covered part of the model needs but the
file lacks, or a shape that differs is an error listing the names with both shapes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from intrakd_jax import models, steps
from intrakd_jax.weights.archs import ARCHS, Arch, get_arch
from intrakd_jax.weights.readers import TorchCheckpoint, WeightsError, read_checkpoint

CHANNEL_ORDERS = ("rgb", "bgr")
# (collection, Flax leaf) -> checkpoint leaf
_LEAVES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_SHOWN = 8  # names listed per kind of problem


@dataclasses.dataclass
class ImportReport:
    """What an import did with every checkpoint entry and every model array.

    Attributes:
      source: the checkpoint file.
      arch: the arch name.
      imported: checkpoint names placed in the model.
      unused: checkpoint names consumed without a place in the model (the arch's ``unused``).
      counters: ``num_batches_tracked`` names set aside.
      kept: ``"<flax path>: <why>"`` for model arrays that keep their initialisation.
      num_model_arrays: arrays of the model (params and batch_stats).
    """

    source: str
    arch: str
    imported: list[str] = dataclasses.field(default_factory=list)
    unused: list[str] = dataclasses.field(default_factory=list)
    counters: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)
    num_model_arrays: int = 0

    def summary(self) -> str:
        """One paragraph for the logs."""
        lines = [
            f"imported {len(self.imported)} of {self.num_model_arrays} model arrays from "
            f"{self.source} ({self.arch})",
        ]
        if self.unused:
            lines.append(f"{len(self.unused)} checkpoint arrays unused: {_short(self.unused)}")
        if self.counters:
            lines.append(f"{len(self.counters)} num_batches_tracked counters ignored")
        if self.kept:
            lines.append(f"{len(self.kept)} arrays keep their initialisation: {_short(self.kept)}")
        return "; ".join(lines)


def _short(names: list[str]) -> str:
    more = f", ... ({len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


@dataclasses.dataclass(frozen=True)
class _Target:
    key: str  # "params/encoder/initial_block/conv/kernel"
    module: str  # "encoder/initial_block/conv"
    torch_shape: tuple[int, ...]


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


def _to_flax(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0)) if array.ndim == 4 else array


def _targets(arch: Arch, flat: Mapping[str, Any]) -> tuple[dict[str, _Target], list[str]]:
    """Checkpoint name -> model array, and the model arrays the checkpoint does not cover."""
    targets, uncovered = {}, []
    for key, leaf in flat.items():
        collection, *module_parts, name = key.split("/")
        module = "/".join(module_parts)
        torch_module = arch.torch_module(module) if module.startswith(arch.covers) else None
        if torch_module is None or (collection, name) not in _LEAVES:
            uncovered.append(key)
            continue
        torch_name = f"{torch_module}.{_LEAVES[(collection, name)]}"
        targets[torch_name] = _Target(key, module, _torch_shape(tuple(leaf.shape)))
    return targets, uncovered


def _match(ckpt: TorchCheckpoint, arch: Arch, targets: dict[str, _Target], new_head_ok: bool):
    """Sorts the checkpoint's entries; raises WeightsError listing what does not fit."""
    placed, unused, kept, unmatched, mismatched = {}, [], [], [], []
    for name, array in ckpt.arrays.items():
        target = targets.get(name)
        if target is None:
            (unused if re.search(arch.unused, name) else unmatched).append(name)
        elif array.shape == target.torch_shape:
            placed[name] = target
        elif new_head_ok and target.module in arch.head:
            kept.append(f"{target.key}: checkpoint {name} has shape {array.shape}")
        else:
            mismatched.append(
                f"{name}: checkpoint {tuple(array.shape)}, model expects {target.torch_shape}"
            )
    missing = sorted((n for n in targets if n not in ckpt.arrays), key=_natural)
    problems = []
    if unmatched:
        shown = [f"{n} {tuple(ckpt.arrays[n].shape)}" for n in unmatched]
        problems.append(f"{len(unmatched)} checkpoint arrays have no place in the model: ")
        problems[-1] += _short(shown)
    if missing:
        shown = [f"{n} {targets[n].torch_shape}" for n in missing]
        problems.append(f"{len(missing)} model arrays are missing from the checkpoint: ")
        problems[-1] += _short(shown)
    if mismatched:
        problems.append(f"{len(mismatched)} arrays differ in shape: {_short(mismatched)}")
    if problems:
        raise WeightsError(
            f"{ckpt.path} does not fit arch {arch.name!r} ({arch.model} "
            f"{dict(arch.model_kwargs)}):\n  " + "\n  ".join(problems) + "\nIs it a checkpoint "
            f"of another arch? Known archs: {', '.join(ARCHS)}"
        )
    return placed, unused, kept


def _natural(name: str) -> list:
    """Sort key putting ``layer3.10`` after ``layer3.9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _flip_input_channels(arch: Arch, model: nn.Module, channel_order: str) -> bool:
    """Whether the first conv's input channels are reversed; checks the model's flip field."""
    if channel_order not in CHANNEL_ORDERS:
        raise WeightsError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    flip = channel_order != arch.channel_order
    if arch.flip_field is None:
        return flip
    have = getattr(model, arch.flip_field, None)
    if have is not flip:
        raise WeightsError(
            f"{arch.name} weights were trained on {arch.channel_order.upper()} images and the "
            f"model reads {channel_order.upper()} input, so {type(model).__name__} needs "
            f"{arch.flip_field}={flip} (it has {have!r}); set it in the model's arguments"
        )
    return False


def _place(array: np.ndarray, like: Any) -> Any:
    """The array as a jax array with ``like``'s dtype and sharding (replicated in a stage)."""
    sharding = getattr(like, "sharding", None)
    value = array.astype(like.dtype)
    return jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)


def load_into(
    variables: Mapping[str, Any],
    ckpt: TorchCheckpoint,
    arch: str | Arch,
    model: nn.Module,
    *,
    channel_order: str = "rgb",
    new_head_ok: bool = False,
) -> tuple[dict[str, Any], ImportReport]:
    """Overwrites a model's variables with the arrays of a checkpoint.

    Args:
      variables: ``{"params": ..., "batch_stats": ...}`` of ``model``: arrays (an initialised
        model; arrays outside the checkpoint keep their values) or ``jax.ShapeDtypeStruct``s
        (only when the checkpoint covers the whole model).
      ckpt: the checkpoint (``readers.read_checkpoint``).
      arch: an arch name of ``archs.ARCHS`` or the arch.
      model: the model the variables belong to (checked for the channel-order field).
      channel_order: the channel order of the images the model will read ("rgb": the project's
        pipeline).
      new_head_ok: a head layer (``Arch.head``) of another shape keeps its initialisation
        instead of being an error (fine-tuning to another class count).

    Returns:
      ``(variables, report)``; the variables keep the input's structure, dtypes and shardings.

    Raises:
      WeightsError: the checkpoint does not fit (names listed with shapes), or the model's
        channel-order field contradicts ``channel_order``.
    """
    arch = get_arch(arch) if isinstance(arch, str) else arch
    flip = _flip_input_channels(arch, model, channel_order)
    flat = traverse_util.flatten_dict(
        {k: v for k, v in variables.items() if k in ("params", "batch_stats")}, sep="/"
    )
    targets, uncovered = _targets(arch, flat)
    placed, unused, kept = _match(ckpt, arch, targets, new_head_ok)
    report = ImportReport(
        source=ckpt.path,
        arch=arch.name,
        unused=unused,
        counters=list(ckpt.counters),
        kept=kept + [f"{key}: not in a {arch.name} checkpoint" for key in uncovered],
        num_model_arrays=len(flat),
    )
    for name, target in placed.items():
        array = _to_flax(ckpt.arrays[name])
        if flip and target.module == arch.flip_kernel:
            array = np.ascontiguousarray(array[:, :, ::-1, :])
        flat[target.key] = _place(array, flat[target.key])
        report.imported.append(name)
    abstract = [k for k, v in flat.items() if isinstance(v, jax.ShapeDtypeStruct)]
    if abstract:
        raise ValueError(f"load_into: no value for {_short(abstract)}; pass initialised variables")
    return traverse_util.unflatten_dict(flat, sep="/"), report


def arch_model(
    arch: str,
    num_classes: int,
    *,
    channel_order: str = "rgb",
    dtype: Any = jnp.float32,
    bn_axis_name: str | None = None,
) -> nn.Module:
    """The project model an arch's checkpoint fills (registry model with the arch's arguments).

    Raises:
      WeightsError: unknown arch or channel order.
    """
    spec = get_arch(arch)
    if channel_order not in CHANNEL_ORDERS:
        raise WeightsError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    kwargs = dict(spec.model_kwargs)
    if spec.flip_field:
        kwargs[spec.flip_field] = channel_order != spec.channel_order
    return models.get_model(
        spec.model, num_classes=num_classes, dtype=dtype, bn_axis_name=bn_axis_name, **kwargs
    )


def checkpoint_num_classes(ckpt: TorchCheckpoint, arch: str) -> int | None:
    """The class count of a checkpoint's classifier (None: the arch or the file has none)."""
    spec = get_arch(arch)
    name = f"{spec.torch_module(spec.head[0])}.bias" if spec.has_classifier else ""
    return int(ckpt.arrays[name].shape[0]) if name in ckpt.arrays else None


def import_torch_checkpoint(
    path: str,
    arch: str,
    *,
    num_classes: int | None = None,
    channel_order: str = "rgb",
    dtype: Any = jnp.float32,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """A project model and its variables from a PyTorch or safetensors checkpoint.

    ``model.apply(variables, images_bhwc, train=False)`` returns ``(logits, taps)`` whose logits
    equal the PyTorch model's output on the same images (NCHW there): with ``channel_order``
    "rgb" the model reads the project's RGB input (for a BGR checkpoint, the input channels of
    the first layer are reversed), with the checkpoint's own order it reads exactly the tensor
    the original code fed. Input normalisation is the arch's (``Arch.input_note``): the released
    IntRA-KD models take the project's default ``data.mean_rgb`` and ``std_rgb`` as they are.

    Args:
      path: ``.pth``, ``.pth.tar``, ``.pt`` or ``.safetensors`` file.
      arch: a name of ``archs.ARCHS`` (``intrakd_erfnet``, ``intrakd_pspnet``,
        ``torchvision_resnet{18,34,50,101}``, ``erfnet_imagenet_encoder``).
      num_classes: classes of the model; None takes the checkpoint's (archs with a classifier).
        For a backbone arch the rest of the model is initialised from ``seed``.
      channel_order: "rgb" or "bgr", the order of the images the model will read.
      dtype: compute dtype of the model (parameters stay float32).
      seed: initialisation of the arrays the checkpoint does not hold.

    Returns:
      ``(model, variables)`` with ``params`` and ``batch_stats``.

    Raises:
      WeightsError: unreadable file, unknown arch, or a checkpoint that does not fit.
    """
    return import_checkpoint(
        read_checkpoint(path),
        arch,
        num_classes=num_classes,
        channel_order=channel_order,
        dtype=dtype,
        seed=seed,
    )


def import_checkpoint(
    ckpt: TorchCheckpoint,
    arch: str,
    *,
    num_classes: int | None = None,
    channel_order: str = "rgb",
    dtype: Any = jnp.float32,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """``import_torch_checkpoint`` of a checkpoint already read (``read_checkpoint``)."""
    spec = get_arch(arch)
    path = ckpt.path
    found = checkpoint_num_classes(ckpt, arch)
    if num_classes is None:
        if not spec.has_classifier:
            raise WeightsError(
                f"{path}: a {arch} checkpoint has no classifier; pass num_classes for the new head"
            )
        # A file without the classifier is no checkpoint of this arch: load_into lists why.
        num_classes = found or 1
    elif found is not None and found != num_classes:
        raise WeightsError(
            f"{path}: the {arch} checkpoint predicts {found} classes, but {num_classes} were "
            "asked for; fine-tune it (config.<teacher|student>.init_from) for another class count"
        )
    model = arch_model(arch, num_classes, channel_order=channel_order, dtype=dtype)
    images = jnp.zeros((1, 64, 64, 3), jnp.float32)
    if spec.has_classifier:
        init = jax.eval_shape(lambda: model.init(jax.random.key(seed), images, train=False))
    else:
        init = steps.run_once(lambda k: model.init(k, images, train=False), jax.random.key(seed))
    variables, report = load_into(init, ckpt, spec, model, channel_order=channel_order)
    logging.info("%s", report.summary())
    return model, variables
