"""Reading the shared ``config.data`` fields into validated ``PipelineOptions``.

Every message names the offending field (``config.data.<name>``) and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from data_pipelines import augment as augment_lib
from data_pipelines.errors import DataConfigError

IGNORE_LABEL = 255
SOURCES = ("files", "tfds")


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """Everything the tf.data graph needs besides the file lists.

    Attributes:
        image_hw: network input (H, W).
        crop_top: rows dropped at the top of the source image/label before resizing.
        mean_rgb: per-channel mean subtracted from the RGB image (0..255 scale).
        std_rgb: per-channel divisor applied after the mean.
        augment: training augmentation.
        shuffle: False keeps every training epoch in key order.
        num_parallel_calls: tf.data map parallelism (-1 = AUTOTUNE).
        prefetch: number of batches prefetched (0 = none, -1 = AUTOTUNE).
        class_lut: uint8 (256,) left/right class swap table used by horizontal flips, or None.
        ignore_label: label value of padding / rotation fill.
        skip_corrupt: skip (train) or mask (eval) corrupt samples instead of stopping.
        source: ``"files"`` (the reader's files) or ``"tfds"`` (a prepared TFDS dataset).
        tfds_data_dir: TFDS data_dir holding the prepared dataset (None = TFDS's default).
        tfds_name: TFDS ``name/config`` to read (resolved from the data config).
        max_examples: per-split caps; files readers cap their lists, a TFDS source its keys.
    """

    image_hw: tuple[int, int]
    crop_top: int = 0
    mean_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    augment: augment_lib.AugmentSpec = augment_lib.AugmentSpec()
    shuffle: bool = True
    num_parallel_calls: int = -1
    prefetch: int = 2
    class_lut: np.ndarray | None = None
    ignore_label: int = IGNORE_LABEL
    skip_corrupt: bool = False
    source: str = "files"
    tfds_data_dir: str | None = None
    tfds_name: str | None = None
    max_examples: Mapping[str, int] = dataclasses.field(default_factory=dict)


def class_swap_lut(pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """A ``class_lut`` for horizontal flips: uint8 (256,) identity with each pair swapped."""
    lut = np.arange(256, dtype=np.uint8)
    for a, b in pairs:
        lut[a], lut[b] = b, a
    return lut


def config_get(cfg, name: str, default=None):
    """Reads ``cfg.name`` from a ConfigDict or dict; ``default`` when absent or None."""
    if cfg is None:
        return default
    value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    return default if value is None else value


def absolute_path(path: str | os.PathLike) -> str:
    """``path`` with ``~`` expanded, made absolute."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def config_choice(cfg, name: str, choices: Sequence[str], default: str) -> str:
    """``cfg.<name>`` (``default`` when unset), checked to be one of ``choices``.

    Raises:
        DataConfigError: any other value (names the field ``config.data.<name>``).
    """
    value = config_get(cfg, name, default)
    if value not in choices:
        raise DataConfigError(f"config.data.{name} must be one of {list(choices)}, got {value!r}")
    return value


def _float_tuple(value, n: int, field: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise DataConfigError(f"{field} must be {n} finite numbers, got {value!r}")
    return out


def config_int(cfg, name: str, default: int) -> int:
    """``config.data.<name>`` as an int (an integral float is accepted); DataConfigError else."""
    value = config_get(cfg, name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DataConfigError(f"config.data.{name} must be an int, got {value!r}")
    return value


def options_from_config(cfg, class_lut: np.ndarray | None = None) -> PipelineOptions:
    """Builds validated ``PipelineOptions`` from the shared ``config.data`` fields.

    Args:
        cfg: the data ConfigDict (fields image_hw, crop_top, mean_rgb, std_rgb, augment, shuffle,
            num_parallel_calls, prefetch, skip_corrupt, source, tfds_data_dir, tfds_name,
            max_examples).
        class_lut: the dataset's left/right class swap table for horizontal flips.

    Returns:
        The options.

    Raises:
        DataConfigError: a field has the wrong type or range (the message names the field).
    """
    hw = config_get(cfg, "image_hw")
    try:
        image_hw = (int(hw[0]), int(hw[1]))
        if len(hw) != 2 or min(image_hw) <= 0:
            raise ValueError
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        raise DataConfigError(
            f"config.data.image_hw must be (height, width) positive ints, got {hw!r}"
        ) from None
    crop_top = config_get(cfg, "crop_top", 0)
    if not isinstance(crop_top, int) or isinstance(crop_top, bool) or crop_top < 0:
        raise DataConfigError(f"config.data.crop_top must be an int >= 0, got {crop_top!r}")
    mean = _float_tuple(config_get(cfg, "mean_rgb", (0.0, 0.0, 0.0)), 3, "config.data.mean_rgb")
    std = _float_tuple(config_get(cfg, "std_rgb", (1.0, 1.0, 1.0)), 3, "config.data.std_rgb")
    if min(std) <= 0:
        raise DataConfigError(f"config.data.std_rgb must be positive, got {std!r}")
    npc = config_int(cfg, "num_parallel_calls", -1)
    if npc == 0 or npc < -1:
        raise DataConfigError(
            f"config.data.num_parallel_calls must be -1 (AUTOTUNE) or >= 1, got {npc}"
        )
    prefetch = config_int(cfg, "prefetch", 2)
    if prefetch < -1:
        raise DataConfigError(f"config.data.prefetch must be >= -1, got {prefetch}")
    skip_corrupt = config_get(cfg, "skip_corrupt", False)
    if not isinstance(skip_corrupt, bool):
        raise DataConfigError(
            f"config.data.skip_corrupt must be True or False, got {skip_corrupt!r}"
        )
    source = config_choice(cfg, "source", SOURCES, "files")
    tfds_data_dir = config_get(cfg, "tfds_data_dir")
    if tfds_data_dir is not None:
        tfds_data_dir = absolute_path(tfds_data_dir)
    tfds_name = None
    if source == "tfds":
        # Imported here: tensorflow_datasets is slow to import and only needed for this source.
        from data_pipelines import tfds_builders

        tfds_name = tfds_builders.tfds_name_for_config(cfg)
    return PipelineOptions(
        image_hw=image_hw,
        crop_top=crop_top,
        mean_rgb=mean,
        std_rgb=std,
        augment=augment_lib.AugmentSpec.from_config(config_get(cfg, "augment")),
        shuffle=bool(config_get(cfg, "shuffle", True)),
        num_parallel_calls=npc,
        prefetch=prefetch,
        class_lut=class_lut,
        skip_corrupt=skip_corrupt,
        source=source,
        tfds_data_dir=tfds_data_dir,
        tfds_name=tfds_name,
        max_examples=_max_examples(config_get(cfg, "max_examples")),
    )


def _max_examples(cfg) -> dict[str, int]:
    if cfg is None:
        return {}
    items = cfg.items() if hasattr(cfg, "items") else ()
    out = {}
    for split, cap in items:
        if cap is None:
            continue
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise DataConfigError(
                f"config.data.max_examples.{split} must be None or an int >= 1, got {cap!r}"
            )
        out[str(split)] = cap
    return out
