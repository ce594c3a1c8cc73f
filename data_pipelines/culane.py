"""CULane tf.data reader over the official list files and ``laneseg_label_w16`` labels.

The file formats (layout, list files, the official label generator) are
``data_pipelines.formats.culane``; the ``.lines.txt`` files are
``data_pipelines.formats.lines_txt``.

Splits: ``train`` (train_gt.txt), ``valid`` (val_gt.txt), ``test`` (test.txt) and the nine
category splits ``test0_normal`` .. ``test8_night``. Image-only splits are labelled when
``laneseg_label_w16/<key>.png`` exists for every image of the list (the test labels released
later), otherwise unlabelled. Keys are image paths relative to the root without extension
(``driver_23_30frame/05151649_0422.MP4/00000``); the official evaluator reads the ground truth
and the predictions of a key at ``<dir>/<key>.lines.txt``.

List paths: one leading ``/`` is stripped and the rest joined to ``config.data.data_dir``. Lists
written on another machine with absolute paths are made usable with
``config.data.root_rewrite = (old_prefix, new_prefix)`` (``formats.culane.normalize_list_path``).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import logging

from data_pipelines.dataset import FolderDataset
from data_pipelines.errors import DataConfigError, DatasetLayoutError
from data_pipelines.formats.culane import (
    CLASS_NAMES,
    LABEL_DIR,
    LIST_DIR,
    LIST_FILES,
    NUM_LANES,
    SPLITS,
    ListEntry,
    parse_list,
    rewrite_hint,
)
from data_pipelines.formats.lines_txt import key_lines_txt_path
from data_pipelines.formats.lists import Problem, normalize_root_rewrite
from data_pipelines.options import class_swap_lut, config_get
from data_pipelines.sources import Example
from data_pipelines.synthetic import culane as synthetic_culane

# Mirroring turns the leftmost slot into the rightmost one: 1<->4, 2<->3.
HFLIP_LUT = class_swap_lut([(1, 4), (2, 3)])


def decode_label_tensor(contents: tf.Tensor) -> tf.Tensor:
    """tf.data label decoder: an 8-bit gray PNG of slot ids -> uint8 (H, W, 1).

    Anything else fails (and so is a corrupt sample naming the label file) instead of turning
    into a silently wrong target: ``decode_png(channels=1)`` would turn an RGB or palette label
    into luminance and scale a 16-bit one down to 0, and values above the 4 lane slots would
    reach the loss as classes that do not exist. 255 (ignore) is allowed, as in the data check.
    """
    label = tf.io.decode_png(contents, channels=1, dtype=tf.uint8)
    with tf.control_dependencies([label]):  # a file too short for a header fails in decode
        # IHDR bit depth and colour type: bytes 24 and 25 of every PNG (8, 0 = 8-bit gray).
        header = tf.strings.substr(contents, 24, 2)
    header_ok = tf.debugging.Assert(
        tf.equal(header, b"\x08\x00"),
        ["CULane labels must be 8-bit single-channel (gray) PNGs"],
    )
    bad = tf.logical_and(label >= len(CLASS_NAMES), label != 255)
    values_ok = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        [
            f"label values outside the CULane class table 0..{len(CLASS_NAMES) - 1} "
            "(255 = ignore), largest:",
            tf.reduce_max(tf.where(bad, label, tf.zeros_like(label))),
        ],
    )
    with tf.control_dependencies([header_ok, values_ok]):
        return tf.identity(label)


@dataclasses.dataclass(frozen=True)
class _Split:
    entries: tuple[ListEntry, ...]
    labels: tuple[str, ...] | None  # label paths relative to the root, or None (unlabelled)


class CulaneDataset(FolderDataset):
    """CULane behind the shared ``SegmentationDataset`` API (see the module docstring)."""

    SPLITS = SPLITS
    NAME = "culane"
    TITLE = "CULane"
    ROOT = "the CULane root folder (with driver_*/, laneseg_label_w16/ and list/)"
    SUGGEST = (
        "Point config.data.data_dir at the CULane root (holding driver_*/, laneseg_label_w16/ and "
        "list/), or use the synthetic stand-in: configs/culane.py:synthetic."
    )
    GENERATOR = synthetic_culane.GENERATOR

    def __init__(self, config):
        """Validates ``config`` (the data ConfigDict); checks the folder unless it is synthetic."""
        super().__init__(
            config,
            class_names=CLASS_NAMES,
            default_class_weights=(0.4, 1.0, 1.0, 1.0, 1.0),
            classes_desc=f"CULane has {len(CLASS_NAMES)} classes {list(CLASS_NAMES)}",
            class_lut=HFLIP_LUT,
        )
        rewrite = config_get(config, "root_rewrite")
        pairs = normalize_root_rewrite(rewrite)
        if len(pairs) > 1:
            raise DataConfigError(
                "config.data.root_rewrite must be one (old_prefix, new_prefix) pair for CULane, "
                f"got {rewrite!r}"
            )
        self._root_rewrite = pairs[0] if pairs else None
        self._splits: dict[str, _Split] = {}
        self._index: dict[str, dict[str, int]] = {}

    # -- setup --------------------------------------------------------------------------------

    def _decode_label(self, contents: tf.Tensor) -> tf.Tensor:
        return decode_label_tensor(contents)

    def _layout_error(self) -> str | None:
        if self._holds_data():
            return None
        return (
            f"is not a CULane root: missing {LIST_DIR}/ (expected {LIST_DIR}/train_gt.txt, "
            "val_gt.txt, test.txt and test_split/)"
        )

    def _holds_data(self) -> bool:
        return os.path.isdir(os.path.join(self._data_dir, LIST_DIR))

    def list_path(self, split: str) -> str:
        """Absolute path of the list file of ``split``."""
        self._check_split(split)
        return os.path.join(self._data_dir, LIST_FILES[split][0])

    def _abs(self, rel: str) -> str:
        return os.path.join(self._data_dir, rel)

    def _split(self, split: str) -> _Split:
        """Parses, caps and checks a split (strict: the first problem raises)."""
        if split in self._splits:
            return self._splits[split]
        self._check_split(split)
        self._ensure_generated()
        list_path = self.list_path(split)
        fmt = LIST_FILES[split][1]
        entries, _ = parse_list(
            list_path, fmt, data_dir=self._data_dir, root_rewrite=self._root_rewrite
        )
        if not entries:
            raise DatasetLayoutError(f"{list_path}: the list has no entries")
        entries = self._capped(split, entries)
        missing = [
            f"{list_path}:{e.line}: {what} {self._abs(rel)} does not exist{rewrite_hint(rel)}"
            for e in entries
            for what, rel in (("image", e.image), ("label", e.label))
            if rel is not None and not os.path.isfile(self._abs(rel))
        ]
        if missing and not self.options.skip_corrupt:
            raise DatasetLayoutError(missing[0])
        if missing:  # the pipeline skips (train) or masks (eval) them as corrupt samples
            logging.warning(
                "CULane %s: %d missing files (skip_corrupt), e.g. %s",
                split,
                len(missing),
                missing[0],
            )
        if fmt == "gt":
            labels = tuple(e.label for e in entries)
        else:
            derived = [f"{LABEL_DIR}/{e.key}.png" for e in entries]
            present = sum(os.path.isfile(self._abs(p)) for p in derived)
            labels = tuple(derived) if present == len(derived) else None
            if 0 < present < len(derived):
                logging.warning(
                    "CULane %s: only %d of %d images have a %s label; reading the split "
                    "without labels",
                    split,
                    present,
                    len(derived),
                    LABEL_DIR,
                )
        self._splits[split] = _Split(tuple(entries), labels)
        return self._splits[split]

    # -- SegmentationDataset ------------------------------------------------------------------

    def _prepare_split(self, split: str) -> None:
        self._split(split)

    def _examples(self, split: str) -> list[Example]:
        s = self._split(split)
        return [
            Example(
                key=e.key,
                image_path=self._abs(e.image),
                label_path=None if s.labels is None else self._abs(s.labels[i]),
            )
            for i, e in enumerate(s.entries)
        ]

    def entries(self, split: str) -> list[ListEntry]:
        """Parsed list lines of ``split`` (after ``max_examples``), in list order."""
        return list(self._split(split).entries)

    def is_labelled(self, split: str) -> bool:
        """True when every example of ``split`` has a segmentation label."""
        return self._split(split).labels is not None

    def existence(self, split: str) -> np.ndarray | None:
        """Lane existence flags e1..e4 of ``split`` as int8 (N, 4), or None (image-only lists)."""
        entries = self._split(split).entries
        if entries[0].exist is None:
            return None
        return np.asarray([e.exist for e in entries], dtype=np.int8).reshape(-1, NUM_LANES)

    def _position(self, split: str, key: str) -> int:
        if split not in self._index:
            self._index[split] = {e.key: i for i, e in enumerate(self._split(split).entries)}
        try:
            return self._index[split][key]
        except KeyError:
            raise KeyError(f"key {key!r} is not in CULane split {split!r}") from None

    def example(self, split: str, key: str) -> Example:
        """The example of ``key`` in ``split`` (absolute paths)."""
        return self._examples(split)[self._position(split, key)]

    def image_path(self, split: str, key: str) -> str:
        """Absolute image path of ``key``."""
        return self._abs(self._split(split).entries[self._position(split, key)].image)

    def annotation_path(self, key: str) -> str:
        """Absolute ``.lines.txt`` path of ``key`` (what the official evaluator reads)."""
        return key_lines_txt_path(self._data_dir, key)

    def source_image_hw(self, split: str) -> tuple[int, int]:
        """(height, width) of a split's frames (read from its first image)."""
        h, w = super().source_image_hw(split)
        if self.options.crop_top >= h:
            raise DataConfigError(
                f"config.data.crop_top = {self.options.crop_top} removes every row of the "
                f"{h}-row CULane {split} images"
            )
        return h, w

    def list_problems(self, split: str) -> list[Problem]:
        """Every malformed list line and every missing file of ``split`` (data check).

        Reads the whole list (``max_examples`` is ignored). Missing files: images, labels
        (``gt`` lists; image-only lists when some but not all of their labels exist) and, for the
        test splits the official evaluator reads, ``.lines.txt`` annotations.
        """
        self._check_split(split)
        self._ensure_generated()
        list_path = self.list_path(split)
        fmt = LIST_FILES[split][1]
        entries, problems = parse_list(
            list_path, fmt, data_dir=self._data_dir, root_rewrite=self._root_rewrite, strict=False
        )

        def missing(e: ListEntry, what: str, rel: str, extra: str = "") -> None:
            # Problem convention: a missing file is the path at fault; the message names the
            # list line that references it.
            problems.append(
                Problem(
                    "missing_file",
                    self._abs(rel),
                    None,
                    f"{what} file is missing (referenced by {list_path}:{e.line}){extra}"
                    f"{rewrite_hint(rel)}",
                )
            )

        for e in entries:
            if not os.path.isfile(self._abs(e.image)):
                missing(e, "image", e.image)
            if e.label is not None and not os.path.isfile(self._abs(e.label)):
                missing(e, "label", e.label)
        if fmt == "image" and entries:
            derived = [f"{LABEL_DIR}/{e.key}.png" for e in entries]
            absent = [not os.path.isfile(self._abs(p)) for p in derived]
            if 0 < sum(absent) < len(derived):
                note = (
                    f" ({len(derived) - sum(absent)} of {len(derived)} labels exist; the split is "
                    "read without labels)"
                )
                for e, rel, gone in zip(entries, derived, absent, strict=True):
                    if gone:
                        missing(e, "label", rel, note)
            for e in entries:
                if not os.path.isfile(self.annotation_path(e.key)):
                    missing(e, "lane annotation", e.key + ".lines.txt", " (the evaluator reads it)")
        return problems

    def check_examples(self, split: str) -> list[Example]:
        """Every well-formed list entry whose files exist (``list_problems`` reports the rest).

        Image-only lists pair each image with its derived label where that label exists.
        """
        self._check_split(split)
        self._ensure_generated()
        entries, _ = parse_list(
            self.list_path(split),
            LIST_FILES[split][1],
            data_dir=self._data_dir,
            root_rewrite=self._root_rewrite,
            strict=False,
        )
        out = []
        for e in entries:
            image = self._abs(e.image)
            if e.label is not None:
                label = self._abs(e.label)
            else:  # image-only lists: the labels the reader derives, where they exist
                label = self._abs(f"{LABEL_DIR}/{e.key}.png")
                label = label if os.path.isfile(label) else None
            if os.path.isfile(image) and (label is None or os.path.isfile(label)):
                out.append(Example(e.key, image, label))
        return out

    @property
    def root_rewrite(self) -> tuple[str, str] | None:
        """The configured (old_prefix, new_prefix) list path rewrite."""
        return self._root_rewrite
