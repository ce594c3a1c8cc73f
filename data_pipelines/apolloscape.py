"""ApolloScape lane-marking segmentation reader (IntRA-KD's 37-class setting).

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

import dataclasses
import io
import os
import re
from collections.abc import Iterable
from typing import NamedTuple

import cv2
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from data_pipelines import apolloscape_classes as classes
from data_pipelines import pipeline
from data_pipelines.errors import DataConfigError, DatasetLayoutError, LabelFormatError

SPLITS = ("train", "valid", "test")
IMAGE_SUFFIX = ".jpg"
LABEL_SUFFIX = "_bin.png"
DEFAULT_LIST_FILES = {"train": "list/train.txt", "valid": "list/val.txt", "test": "list/test.txt"}
DEFAULT_VALID_RECORDS = ("road04/Record015", "road04/Record017")
DEFAULT_TEST_ROADS = ("road05",)
SPLIT_SOURCES = ("auto", "lists", "scan")
# IntRA-KD's lists carry absolute paths of the authors' machine (DATASETS.md 3.5).
INTRAKD_LIST_PREFIX = "/home/houyuenan/ApolloScapes/"

_IMAGE_EXTS = (".jpg", ".jpeg", ".png")
_CAMERA_RE = re.compile(r"^Camera[ _](\d+)$")
# Image field: the shortest prefix ending in an image extension followed by whitespace or the
# end (paths may contain spaces); the rest is the label field.
_LINE_RE = re.compile(r"^(?P<image>.+?\.(?:jpe?g|png))(?=\s|$)\s*(?P<rest>.*)$", re.IGNORECASE)
_ROAD_DIR_RE = re.compile(r"^ColorImage_(road\d+)$")


# ----------------------------------------------------------------------------------------------
# Labels.


def png_color_type(contents: bytes) -> int | None:
    """PNG colour type (byte 25: 0 gray, 2 RGB, 3 palette, 4/6 with alpha), None if not a PNG."""
    if len(contents) < 26 or contents[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return contents[25]


def _open_label(contents: bytes, source: str) -> np.ndarray:
    """(H, W) ids of a palette/gray PNG or (H, W, 3) RGB of an RGB PNG."""
    try:
        with Image.open(io.BytesIO(contents)) as img:
            mode = img.mode
            if mode not in ("P", "L", "RGB"):
                raise LabelFormatError(
                    f"{source}: unsupported label PNG mode {mode!r}; expected a palette (P), "
                    "8-bit gray (L) or RGB image"
                )
            arr = np.asarray(img)
    except LabelFormatError:
        raise
    except (OSError, ValueError, SyntaxError) as e:
        raise LabelFormatError(f"{source}: cannot decode label PNG ({e})") from None
    return arr


def ids_to_trainids(ids_hw: np.ndarray) -> np.ndarray:
    """Label ids (uint8 (H, W)) -> IntRA-KD train ids; ids outside the table -> 255."""
    ids_hw = np.ascontiguousarray(ids_hw, dtype=np.uint8)
    # cv2.LUT: one pass without the GIL (the function runs inside tf.data workers).
    return cv2.LUT(ids_hw, classes.ID_TO_INTRAKD_TRAINID)


def decode_label_bytes(contents: bytes, source: str = "<label>") -> np.ndarray:
    """A ``_bin.png`` file's bytes -> uint8 (H, W) IntRA-KD train ids (0..36, 255 unknown).

    Palette and gray PNGs: indices are ids. RGB PNGs: table colours (others -> 255).

    Raises:
        LabelFormatError: not a decodable PNG, or a mode other than P, L or RGB.
    """
    if not isinstance(contents, bytes | bytearray | memoryview):
        raise TypeError(f"{source}: expected the PNG file's bytes, got {type(contents).__name__}")
    arr = _open_label(bytes(contents), source)
    if arr.ndim == 2:
        return ids_to_trainids(arr)
    return classes.rgb_to_intrakd_trainid(arr)


def decode_label_tensor(contents: tf.Tensor) -> tf.Tensor:
    """tf.data label decoder: PNG bytes (scalar string) -> uint8 (H, W, 1) train ids."""

    def decode(b) -> np.ndarray:
        # A scalar tf.string arrives as bytes, or as a 0-d object array (eager calls).
        return decode_label_bytes(b.item() if isinstance(b, np.ndarray) else b)

    label = tf.numpy_function(decode, [contents], tf.uint8, stateful=False)
    label.set_shape([None, None])
    return label[..., None]


def read_label_trainids(path: str | os.PathLike) -> np.ndarray:
    """Reads a label file and returns its uint8 (H, W) IntRA-KD train ids."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        return decode_label_bytes(f.read(), source=path)


