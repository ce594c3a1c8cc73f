"""LLAMAS (Bosch "unsupervised Labeled LAne MArkerS") tf.data reader with the official labels.

``LlamasDataset`` lists ``color_images/<split>/<rec>/<ts>_color_rect.png`` with
``labels/<split>/<rec>/<ts>.json``, renders labels once (``data_pipelines.formats.llamas``, the
official semantics) into an atomic PNG cache (``<cache_dir>/<label_type>/<split>/<rec>/<ts>.png``)
and serves them through the shared tf.data pipeline.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence

from absl import logging

from data_pipelines.dataset import FolderDataset
from data_pipelines.errors import DataConfigError, DatasetLayoutError
from data_pipelines.formats.llamas import (
    BINARY_NAMES,
    COLOR_SUFFIX,
    IMAGE_HW,
    LABEL_TYPES,
    MULTICLASS_NAMES,
    RENDERERS,
    SPLITS,
    check_hw,
    read_json,
)
from data_pipelines.options import absolute_path, class_swap_lut, config_choice, config_get
from data_pipelines.sources import Example
from data_pipelines.synthetic import llamas as synthetic_llamas
from data_pipelines.util import ProgressLogger, encode_png, write_file_atomic

# Mirroring the scene turns the leftmost divider into the rightmost one: l1<->r1, l0<->r0.
MULTICLASS_HFLIP_LUT = class_swap_lut([(1, 4), (2, 3)])


# ----------------------------------------------------------------------------------------------
# Files on disk.


@dataclasses.dataclass(frozen=True)
class Sample:
    """One LLAMAS frame: key ``<recording>/<ts>``, colour image and label json (None: test)."""

    key: str
    image_path: str
    label_path: str | None


def list_frames(root: str, suffix: str) -> dict[str, str]:
    """``{"<recording>/<ts>": path}`` of the ``<root>/<recording>/<ts><suffix>`` files.

    Args:
        root: a split folder, e.g. ``color_images/train`` (missing: no files).
        suffix: the file name ending after the timestamp, e.g. ``_color_rect.png``.

    Returns:
        The files by key, in sorted order.
    """
    out = {}
    if not os.path.isdir(root):
        return out
    for rec in sorted(os.listdir(root)):
        rec_dir = os.path.join(root, rec)
        if os.path.isdir(rec_dir):
            for name in sorted(os.listdir(rec_dir)):
                if name.endswith(suffix):
                    out[f"{rec}/{name[: -len(suffix)]}"] = os.path.join(rec_dir, name)
    return out


def list_samples(data_dir: str | os.PathLike, split: str) -> list[Sample]:
    """Lists a split's frames, sorted by key, pairing colour images with label jsons.

    Args:
        data_dir: LLAMAS root (holding ``color_images/`` and ``labels/``).
        split: ``train``, ``valid`` or ``test``.

    Returns:
        The samples. ``test`` has ``label_path`` None unless ``labels/test`` exists.

    Raises:
        ValueError: unknown split.
        DatasetLayoutError: missing split folder, an empty split, an image without its label or a
            label without its image (the message names both paths).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown LLAMAS split {split!r}; expected one of {list(SPLITS)}")
    data_dir = os.fspath(data_dir)
    image_root = os.path.join(data_dir, "color_images", split)
    label_root = os.path.join(data_dir, "labels", split)
    if not os.path.isdir(image_root):
        raise DatasetLayoutError(
            f"LLAMAS split folder {image_root} does not exist; expected "
            f"color_images/{split}/<recording>/<ts>{COLOR_SUFFIX} under {data_dir}"
        )
    images = list_frames(image_root, COLOR_SUFFIX)
    if not images:
        raise DatasetLayoutError(f"no *{COLOR_SUFFIX} images found under {image_root}/<recording>/")
    has_labels = os.path.isdir(label_root)
    if not has_labels and split != "test":
        raise DatasetLayoutError(
            f"LLAMAS label folder {label_root} does not exist; expected "
            f"labels/{split}/<recording>/<ts>.json under {data_dir}"
        )
    labels = list_frames(label_root, ".json") if has_labels else {}
    if has_labels:
        for key in sorted(images):
            if key not in labels:
                rec, ts = key.split("/")
                raise DatasetLayoutError(
                    f"image {images[key]} has no label: expected "
                    f"{os.path.join(label_root, rec, ts + '.json')}"
                )
        for key in sorted(labels):
            if key not in images:
                rec, ts = key.split("/")
                raise DatasetLayoutError(
                    f"label {labels[key]} has no image: expected "
                    f"{os.path.join(image_root, rec, ts + COLOR_SUFFIX)}"
                )
    return [Sample(k, images[k], labels.get(k) if has_labels else None) for k in sorted(images)]


