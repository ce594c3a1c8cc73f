"""ApolloScape lane-marking segmentation tf.data reader (IntRA-KD's 37-class setting).

The file formats (class table, label PNGs, list files, layout scan) are
``data_pipelines.formats.apolloscape``.

On-disk layout (DATASETS.md 3.1; camera folders contain a space, the IntRA-KD lists write
``Camera_N`` instead: both spellings are accepted wherever a path is resolved)::

    <root>/ColorImage_road02/ColorImage/Record001/Camera 5/170927_063811892_Camera_5.jpg
    <root>/Labels_road02/Label/Record001/Camera 5/170927_063811892_Camera_5_bin.png
    <root>/ColorImage_road05/...                                   (test, no labels)

Splits (``train``, ``valid``, ``test``) come from one of two sources, per split
(``config.data.split_source``: ``auto`` = the list file when it exists, else a scan):

* IntRA-KD-style list files (``config.data.list_files``, relative to the root): one example per
  line, ``<image> <label>[ 1 1 1 1]`` (the trailing flags are ignored; IntRA-KD's val list has
  them, its train list too or not). For ``test`` the label field is optional and ignored (the
  IntRA-KD test list carries a dummy label; road05 has no public labels). Paths may contain
  spaces (``Camera 5``): the image field ends at the first ``.jpg``/``.jpeg``/``.png`` followed by
  whitespace. Absolute paths from another machine are rewritten by ``config.data.root_rewrite``
  (``(old_prefix, new_prefix)`` or a sequence of such pairs; first match wins); relative paths,
  also after a rewrite, are relative to the root.
* a scan of the layout: every ``ColorImage_<road>/`` folder; roads in ``scan_test_roads``
  (default road05) form ``test`` (every ``*.jpg`` below, nested or flat), the other roads'
  images pair with ``Labels_<road>/Label/<same relative folder>/<stem>_bin.png``; a record
  ``<road>/<RecordNNN>`` listed in ``scan_valid_records`` (default road04/Record015 and
  road04/Record017, the records of IntRA-KD's released ``val.txt``) goes to ``valid``, every
  other labelled record to ``train``.

Keys are image paths relative to the root without the extension, e.g.
``ColorImage_road05/ColorImage/Record001/Camera 5/171206_061127409_Camera_5``; their base name
is the submission PNG name (``evaluation.apolloscape.submission_png_name``).

Labels (DATASETS.md 3.3): palette or 8-bit gray PNGs hold class ids (palette index = id), mapped
to the 37 IntRA-KD train ids by a 256-entry table (noise 249 and ignored 255 -> 36; ids outside
the table -> 255, reported by ``check_label``); RGB PNGs are mapped by table colour (IntRA-KD's
``R + 3G + 5B`` lookup, exact colours only). TensorFlow cannot return palette indices, so labels
are decoded with PIL inside ``tf.numpy_function``: ~25 ms for a full 3384 x 2710 label, below the
cost of the 3384 x 2710 JPEG it comes with, no cache to build or keep in sync, and the same bytes
-> train id function serves raw files, TFDS records and the data check.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from absl import logging

from data_pipelines.dataset import FolderDataset
from data_pipelines.errors import DataConfigError, DatasetLayoutError
from data_pipelines.formats.apolloscape import (
    DEFAULT_LIST_FILES,
    DEFAULT_TEST_ROADS,
    DEFAULT_VALID_RECORDS,
    INTRAKD_CLASS_NAMES,
    INTRAKD_HFLIP_LUT,
    NUM_INTRAKD_CLASSES,
    ROAD_DIR_RE,
    SPLITS,
    Entry,
    decode_label_bytes,
    image_size_hw,
    label_problems,
    parse_list,
    scan_layout,
)
from data_pipelines.formats.lists import Problem, normalize_root_rewrite
from data_pipelines.options import config_choice, config_get
from data_pipelines.sources import Example
from data_pipelines.synthetic import apolloscape as synthetic_apolloscape

SPLIT_SOURCES = ("auto", "lists", "scan")


def decode_label_tensor(contents: tf.Tensor) -> tf.Tensor:
    """tf.data label decoder: PNG bytes (scalar string) -> uint8 (H, W, 1) train ids."""

    def decode(b) -> np.ndarray:
        # A scalar tf.string arrives as bytes, or as a 0-d object array (eager calls).
        return decode_label_bytes(b.item() if isinstance(b, np.ndarray) else b)

    label = tf.numpy_function(decode, [contents], tf.uint8, stateful=False)
    label.set_shape([None, None])
    return label[..., None]


class ApolloscapeDataset(FolderDataset):
    """ApolloScape lane marking segmentation behind the shared ``SegmentationDataset`` API.

    37 classes (IntRA-KD train ids); ``test`` (road05) has no labels, so its eval batches carry
    labels of all 255. See the module docstring for lists, scanning and label decoding.
    """

    SPLITS = SPLITS
    NAME = "apolloscape"
    TITLE = "ApolloScape"
    ROOT = "the ApolloScape root folder"
    SUGGEST = (
        "Point config.data.data_dir at the ApolloScape lane-segmentation root (holding "
        "ColorImage_roadXX/ and Labels_roadXX/, and optionally list/), or use the synthetic "
        "stand-in: configs/apolloscape.py:synthetic."
    )
    GENERATOR = synthetic_apolloscape.GENERATOR

    def __init__(self, config):
        """Validates ``config`` (the data ConfigDict); checks the folder unless it is synthetic."""
        get = lambda name, default=None: config_get(config, name, default)
        # Set before the base class checks the root, which reads the list files.
        self._split_source = config_choice(config, "split_source", SPLIT_SOURCES, "auto")
        list_files = get("list_files")
        self._list_files = {s: config_get(list_files, s, DEFAULT_LIST_FILES[s]) for s in SPLITS}
        for s, p in self._list_files.items():
            if not isinstance(p, str) or not p:
                raise DataConfigError(
                    f"config.data.list_files.{s} must be a non-empty path string, got {p!r}"
                )
        num_classes = NUM_INTRAKD_CLASSES
        super().__init__(
            config,
            class_names=INTRAKD_CLASS_NAMES,
            default_class_weights=tuple(
                0.05 if k in (0, num_classes - 1) else 1.0 for k in range(num_classes)
            ),
            classes_desc=f"ApolloScape has {num_classes} classes (IntRA-KD train ids "
            f"0..{num_classes - 1})",
            class_lut=INTRAKD_HFLIP_LUT,
        )
        self._root_rewrite = normalize_root_rewrite(get("root_rewrite"))
        self._valid_records = tuple(get("scan_valid_records", DEFAULT_VALID_RECORDS))
        self._test_roads = tuple(get("scan_test_roads", DEFAULT_TEST_ROADS))
        teacher_hw = get("teacher_image_hw")
        if teacher_hw is not None:
            try:
                ok = len(teacher_hw) == 2 and min(int(v) for v in teacher_hw) > 0
            except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
                ok = False
            if not ok:
                raise DataConfigError(
                    "config.data.teacher_image_hw must be None or (height, width) positive ints, "
                    f"got {teacher_hw!r}"
                )
        self._entries: dict[str, list[Entry]] = {}
        self._by_key: dict[str, dict[str, Entry]] = {}
        self._source_hw: dict[str, tuple[int, int]] = {}
        self._scan: tuple[dict[str, list[Entry]], dict[str, list[Problem]]] | None = None

    # -- setup --------------------------------------------------------------------------------

    def _layout_error(self) -> str | None:
        if self._holds_data() or any(os.path.isfile(self._list_path(s)) for s in SPLITS):
            return None
        return (
            "is not an ApolloScape root: no ColorImage_roadXX/ folders and none of the list "
            f"files {sorted(set(self._list_files.values()))}"
        )

    def _holds_data(self) -> bool:
        d = self._data_dir
        return os.path.isdir(d) and any(ROAD_DIR_RE.match(n) for n in os.listdir(d))

    def _synthetic_generated(self, params: dict) -> None:
        if params["crop_top"] != self.options.crop_top:
            logging.warning(
                "config.data.crop_top = %d but the synthetic frames (scale %g) put the "
                "ApolloScape crop line at row %d",
                self.options.crop_top,
                params["scale"],
                params["crop_top"],
            )

    def _list_path(self, split: str) -> str:
        p = os.path.expanduser(self._list_files[split])
        return p if os.path.isabs(p) else os.path.join(self._data_dir, p)

    def split_source(self, split: str) -> str:
        """``"list:<path>"`` or ``"scan"``: where ``split``'s examples come from."""
        self._check_split(split)
        self._ensure_generated()
        path = self._list_path(split)
        if self._split_source == "scan":
            return "scan"
        if self._split_source == "lists" or os.path.isfile(path):
            return f"list:{path}"
        return "scan"

    def _scanned(self) -> tuple[dict[str, list[Entry]], dict[str, list[Problem]]]:
        if self._scan is None:
            self._scan = scan_layout(self._data_dir, self._valid_records, self._test_roads)
        return self._scan

    def _read_split(self, split: str, check_files: bool = True):
        """(entries, problems) of ``split`` from its list or the scan."""
        source = self.split_source(split)
        if source == "scan":
            splits, issues = self._scanned()
            return list(splits[split]), list(issues[split])
        path = source[len("list:") :]
        if not os.path.isfile(path):
            raise DataConfigError(
                f"list file for split {split!r} not found: {path} (config.data.list_files."
                f"{split}); set config.data.split_source = 'scan' to build splits from the layout"
            )
        return parse_list(
            path,
            self._data_dir,
            labelled=split != "test",
            root_rewrite=self._root_rewrite,
            check_files=check_files,
        )

    def _split_entries(self, split: str) -> list[Entry]:
        if split not in self._entries:
            entries, issues = self._read_split(split)
            issues = [i for i in issues if i.blocking]
            if issues:
                if not self.options.skip_corrupt:
                    first = issues[0]
                    where = f"{first.path}:{first.line}" if first.line else first.path
                    more = f" ({len(issues) - 1} more problems)" if len(issues) > 1 else ""
                    raise DatasetLayoutError(
                        f"ApolloScape {split}: {first.message} [{where}]{more}; run "
                        "--config.mode=check_data for the full list, or set "
                        "config.data.skip_corrupt = True to skip such entries"
                    )
                logging.warning(
                    "ApolloScape %s: skipped %d list entries with problems (skip_corrupt), e.g. %s",
                    split,
                    len(issues),
                    "; ".join(i.message for i in issues[:3]),
                )
            if not entries:
                raise DatasetLayoutError(
                    f"ApolloScape split {split!r} has no examples (source: "
                    f"{self.split_source(split)})"
                )
            entries = self._capped(split, entries)
            self._entries[split] = entries
            self._by_key[split] = {e.key: e for e in entries}
        return self._entries[split]

    # -- SegmentationDataset ------------------------------------------------------------------

    def _prepare_split(self, split: str) -> None:
        self._split_entries(split)

    @staticmethod
    def _example(split: str, e: Entry) -> Example:
        # test labels are dummies in the IntRA-KD list (road05 has no public labels)
        return Example(e.key, e.image_path, None if split == "test" else e.label_path)

    def _examples(self, split: str) -> list[Example]:
        return [self._example(split, e) for e in self._split_entries(split)]

    def examples(self, split: str) -> list[Example]:
        """``split``'s examples in key order (label path: the raw ``_bin.png``; None for test)."""
        self._check_split(split)
        return self._examples(split)

    def example(self, split: str, key: str) -> Example:
        """The example of ``key`` in ``split``.

        Raises:
            KeyError: unknown key.
        """
        self._check_split(split)
        self._split_entries(split)
        e = self._by_key[split].get(key)
        if e is None:
            raise KeyError(f"ApolloScape {split}: no example with key {key!r}")
        return self._example(split, e)

    def image_path(self, split: str, key: str) -> str:
        """Image file of ``key`` in ``split``."""
        return self.example(split, key).image_path

    def _decode_label(self, contents: tf.Tensor) -> tf.Tensor:
        return decode_label_tensor(contents)

    def source_image_hw(self, split: str) -> tuple[int, int]:
        """(height, width) of a split's raw frames (from its first JPEG header)."""
        self._check_split(split)
        if split not in self._source_hw:
            hw = image_size_hw(self._split_entries(split)[0].image_path)
            if self.options.crop_top >= hw[0]:
                raise DataConfigError(
                    f"config.data.crop_top = {self.options.crop_top} removes every row of the "
                    f"{hw[0]}-row ApolloScape {split} images"
                )
            self._source_hw[split] = hw
        return self._source_hw[split]

    # -- data check hooks -----------------------------------------------------------------------

    def list_problems(self, split: str) -> list[Problem]:
        """Every malformed list line and missing file of ``split``."""
        self._check_split(split)
        self._ensure_generated()
        _, problems = self._read_split(split)
        return problems

    def check_examples(self, split: str) -> list[Example]:
        """The examples the lenient reading keeps (``list_problems`` reports the rest)."""
        self._check_split(split)
        self._ensure_generated()
        entries, _ = self._read_split(split)
        return [self._example(split, e) for e in entries]

    def check_label(self, label_path: str) -> tuple[tuple[int, int], list[str]]:
        """(H, W) of a ``_bin.png`` and messages for ids/colours outside the class table."""
        return label_problems(label_path)

    @property
    def teacher_image_hw(self) -> tuple[int, int] | None:
        """``config.data.teacher_image_hw`` (the teacher's training crop), or None."""
        hw = config_get(self._config, "teacher_image_hw")
        return None if hw is None else (int(hw[0]), int(hw[1]))
