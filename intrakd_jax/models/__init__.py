"""Segmentation models (Flax Linen, NHWC) and a name registry.

Every model is called as ``logits_bhwk, taps = model.apply(variables, images_bhwc, train=False)``
and has the attributes ``num_classes``, ``dtype``, ``bn_axis_name``, ``bn_momentum`` and
``conv_impl``, and the class attributes ``tap_levels`` ("high": the tap of the 1/8 high-level map,
"mid": the 1/4 middle-level map) and ``sad_taps`` (successive block outputs for self-attention
distillation, earliest first), all naming entries of ``taps``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax

from intrakd_jax.models.enet import ENet
from intrakd_jax.models.erfnet import ERFNet
from intrakd_jax.models.pspnet import PSPNet, adaptive_avg_pool2d
from intrakd_jax.models.resnet import DilatedResNet
from intrakd_jax.models.resnet_student import ResNetStudent

__all__ = [
    "DilatedResNet",
    "ENet",
    "ERFNet",
    "PSPNet",
    "ResNetStudent",
    "adaptive_avg_pool2d",
    "count_params",
    "get_model",
    "list_models",
    "model_defaults",
]

# name -> (module class, attributes fixed by the name)
_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "enet": (ENet, {}),
    "erfnet": (ERFNet, {}),
    "resnet_student": (ResNetStudent, {}),
    "resnet18": (ResNetStudent, {"depth": 18}),
    "resnet34": (ResNetStudent, {"depth": 34}),
    "pspnet": (PSPNet, {}),
    "pspnet_resnet18": (PSPNet, {"depth": 18}),
    "pspnet_resnet34": (PSPNet, {"depth": 34}),
    "pspnet_resnet50": (PSPNet, {"depth": 50}),
    "pspnet_resnet101": (PSPNet, {"depth": 101}),
}

# Dataclass fields every Linen module has that are not model options.
_LINEN_INTERNAL_FIELDS = frozenset({"parent", "name"})


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(_REGISTRY)


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds a model by registry name.

    Args:
      name: One of :func:`list_models`: students "enet", "erfnet", "resnet18", "resnet34" (or
        "resnet_student" with a ``depth`` kwarg); teachers "pspnet" (with ``depth``) or
        "pspnet_resnet{18,34,50,101}").
      **kwargs: Module attributes, e.g. ``num_classes=37, dtype=jnp.bfloat16``.

    Returns:
      The unbound Linen module.

    Raises:
      ValueError: For an unknown name, or a kwarg that contradicts the name (e.g.
        ``get_model("pspnet_resnet50", depth=101)``).
      TypeError: For a kwarg the model does not have.
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model name {name!r}; known models: {', '.join(list_models())}")
    cls, fixed = _REGISTRY[name]
    accepted = {f.name for f in dataclasses.fields(cls) if f.init} - _LINEN_INTERNAL_FIELDS
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"get_model({name!r}): unknown argument(s) {unknown}; {cls.__name__} accepts "
            f"{sorted(accepted)}"
        )
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(
                f"get_model({name!r}): {key}={kwargs[key]!r} contradicts the model name, which "
                f"fixes {key}={value!r}"
            )
    return cls(**{**kwargs, **fixed})


def model_defaults(name: str) -> dict[str, Any]:
    """The arguments of a registry model that have defaults, with those defaults.

    Raises:
      ValueError: for an unknown name.
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model name {name!r}; known models: {', '.join(list_models())}")
    cls, fixed = _REGISTRY[name]
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if f.init and f.name not in _LINEN_INTERNAL_FIELDS and f.default is not dataclasses.MISSING
    }
    return {**defaults, **fixed}


def count_params(params: Mapping[str, Any]) -> int:
    """Number of scalars in a parameter tree.

    Args:
      params: Either a variables dict with a ``"params"`` collection (other collections such as
        ``"batch_stats"`` are ignored, as PyTorch does not count running statistics) or the
        params tree itself. Leaves may be arrays or ``jax.ShapeDtypeStruct`` (from
        ``jax.eval_shape``).

    Returns:
      The total number of parameter scalars.
    """
    tree = params["params"] if "params" in params else params
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