def label_problems(path: str | os.PathLike, max_colors: int = 10) -> tuple[tuple[int, int], list]:
    """(H, W) of a label file and messages for values outside the class table.

    Palette/gray: ids that are not table ids. RGB: colours that are not table colours, one
    message per colour (the ``max_colors`` most frequent; a summary line for the rest).

    Raises:
        OSError: the file cannot be read.
        LabelFormatError: not a decodable PNG or an unsupported mode.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        arr = _open_label(f.read(), path)
    hw = (int(arr.shape[0]), int(arr.shape[1]))
    messages = []
    if arr.ndim == 2:
        counts = np.bincount(arr.ravel(), minlength=classes.NUM_IDS)
        bad = np.flatnonzero((counts > 0) & ~classes.KNOWN_ID_MASK)
        if bad.size:
            messages.append(
                f"ids {{{', '.join(str(v) for v in bad)}}} are not ApolloScape class ids "
                f"(at {int(counts[bad].sum())} pixels; table ids: "
                f"{sorted(classes.TABLE_IDS)})"
            )
        return hw, messages
    key = classes.pack_rgb(arr)
    # Every table colour maps to a train id below 255 (white, "ignored", to 36).
    outside = key[classes.packed_color_lut()[key] == classes.IGNORE_LABEL]
    if outside.size:
        values, counts = np.unique(outside, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        for i in order[:max_colors]:
            v = int(values[i])
            rgb = (v >> 16, (v >> 8) & 255, v & 255)
            messages.append(f"colour {rgb} is not a table colour at {int(counts[i])} pixels")
        if len(order) > max_colors:
            rest = order[max_colors:]
            messages.append(
                f"{len(rest)} more non-table colours at {int(counts[rest].sum())} pixels"
            )
    return hw, messages


# ----------------------------------------------------------------------------------------------
# Lists and layout.


class ListIssue(NamedTuple):
    """A problem found while reading a list or scanning the layout (fields of check.Problem)."""

    kind: str  # "malformed_line" | "missing_file"
    path: str  # the list file (malformed line) or the missing file
    line: int | None  # 1-based list line, None for scanned layouts
    message: str
    blocking: bool = True  # False: reported by the data check but no obstacle to training


@dataclasses.dataclass(frozen=True)
class Entry:
    """One resolved example: key, image file, label file (None: unlabelled), list line."""

    key: str
    image_path: str
    label_path: str | None
    line: int | None = None


def _swap_camera_spelling(path: str) -> str:
    """``Camera_5`` <-> ``Camera 5`` in every folder component of ``path``."""
    parts = path.split(os.sep)
    out = []
    for part in parts:
        m = _CAMERA_RE.match(part)
        if m:
            part = f"Camera_{m.group(1)}" if " " in part else f"Camera {m.group(1)}"
        out.append(part)
    return os.sep.join(out)


class _Resolver:
    """Maps list paths to files on disk: prefix rewrite, root join, camera folder spelling."""

    def __init__(self, root: str, rewrite: tuple[tuple[str, str], ...]):
        self.root = root
        self.rewrite = rewrite
        self._dirs: dict[str, str] = {}

    def rewrite_path(self, path: str) -> str:
        for old, new in self.rewrite:
            if path.startswith(old):
                path = new + path[len(old) :]
                break
        path = path.replace("/", os.sep)
        return os.path.normpath(path if os.path.isabs(path) else os.path.join(self.root, path))

    def resolve_dir(self, directory: str) -> str:
        """The existing spelling of ``directory`` (itself when neither spelling exists)."""
        out = self._dirs.get(directory)
        if out is None:
            out = directory
            if not os.path.isdir(directory):
                alt = _swap_camera_spelling(directory)
                if alt != directory and os.path.isdir(alt):
                    out = alt
            self._dirs[directory] = out
        return out

    def resolve(self, path: str) -> str:
        path = self.rewrite_path(path)
        return os.path.join(self.resolve_dir(os.path.dirname(path)), os.path.basename(path))


def key_of(image_path: str, root: str) -> str:
    """Example key: image path relative to ``root`` without extension, '/'-separated."""
    rel = os.path.relpath(image_path, root)
    if rel.startswith(os.pardir):
        rel = os.path.abspath(image_path)
    return os.path.splitext(rel)[0].replace(os.sep, "/")


def _missing_hint(path: str, root: str, rewrite) -> str:
    hint = ""
    if _CAMERA_RE.match(os.path.basename(os.path.dirname(path))):
        hint = " (tried both 'Camera N' and 'Camera_N' folder spellings)"
    if os.path.isabs(path) and not path.startswith(root + os.sep):
        hint += (
            f"; it lies outside config.data.data_dir = {root!r}: set config.data.root_rewrite "
            "= (old_prefix, new_prefix) to map list paths from another machine"
            + (f" (current: {list(rewrite)})" if rewrite else "")
        )
    return hint


def parse_list(
    list_path: str | os.PathLike,
    root: str | os.PathLike,
    labelled: bool = True,
    root_rewrite: Iterable[tuple[str, str]] = (),
    check_files: bool = True,
) -> tuple[list[Entry], list[ListIssue]]:
    """Reads an IntRA-KD-style list leniently: every good entry and every problem.

    Args:
        list_path: the list file.
        root: dataset root; relative paths (also after a rewrite) are joined to it.
        labelled: True: lines must be ``<image> <label>.png[ 1 1 1 1]``; False: ``<image>``
            with an optional label field and flags, both ignored.
        root_rewrite: ``(old_prefix, new_prefix)`` pairs applied to list paths (first match).
        check_files: also report files that do not exist.

    Returns:
        (entries in list order, problems). A line with a problem yields no entry.

    Raises:
        DatasetLayoutError: the list file cannot be read.
    """
    list_path = os.fspath(list_path)
    root = os.path.abspath(os.fspath(root))
    rewrite = pipeline.normalize_root_rewrite(tuple(root_rewrite))
    resolver = _Resolver(root, rewrite)
    try:
        with open(list_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetLayoutError(f"cannot read list file {list_path}: {e}") from None
    expected = (
        "'<image>.jpg <label>_bin.png' with optional 4 integer flags"
        if labelled
        else "'<image>.jpg' optionally followed by a (dummy) label and 4 integer flags"
    )
    entries: list[Entry] = []
    issues: list[ListIssue] = []
    first_line: dict[str, int] = {}

    def bad(lineno: int, what: str) -> None:
        issues.append(
            ListIssue("malformed_line", list_path, lineno, f"{what}; expected {expected}")
        )

    for lineno, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue  # blank lines (e.g. a trailing one) carry no example
        if labelled:
            tokens = text.split()
            n_flags = 0
            while n_flags < len(tokens) - 1 and re.fullmatch(r"[+-]?\d+", tokens[-1 - n_flags]):
                n_flags += 1
            if n_flags not in (0, 4):
                bad(lineno, f"{n_flags} trailing integer fields in {text!r}")
                continue
            body = text.rsplit(maxsplit=n_flags)[0] if n_flags else text
        else:
            body = text  # test lists: whatever follows the image (dummy label, flags) is ignored
        m = _LINE_RE.match(body)
        if m is None:
            bad(lineno, f"no image path ending in {'/'.join(_IMAGE_EXTS)} in {text!r}")
            continue
        image_field, rest = m.group("image"), m.group("rest").strip()
        label_field = None
        if labelled:
            if not rest:
                bad(lineno, f"no label field in {text!r}")
                continue
            if not rest.lower().endswith(".png"):
                bad(lineno, f"label field {rest!r} is not a .png path")
                continue
            label_field = rest
        image_path = resolver.resolve(image_field)
        label_path = None if label_field is None else resolver.resolve(label_field)
        key = key_of(image_path, root)
        if key in first_line:
            bad(lineno, f"duplicate image {image_field!r} (first at line {first_line[key]})")
            continue
        if check_files:
            missing = False
            for what, field, path in (
                ("image", image_field, image_path),
                ("label", label_field, label_path),
            ):
                if path is not None and not os.path.isfile(path):
                    issues.append(
                        ListIssue(
                            "missing_file",
                            path,
                            lineno,
                            f"{list_path}:{lineno}: {what} {field!r} -> {path} does not exist"
                            + _missing_hint(path, root, rewrite),
                        )
                    )
                    missing = True
            if missing:
                continue
        first_line[key] = lineno
        entries.append(Entry(key, image_path, label_path, lineno))
    return entries, issues


def scan_layout(
    root: str | os.PathLike,
    valid_records: Iterable[str] = DEFAULT_VALID_RECORDS,
    test_roads: Iterable[str] = DEFAULT_TEST_ROADS,
) -> tuple[dict[str, list[Entry]], dict[str, list[ListIssue]]]:
    """Builds the three splits from the folder layout (see the module docstring).

    Args:
        root: dataset root holding ``ColorImage_<road>/`` and ``Labels_<road>/`` folders.
        valid_records: ``<road>/<record>`` names that form ``valid``.
        test_roads: roads without labels that form ``test``.

    Returns:
        ({split: entries sorted by key}, {split: problems}): images without labels (blocking)
        and labels without images (not blocking), under the split of their record.
    """
    root = os.path.abspath(os.fspath(root))
    valid_records = {r.strip("/") for r in valid_records}
    test_roads = set(test_roads)
    resolver = _Resolver(root, ())
    splits: dict[str, list[Entry]] = {s: [] for s in SPLITS}
    issues: dict[str, list[ListIssue]] = {s: [] for s in SPLITS}
    seen_records: set[str] = set()
    try:
        top = sorted(os.listdir(root))
    except OSError as e:
        raise DatasetLayoutError(f"cannot list dataset root {root}: {e}") from None

    def split_of(road: str, rel_dir: str) -> str:
        record = f"{road}/{rel_dir.split(os.sep)[0]}"
        seen_records.add(record)
        return "valid" if record in valid_records else "train"

    for name in top:
        m = _ROAD_DIR_RE.match(name)
        if m is None or not os.path.isdir(os.path.join(root, name)):
            continue
        road = m.group(1)
        road_dir = os.path.join(root, name)
        images = _walk_files(road_dir, IMAGE_SUFFIX)
        if road in test_roads:
            splits["test"] += [Entry(key_of(p, root), p, None) for p in images]
            continue
        image_base = os.path.join(road_dir, "ColorImage")
        label_base = os.path.join(root, f"Labels_{road}", "Label")
        paired: set[str] = set()
        for path in images:
            rel = os.path.relpath(path, image_base)
            rel_dir, base = os.path.split(rel)
            if rel.startswith(os.pardir) or not rel_dir:
                issues["train"].append(
                    ListIssue(
                        "missing_file",
                        path,
                        None,
                        f"image {path} is not under {image_base}{os.sep}<Record>{os.sep}<Camera>",
                    )
                )
                continue
            stem = base[: -len(IMAGE_SUFFIX)]
            label = os.path.join(
                resolver.resolve_dir(os.path.join(label_base, rel_dir)), stem + LABEL_SUFFIX
            )
            split = split_of(road, rel_dir)
            if not os.path.isfile(label):
                issues[split].append(
                    ListIssue(
                        "missing_file", label, None, f"image {path} has no label: expected {label}"
                    )
                )
                continue
            paired.add(os.path.normcase(label))
            splits[split].append(Entry(key_of(path, root), path, label))
        for label in _walk_files(label_base, LABEL_SUFFIX):
            if os.path.normcase(label) not in paired:
                rel_dir = os.path.dirname(os.path.relpath(label, label_base))
                issues[split_of(road, rel_dir)].append(
                    ListIssue(
                        "missing_file",
                        label,
                        None,
                        f"label {label} has no image under {image_base}",
                        blocking=False,
                    )
                )
    for split in splits:
        splits[split].sort(key=lambda e: e.key)
    if seen_records and not valid_records & seen_records:
        logging.warning(
            "ApolloScape scan: none of the valid records %s exists under %s (records found: %s)",
            sorted(valid_records),
            root,
            sorted(seen_records),
        )
    return splits, issues


def _walk_files(top: str, suffix: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        out += [os.path.join(dirpath, n) for n in sorted(filenames) if n.endswith(suffix)]
    return out


def _image_size_hw(path: str) -> tuple[int, int]:
    """(height, width) of an image from its header (no pixel decode)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (OSError, ValueError) as e:
        raise DatasetLayoutError(f"cannot read image header of {path}: {e}") from None
    return int(h), int(w)