def label_cache_path(cache_dir: str, label_type: str, split: str, key: str) -> str:
    """``<cache_dir>/<label_type>/<split>/<rec>/<ts>.png``."""
    rec, ts = key.split("/")
    return os.path.join(cache_dir, label_type, split, rec, ts + ".png")


def _cache_stamp(samples: Sequence[Sample], label_type: str, hw, min_lane_height: int) -> dict:
    digest = hashlib.sha1()
    for s in samples:
        digest.update(s.key.encode())
        digest.update(b"\0")
    return {
        "version": 1,
        "label_type": label_type,
        "hw": list(hw),
        "min_lane_height": min_lane_height,
        "num_labels": len(samples),
        "keys_sha1": digest.hexdigest(),
    }


def render_label_cache(
    samples: Sequence[Sample],
    cache_dir: str,
    label_type: str,
    split: str,
    hw: Sequence[int] = IMAGE_HW,
    min_lane_height: int = 20,
    num_workers: int | None = None,
) -> int:
    """Renders missing label PNGs of ``samples`` into the cache (atomic writes, skip existing).

    A stamp file per split records the rendered key list, so a later call over the same samples
    costs one small file read.

    Args:
        samples: labelled samples of one split.
        cache_dir: cache root.
        label_type: ``multiclass`` or ``binary``.
        split: split name (cache sub-folder).
        hw: image (height, width) of this dataset's frames.
        min_lane_height: passed to ``read_json``.
        num_workers: rendering threads (default: CPU count, at most 8).

    Returns:
        The number of labels rendered by this call.
    """
    if label_type not in RENDERERS:
        raise ValueError(f"label_type must be one of {list(RENDERERS)}, got {label_type!r}")
    render = RENDERERS[label_type]
    hw = check_hw(hw)
    split_dir = os.path.join(cache_dir, label_type, split)
    stamp_path = os.path.join(split_dir, ".complete.json")
    stamp = _cache_stamp(samples, label_type, hw, min_lane_height)
    try:
        with open(stamp_path, encoding="utf-8") as f:
            if json.load(f) == stamp:
                return 0
    except (OSError, ValueError):
        pass

    todo = [
        s
        for s in samples
        if not os.path.exists(label_cache_path(cache_dir, label_type, split, s.key))
    ]
    if todo:
        logging.info(
            "LLAMAS: rendering %d %s %s labels into %s", len(todo), split, label_type, split_dir
        )

    def work(sample: Sample) -> None:
        label = read_json(sample.label_path, min_lane_height=min_lane_height)
        img = render(label, hw)
        write_file_atomic(
            label_cache_path(cache_dir, label_type, split, sample.key), encode_png(img)
        )

    progress = ProgressLogger(f"LLAMAS {split} {label_type} labels", len(todo))
    workers = num_workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(todo) < 8:
        for s in todo:
            work(s)
            progress.update()
    else:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(work, todo):
                progress.update()
    if todo:
        progress.finish()
    write_file_atomic(stamp_path, json.dumps(stamp, indent=1).encode())
    return len(todo)


