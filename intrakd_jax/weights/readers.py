"""Reading PyTorch and safetensors checkpoints into plain numpy arrays, safely.

A ``.pth``/``.pth.tar``/``.pt`` file is read with ``torch.load(weights_only=True)``, so a file
cannot run code while it is read (both the zip format of PyTorch >= 1.6 and the legacy format of
the PyTorch 0.3 era that the released IntRA-KD checkpoints use). PyTorch is an optional
dependency needed only here (``pip install torch``; the CPU build is enough). A ``.safetensors``
file needs only the ``safetensors`` package.

Accepted layouts: a raw state_dict (name -> tensor), or a dict holding one under ``state_dict`` or
``model`` beside plain values (``epoch``, ``arch``, ``best_mIoU``: kept as metadata). The
``module.`` prefix of ``DataParallel`` saves is removed and ``num_batches_tracked`` counters
(absent from files written before PyTorch 0.4.1) are set aside: nothing reads them.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from intrakd_jax.checkpointing import CheckpointError

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt")
WRAPPER_KEYS = ("state_dict", "model")
DATA_PARALLEL_PREFIX = "module."
BN_COUNTER = "num_batches_tracked"

_INSTALL_TORCH = (
    "pip install torch (the CPU build is enough: pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu)"
)


class WeightsError(CheckpointError):
    """A PyTorch/safetensors checkpoint is unreadable or does not fit the requested model."""


@dataclasses.dataclass(frozen=True)
class TorchCheckpoint:
    """The arrays of a checkpoint file.

    Attributes:
      path: the file.
      arrays: name (without ``module.``) -> float32 array in PyTorch layout, in file order.
      counters: the ``num_batches_tracked`` names that were set aside.
      meta: the plain values beside the state_dict (e.g. ``epoch``, ``arch``, ``best_mIoU``).
    """

    path: str
    arrays: dict[str, np.ndarray]
    counters: tuple[str, ...] = ()
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


def is_torch_checkpoint(path: str | None) -> bool:
    """Whether ``path`` names a PyTorch or safetensors file (by its suffix), not an orbax folder."""
    name = (path or "").strip().lower()
    return name.endswith((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX))


def checkpoint_stem(name: str) -> str:
    """A file name without its checkpoint suffix (``pspnet_46_6.pth.tar`` -> ``pspnet_46_6``)."""
    for suffix in sorted((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_checkpoint(path: str) -> TorchCheckpoint:
    """Reads a ``.pth``/``.pth.tar``/``.pt`` or ``.safetensors`` checkpoint (see module docstring).

    Raises:
      WeightsError: a missing, truncated or foreign file, a file holding pickled objects that
        ``weights_only`` refuses, or no state_dict inside; the message names the file.
    """
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise WeightsError(f"checkpoint file {path} does not exist")
    if path.lower().endswith(SAFETENSORS_SUFFIX):
        raw, meta = _read_safetensors(path)
    else:
        raw, meta = _unwrap(path, _torch_load(path))
    arrays: dict[str, np.ndarray] = {}
    counters = []
    for name, value in raw.items():
        key = name[len(DATA_PARALLEL_PREFIX) :] if name.startswith(DATA_PARALLEL_PREFIX) else name
        if key.rsplit(".", 1)[-1] == BN_COUNTER:
            counters.append(key)
            continue
        array = np.asarray(value)
        if not np.issubdtype(array.dtype, np.floating):
            raise WeightsError(
                f"{path}: entry {name!r} has dtype {array.dtype}; expected floating-point weights"
            )
        arrays[key] = array.astype(np.float32, copy=False)
    if not arrays:
        raise WeightsError(f"{path}: the state_dict holds no weight arrays")
    return TorchCheckpoint(path, arrays, tuple(counters), meta)


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError:
        raise WeightsError(
            f"reading {path} needs the safetensors package: pip install safetensors"
        ) from None
    try:
        return load_file(path), {}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise WeightsError(
            f"{path}: cannot be read as a safetensors file ({e}); the file may be truncated "
            "or not in the safetensors format"
        ) from None


def _numpy_safe_globals() -> list:
    """Numpy scalars and dtypes (``best_mIoU`` is often one) under their pickled names."""
    scalar = np._core.multiarray.scalar
    kinds = [np.dtypes.Float64DType, np.dtypes.Float32DType, np.dtypes.Int64DType]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *kinds]


def _torch_load(path: str) -> Any:
    try:
        import torch
    except ImportError:
        raise WeightsError(f"reading {path} needs PyTorch: {_INSTALL_TORCH}") from None
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        match = re.search(r"GLOBAL ([\w.]+)", str(e))
        if match:
            raise WeightsError(
                f"{path}: holds a pickled Python object ({match.group(1)}) that "
                "torch.load(weights_only=True) refuses to load, because unpickling it could run "
                "code; expected a checkpoint of tensors (a state_dict, or a dict with "
                "'state_dict' or 'model' beside plain numbers and strings). If you trust the "
                "file, save its weights alone: torch.save(torch.load(path, weights_only=False)"
                "['state_dict'], 'weights.pth')"
            ) from None
        raise _unreadable(path, e) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise _unreadable(path, e) from None


def _unreadable(path: str, error: BaseException) -> WeightsError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return WeightsError(
        f"{path}: cannot be read as a PyTorch checkpoint ({type(error).__name__}: {first_line}); "
        "the file may be truncated or not written by torch.save"
    )


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items())
    )


def _unwrap(path: str, obj: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The state_dict (as numpy) and the plain metadata beside it."""
    if _is_tensor_dict(obj):
        state, meta = obj, {}
    else:
        inner = [
            k for k in WRAPPER_KEYS if isinstance(obj, Mapping) and _is_tensor_dict(obj.get(k))
        ]
        if not inner:
            found = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
            raise WeightsError(
                f"{path}: expected a state_dict (parameter name -> tensor) or a dict with one "
                f"under {' or '.join(repr(k) for k in WRAPPER_KEYS)}; found {found}"
            )
        state = obj[inner[0]]
        meta = {
            k: v.item() if isinstance(v, np.generic) else v
            for k, v in obj.items()
            if k != inner[0] and isinstance(v, int | float | str | bool | np.generic)
        }
    return {k: _to_numpy(v) for k, v in state.items()}, meta


def _to_numpy(tensor: Any) -> np.ndarray:
    """A torch tensor (any float dtype, bfloat16 included) or array as numpy."""
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(tensor)