# ----------------------------------------------------------------------------------------------
# The dataset.


class ApolloscapeDataset(pipeline.FolderDataset):
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
    GENERATOR_MODULE = "data_pipelines.synthetic.apolloscape"

    def __init__(self, config):
        """Validates ``config`` (the data ConfigDict); checks the folder unless it is synthetic."""
        get = lambda name, default=None: pipeline.config_get(config, name, default)
        # Set before the base class checks the root, which reads the list files.
        self._split_source = pipeline.config_choice(config, "split_source", SPLIT_SOURCES, "auto")
        list_files = get("list_files")
        self._list_files = {
            s: pipeline.config_get(list_files, s, DEFAULT_LIST_FILES[s]) for s in SPLITS
        }
        for s, p in self._list_files.items():
            if not isinstance(p, str) or not p:
                raise DataConfigError(
                    f"config.data.list_files.{s} must be a non-empty path string, got {p!r}"
                )
        num_classes = classes.NUM_INTRAKD_CLASSES
        super().__init__(
            config,
            class_names=classes.INTRAKD_CLASS_NAMES,
            default_class_weights=tuple(
                0.05 if k in (0, num_classes - 1) else 1.0 for k in range(num_classes)
            ),
            classes_desc=f"ApolloScape has {num_classes} classes (IntRA-KD train ids "
            f"0..{num_classes - 1})",
            class_lut=classes.INTRAKD_HFLIP_LUT,
        )
        self._root_rewrite = pipeline.normalize_root_rewrite(get("root_rewrite"))
        self._valid_records = tuple(get("scan_valid_records", DEFAULT_VALID_RECORDS))
        self._test_roads = tuple(get("scan_test_roads", DEFAULT_TEST_ROADS))
        teacher_hw = get("teacher_image_hw")
        if teacher_hw is not None:
            try:
                ok = len(teacher_hw) == 2 and min(int(v) for v in teacher_hw) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise DataConfigError(
                    "config.data.teacher_image_hw must be None or (height, width) positive ints, "
                    f"got {teacher_hw!r}"
                )
        self._entries: dict[str, list[Entry]] = {}
        self._by_key: dict[str, dict[str, Entry]] = {}
        self._source_hw: dict[str, tuple[int, int]] = {}
        self._scan: tuple[dict[str, list[Entry]], dict[str, list[ListIssue]]] | None = None

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
        return os.path.isdir(d) and any(_ROAD_DIR_RE.match(n) for n in os.listdir(d))

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

    def _scanned(self) -> tuple[dict[str, list[Entry]], dict[str, list[ListIssue]]]:
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

    def _examples(self, split: str) -> list[pipeline.Example]:
        return [
            pipeline.Example(e.key, e.image_path, None if split == "test" else e.label_path)
            for e in self._split_entries(split)
        ]

    def examples(self, split: str) -> list[pipeline.Example]:
        """``split``'s examples in key order (label path: the raw ``_bin.png``; None for test)."""
        self._check_split(split)
        return self._examples(split)

    def example(self, split: str, key: str) -> pipeline.Example:
        """The example of ``key`` in ``split``.

        Raises:
            KeyError: unknown key.
        """
        self._check_split(split)
        self._split_entries(split)
        e = self._by_key[split].get(key)
        if e is None:
            raise KeyError(f"ApolloScape {split}: no example with key {key!r}")
        return pipeline.Example(e.key, e.image_path, None if split == "test" else e.label_path)

    def image_path(self, split: str, key: str) -> str:
        """Image file of ``key`` in ``split``."""
        return self.example(split, key).image_path

    def _decode_label(self, contents: tf.Tensor) -> tf.Tensor:
        return decode_label_tensor(contents)

    def source_image_hw(self, split: str) -> tuple[int, int]:
        """(height, width) of a split's raw frames (from its first JPEG header)."""
        self._check_split(split)
        if split not in self._source_hw:
            hw = _image_size_hw(self._split_entries(split)[0].image_path)
            if self.options.crop_top >= hw[0]:
                raise DataConfigError(
                    f"config.data.crop_top = {self.options.crop_top} removes every row of the "
                    f"{hw[0]}-row ApolloScape {split} images"
                )
            self._source_hw[split] = hw
        return self._source_hw[split]

    # -- data check hooks -----------------------------------------------------------------------

    def list_problems(self, split: str) -> list:
        """Every malformed list line and missing file of ``split`` (``check.Problem`` list)."""
        from data_pipelines.check import Problem

        self._check_split(split)
        self._ensure_generated()
        _, issues = self._read_split(split)
        return [Problem(i.kind, i.path, i.line, i.message) for i in issues]

    def check_examples(self, split: str) -> list[pipeline.Example]:
        """The examples the lenient reading keeps (``list_problems`` reports the rest)."""
        self._check_split(split)
        self._ensure_generated()
        entries, _ = self._read_split(split)
        return [
            pipeline.Example(e.key, e.image_path, None if split == "test" else e.label_path)
            for e in entries
        ]

    def check_label(self, label_path: str) -> tuple[tuple[int, int], list[str]]:
        """(H, W) of a ``_bin.png`` and messages for ids/colours outside the class table."""
        return label_problems(label_path)

    @property
    def teacher_image_hw(self) -> tuple[int, int] | None:
        """``config.data.teacher_image_hw`` (the teacher's training crop), or None."""
        hw = pipeline.config_get(self._config, "teacher_image_hw")
        return None if hw is None else (int(hw[0]), int(hw[1]))