def _png_size_hw(path: str) -> tuple[int, int]:
    """(height, width) from a PNG header, without decoding the pixels."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise DatasetLayoutError(f"{path} is not a PNG file")
    width = int.from_bytes(head[16:20], "big")
    height = int.from_bytes(head[20:24], "big")
    return height, width


# ----------------------------------------------------------------------------------------------
# The dataset.


class LlamasDataset(FolderDataset):
    """LLAMAS behind the shared ``SegmentationDataset`` API.

    Eval on ``test`` (no public labels) gives labels of all 255, so metrics over it see only
    ignored pixels; evaluate on ``valid``.
    """

    SPLITS = SPLITS
    NAME = "llamas"
    TITLE = "LLAMAS"
    ROOT = "the LLAMAS root folder (with color_images/ and labels/)"
    SUGGEST = (
        "Point config.data.data_dir at the LLAMAS root (holding color_images/ and labels/), or use "
        "the synthetic stand-in: configs/llamas.py:synthetic."
    )
    GENERATOR = synthetic_llamas.GENERATOR

    def __init__(self, config):
        """Validates ``config`` (the data ConfigDict); checks the folder unless it is synthetic."""
        self._label_type = config_choice(config, "label_type", LABEL_TYPES, "multiclass")
        class_names = MULTICLASS_NAMES if self._label_type == "multiclass" else BINARY_NAMES
        super().__init__(
            config,
            class_names=class_names,
            default_class_weights=(1.0,) * len(class_names),
            classes_desc=f"label_type {self._label_type!r} has {len(class_names)} classes "
            f"{list(class_names)}",
            class_lut=MULTICLASS_HFLIP_LUT if self._label_type == "multiclass" else None,
        )
        self._min_lane_height = int(config_get(config, "min_lane_height", 20))
        cache_dir = config_get(config, "cache_dir")
        if cache_dir is not None and not isinstance(cache_dir, str | os.PathLike):
            raise DataConfigError(
                f"config.data.cache_dir must be None or a folder path, got {cache_dir!r}"
            )
        self._cache_dir = (
            absolute_path(cache_dir) if cache_dir else os.path.join(self._data_dir, ".label_cache")
        )
        self._samples: dict[str, list[Sample]] = {}
        self._labels_ready: set[str] = set()

    # -- setup --------------------------------------------------------------------------------

    def _layout_error(self) -> str | None:
        d = self._data_dir
        missing = [
            sub for sub in ("color_images", "labels") if not os.path.isdir(os.path.join(d, sub))
        ]
        if not missing:
            return None
        return (
            f"is not a LLAMAS root: missing {', '.join(m + '/' for m in missing)} (expected "
            f"color_images/<split>/<recording>/<ts>{COLOR_SUFFIX} and "
            "labels/<split>/<recording>/<ts>.json)"
        )

    def _holds_data(self) -> bool:
        return os.path.isdir(os.path.join(self._data_dir, "color_images"))

    def _split_samples(self, split: str) -> list[Sample]:
        if split not in self._samples:
            self._ensure_generated()
            self._samples[split] = self._capped(split, list_samples(self._data_dir, split))
        return self._samples[split]

    def source_image_hw(self, split: str) -> tuple[int, int]:
        """(height, width) of a split's frames (read from its first PNG header)."""
        hw = _png_size_hw(self._split_samples(split)[0].image_path)
        if self.options.crop_top >= hw[0]:
            raise DataConfigError(
                f"config.data.crop_top = {self.options.crop_top} removes every row of the "
                f"{hw[0]}-row LLAMAS {split} images"
            )
        return hw

    def _prepare_split(self, split: str) -> None:
        """Renders the split's labels into the cache (once)."""
        if split in self._labels_ready:
            return
        samples = self._split_samples(split)
        if samples[0].label_path is not None:
            render_label_cache(
                samples,
                self._cache_dir,
                self._label_type,
                split,
                hw=self.source_image_hw(split),
                min_lane_height=self._min_lane_height,
            )
        self._labels_ready.add(split)

    # -- SegmentationDataset ------------------------------------------------------------------

    def _examples(self, split: str) -> list[Example]:
        self._prepare_split(split)
        return [
            Example(
                key=s.key,
                image_path=s.image_path,
                label_path=None
                if s.label_path is None
                else label_cache_path(self._cache_dir, self._label_type, split, s.key),
            )
            for s in self._split_samples(split)
        ]

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split`` (after ``max_examples``); renders no labels."""
        self._check_split(split)
        return len(self._split_samples(split))

    def keys(self, split: str) -> list[str]:
        """``<recording>/<ts>`` keys of ``split``, sorted; eval batches' ``index`` points here."""
        self._check_split(split)
        return [s.key for s in self._split_samples(split)]

    @property
    def cache_dir(self) -> str:
        """Absolute label cache root."""
        return self._cache_dir
