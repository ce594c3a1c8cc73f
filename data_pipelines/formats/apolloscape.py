"""ApolloScape lane-marking file formats: class table, label PNGs, list files and layout scan.

* The class table is the project's single copy (dataset-api ``helpers/laneMarkDetection.py``,
  identical to IntRA-KD ``trainId2color.py``; DATASETS.md 3.4), with the IntRA-KD 37-class train
  ids added (noise 249 and ignored 255 merged into class 36), and the lookup tables derived from
  it. The reader (``data_pipelines.apolloscape``), the synthetic generator and the evaluation
  code (``intrakd_jax.evaluation.apolloscape``) import it from here.
* Labels (DATASETS.md 3.3): palette or 8-bit gray PNGs hold class ids (palette index = id), mapped
  to the 37 IntRA-KD train ids by a 256-entry table (noise 249 and ignored 255 -> 36; ids outside
  the table -> 255, reported by ``label_problems``); RGB PNGs are mapped by table colour
  (IntRA-KD's ``R + 3G + 5B`` lookup, exact colours only).
* Splits come from IntRA-KD-style list files (``parse_list``: ``<image> <label>[ 1 1 1 1]``;
  paths may contain spaces, camera folders are spelled ``Camera 5`` on disk and ``Camera_5`` in
  the lists, both accepted) or from a scan of the folder layout (``scan_layout``). The reader's
  module docstring describes both.

Keys are image paths relative to the root without the extension, e.g.
``ColorImage_road05/ColorImage/Record001/Camera 5/171206_061127409_Camera_5``.

numpy, OpenCV and Pillow only: importing this module does not load TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import re
from collections.abc import Iterable

import cv2
import numpy as np
from absl import logging
from PIL import Image

from data_pipelines.errors import DatasetLayoutError, LabelFormatError
from data_pipelines.formats.lists import (
    Problem,
    ProblemLog,
    normalize_root_rewrite,
    read_list_lines,
    rewrite_prefix,
)

# ----------------------------------------------------------------------------------------------
# The class table.


@dataclasses.dataclass(frozen=True)
class ApolloLabel:
    """One row of the official ApolloScape lane-marking class table."""

    name: str
    id: int  # value stored in label and submission PNGs (the palette index of a _bin.png)
    train_id: int  # official trainId (255 = not trained)
    intrakd_train_id: int  # IntRA-KD 37-class train id (noise and ignored merged into 36)
    category: str
    cat_id: int
    ignore_in_eval: bool
    color: tuple[int, int, int]  # (R, G, B)


# fmt: off
LABELS: tuple[ApolloLabel, ...] = (
    #            name        id  trainId ikTrain category     catId ignore color (R, G, B)
    ApolloLabel("void",       0,   0,   0, "void",        0, False, (0, 0, 0)),
    ApolloLabel("s_w_d",    200,   1,   1, "dividing",    1, False, (70, 130, 180)),
    ApolloLabel("s_y_d",    204,   2,   2, "dividing",    1, False, (220, 20, 60)),
    ApolloLabel("ds_w_dn",  213,   3,   3, "dividing",    1, True,  (128, 0, 128)),
    ApolloLabel("ds_y_dn",  209,   4,   4, "dividing",    1, False, (255, 0, 0)),
    ApolloLabel("sb_w_do",  206,   5,   5, "dividing",    1, True,  (0, 0, 60)),
    ApolloLabel("sb_y_do",  207,   6,   6, "dividing",    1, True,  (0, 60, 100)),
    ApolloLabel("b_w_g",    201,   7,   7, "guiding",     2, False, (0, 0, 142)),
    ApolloLabel("b_y_g",    203,   8,   8, "guiding",     2, False, (119, 11, 32)),
    ApolloLabel("db_w_g",   211,   9,   9, "guiding",     2, True,  (244, 35, 232)),
    ApolloLabel("db_y_g",   208,  10,  10, "guiding",     2, True,  (0, 0, 160)),
    ApolloLabel("db_w_s",   216,  11,  11, "stopping",    3, True,  (153, 153, 153)),
    ApolloLabel("s_w_s",    217,  12,  12, "stopping",    3, False, (220, 220, 0)),
    ApolloLabel("ds_w_s",   215,  13,  13, "stopping",    3, True,  (250, 170, 30)),
    ApolloLabel("s_w_c",    218,  14,  14, "chevron",     4, True,  (102, 102, 156)),
    ApolloLabel("s_y_c",    219,  15,  15, "chevron",     4, True,  (128, 0, 0)),
    ApolloLabel("s_w_p",    210,  16,  16, "parking",     5, False, (128, 64, 128)),
    ApolloLabel("s_n_p",    232,  17,  17, "parking",     5, True,  (238, 232, 170)),
    ApolloLabel("c_wy_z",   214,  18,  18, "zebra",       6, False, (190, 153, 153)),
    ApolloLabel("a_w_u",    202,  19,  19, "thru/turn",   7, True,  (0, 0, 230)),
    ApolloLabel("a_w_t",    220,  20,  20, "thru/turn",   7, False, (128, 128, 0)),
    ApolloLabel("a_w_tl",   221,  21,  21, "thru/turn",   7, False, (128, 78, 160)),
    ApolloLabel("a_w_tr",   222,  22,  22, "thru/turn",   7, False, (150, 100, 100)),
    ApolloLabel("a_w_tlr",  231,  23,  23, "thru/turn",   7, True,  (255, 165, 0)),
    ApolloLabel("a_w_l",    224,  24,  24, "thru/turn",   7, False, (180, 165, 180)),
    ApolloLabel("a_w_r",    225,  25,  25, "thru/turn",   7, False, (107, 142, 35)),
    ApolloLabel("a_w_lr",   226,  26,  26, "thru/turn",   7, False, (201, 255, 229)),
    ApolloLabel("a_n_lu",   230,  27,  27, "thru/turn",   7, True,  (0, 191, 255)),
    ApolloLabel("a_w_tu",   228,  28,  28, "thru/turn",   7, True,  (51, 255, 51)),
    ApolloLabel("a_w_m",    229,  29,  29, "thru/turn",   7, True,  (250, 128, 114)),
    ApolloLabel("a_y_t",    233,  30,  30, "thru/turn",   7, True,  (127, 255, 0)),
    ApolloLabel("b_n_sr",   205,  31,  31, "reduction",   8, False, (255, 128, 0)),
    ApolloLabel("d_wy_za",  212,  32,  32, "attention",   9, True,  (0, 255, 255)),
    ApolloLabel("r_wy_np",  227,  33,  33, "no parking", 10, False, (178, 132, 190)),
    ApolloLabel("vom_wy_n", 223,  34,  34, "others",     11, True,  (128, 128, 64)),
    ApolloLabel("om_n_n",   250,  35,  35, "others",     11, False, (102, 0, 204)),
    ApolloLabel("noise",    249, 255,  36, "ignored",   255, True,  (0, 153, 153)),
    ApolloLabel("ignored",  255, 255,  36, "ignored",   255, True,  (255, 255, 255)),
)
# fmt: on

ID_TO_LABEL: dict[int, ApolloLabel] = {label.id: label for label in LABELS}
NAME_TO_LABEL: dict[str, ApolloLabel] = {label.name: label for label in LABELS}
TABLE_IDS: frozenset[int] = frozenset(ID_TO_LABEL)
VOID_ID = 0
NOISE_ID = 249
IGNORED_ID = 255
NUM_IDS = 256  # ids are 8-bit; the official confusion matrix is (max id + 1) squared
NUM_INTRAKD_CLASSES = 37
IGNORE_LABEL = 255  # train-id value excluded from loss and metrics
# Ids scored by the official metric (ignoreInEval False), in table order: 17 markings + void.
EVAL_IDS: tuple[int, ...] = tuple(label.id for label in LABELS if not label.ignore_in_eval)
CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(label.category for label in LABELS))

# Official frame geometry (DATASETS.md 3.1, 3.5): (height, width) and the IntRA-KD crop row.
IMAGE_HW = (2710, 3384)
CROP_TOP = 1700  # IntRA-KD keeps rows 1700..2709 of image and label

# IntRA-KD road_npy2img `new_list`: train id t -> id; only the first 37 entries are reachable.
INTRAKD_TRAINID_TO_ID: np.ndarray = np.array(
    [label.id for label in LABELS[:NUM_INTRAKD_CLASSES]], dtype=np.uint8
)
# Names of the 37 IntRA-KD classes; 36 is noise (249) and ignored (255) merged.
INTRAKD_CLASS_NAMES: tuple[str, ...] = tuple(
    label.name for label in LABELS[: NUM_INTRAKD_CLASSES - 1]
) + ("noise_ignored",)
# Overlay colours (R, G, B) of the 37 train ids; 36 takes the noise colour.
INTRAKD_TRAINID_COLORS: np.ndarray = np.array(
    [label.color for label in LABELS[:NUM_INTRAKD_CLASSES]], dtype=np.uint8
)


def _id_lut(field: str) -> np.ndarray:
    lut = np.full(NUM_IDS, IGNORE_LABEL, dtype=np.uint8)
    for label in LABELS:
        lut[label.id] = getattr(label, field)
    return lut


# id -> train id lookup tables (256 entries; ids outside the table map to 255).
ID_TO_TRAINID: np.ndarray = _id_lut("train_id")
ID_TO_INTRAKD_TRAINID: np.ndarray = _id_lut("intrakd_train_id")
KNOWN_ID_MASK: np.ndarray = np.zeros(NUM_IDS, dtype=bool)
KNOWN_ID_MASK[[label.id for label in LABELS]] = True
IGNORED_ID_MASK: np.ndarray = np.zeros(NUM_IDS, dtype=bool)
IGNORED_ID_MASK[[label.id for label in LABELS if label.ignore_in_eval]] = True

# Palette of the released `_bin.png` labels as the synthetic generator writes it: entry id = the
# table colour of id, every other entry black. uint8 (256, 3) RGB.
ID_PALETTE: np.ndarray = np.zeros((NUM_IDS, 3), dtype=np.uint8)
for _label in LABELS:
    ID_PALETTE[_label.id] = _label.color
del _label


def color_hash(rgb: np.ndarray) -> np.ndarray:
    """IntRA-KD colour key ``R + 3*G + 5*B`` (int32, 0..2295) of (..., 3) RGB values."""
    c = np.asarray(rgb).astype(np.int32)
    return c[..., 0] + 3 * c[..., 1] + 5 * c[..., 2]


COLOR_HASH_SIZE = 255 * 9 + 1
# hash -> index into LABELS (-1 = no table colour); the 38 table hashes are distinct.
HASH_TO_ROW: np.ndarray = np.full(COLOR_HASH_SIZE, -1, dtype=np.int16)
HASH_TO_ROW[color_hash(np.array([label.color for label in LABELS]))] = np.arange(len(LABELS))
# hash -> IntRA-KD train id (255 = no table colour), the lookup of IntRA-KD `origin_id`.
HASH_TO_INTRAKD_TRAINID: np.ndarray = np.full(COLOR_HASH_SIZE, IGNORE_LABEL, dtype=np.uint8)
HASH_TO_INTRAKD_TRAINID[HASH_TO_ROW >= 0] = [
    LABELS[r].intrakd_train_id for r in HASH_TO_ROW[HASH_TO_ROW >= 0]
]

# Horizontal mirroring swaps the left/right arrows (a_w_tl <-> a_w_tr, a_w_l <-> a_w_r). The
# official recipe does not flip; other turning arrows (U-turns) have no mirrored class.
INTRAKD_HFLIP_LUT: np.ndarray = np.arange(256, dtype=np.uint8)
for _a, _b in (("a_w_tl", "a_w_tr"), ("a_w_l", "a_w_r")):
    _ta, _tb = NAME_TO_LABEL[_a].intrakd_train_id, NAME_TO_LABEL[_b].intrakd_train_id
    INTRAKD_HFLIP_LUT[_ta], INTRAKD_HFLIP_LUT[_tb] = _tb, _ta
del _a, _b, _ta, _tb


@functools.cache
def packed_color_lut() -> np.ndarray:
    """uint8 (2**24,) packed 0xRRGGBB colour -> IntRA-KD train id (255 = no table colour).

    16 MiB, built on first use (RGB labels only): one gather is ~3x faster than the hash lookup
    plus an exact-colour check.
    """
    lut = np.full(1 << 24, IGNORE_LABEL, dtype=np.uint8)
    for label in LABELS:
        r, g, b = label.color
        lut[(r << 16) | (g << 8) | b] = label.intrakd_train_id
    return lut


def rgb_to_intrakd_trainid(rgb: np.ndarray) -> np.ndarray:
    """Maps (H, W, 3) RGB table colours to IntRA-KD train ids (uint8 (H, W)).

    Same result as IntRA-KD's hash lookup ``R + 3G + 5B`` for table colours; a colour that is
    not exactly a table colour (also one whose hash collides with a table hash) maps to 255.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W, 3) RGB, got {rgb.dtype} {rgb.shape}")
    return packed_color_lut()[pack_rgb(rgb)]


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """int32 0xRRGGBB keys of (..., 3) uint8 RGB values."""
    key = rgb[..., 0].astype(np.int32) << 16
    key |= rgb[..., 1].astype(np.int32) << 8
    key |= rgb[..., 2]
    return key


# ----------------------------------------------------------------------------------------------
# Layout constants.

SPLITS = ("train", "valid", "test")
IMAGE_SUFFIX = ".jpg"
LABEL_SUFFIX = "_bin.png"
DEFAULT_LIST_FILES = {"train": "list/train.txt", "valid": "list/val.txt", "test": "list/test.txt"}
DEFAULT_VALID_RECORDS = ("road04/Record015", "road04/Record017")
DEFAULT_TEST_ROADS = ("road05",)
# IntRA-KD's lists carry absolute paths of the authors' machine (DATASETS.md 3.5).
INTRAKD_LIST_PREFIX = "/home/houyuenan/ApolloScapes/"

_IMAGE_EXTS = (".jpg", ".jpeg", ".png")
_CAMERA_RE = re.compile(r"^Camera[ _](\d+)$")
# Image field: the shortest prefix ending in an image extension followed by whitespace or the
# end (paths may contain spaces); the rest is the label field.
_LINE_RE = re.compile(r"^(?P<image>.+?\.(?:jpe?g|png))(?=\s|$)\s*(?P<rest>.*)$", re.IGNORECASE)
ROAD_DIR_RE = re.compile(r"^ColorImage_(road\d+)$")

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
    return cv2.LUT(ids_hw, ID_TO_INTRAKD_TRAINID)


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
    return rgb_to_intrakd_trainid(arr)


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
        counts = np.bincount(arr.ravel(), minlength=NUM_IDS)
        bad = np.flatnonzero((counts > 0) & ~KNOWN_ID_MASK)
        if bad.size:
            messages.append(
                f"ids {{{', '.join(str(v) for v in bad)}}} are not ApolloScape class ids "
                f"(at {int(counts[bad].sum())} pixels; table ids: "
                f"{sorted(TABLE_IDS)})"
            )
        return hw, messages
    key = pack_rgb(arr)
    # Every table colour maps to a train id below 255 (white, "ignored", to 36).
    outside = key[packed_color_lut()[key] == IGNORE_LABEL]
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
        path = rewrite_prefix(path, self.rewrite).replace("/", os.sep)
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


class _MalformedLine(ValueError):
    """A list line that does not parse; the message says why."""


def _line_fields(text: str, labelled: bool) -> tuple[str, str | None]:
    """The image and label fields of a stripped, non-blank list line.

    Raises:
        _MalformedLine: the line does not have the expected fields.
    """
    if labelled:
        tokens = text.split()
        n_flags = 0
        while n_flags < len(tokens) - 1 and re.fullmatch(r"[+-]?\d+", tokens[-1 - n_flags]):
            n_flags += 1
        if n_flags not in (0, 4):
            raise _MalformedLine(f"{n_flags} trailing integer fields in {text!r}")
        body = text.rsplit(maxsplit=n_flags)[0] if n_flags else text
    else:
        body = text  # test lists: whatever follows the image (dummy label, flags) is ignored
    m = _LINE_RE.match(body)
    if m is None:
        raise _MalformedLine(f"no image path ending in {'/'.join(_IMAGE_EXTS)} in {text!r}")
    image_field, rest = m.group("image"), m.group("rest").strip()
    if not labelled:
        return image_field, None
    if not rest:
        raise _MalformedLine(f"no label field in {text!r}")
    if not rest.lower().endswith(".png"):
        raise _MalformedLine(f"label field {rest!r} is not a .png path")
    return image_field, rest


def parse_list(
    list_path: str | os.PathLike,
    root: str | os.PathLike,
    labelled: bool = True,
    root_rewrite: Iterable[tuple[str, str]] = (),
    check_files: bool = True,
) -> tuple[list[Entry], list[Problem]]:
    """Reads an IntRA-KD-style list leniently: every good entry and every problem.

    Args:
        list_path: the list file.
        root: dataset root; relative paths (also after a rewrite) are joined to it.
        labelled: True: lines must be ``<image> <label>.png[ 1 1 1 1]``; False: ``<image>``
            with an optional label field and flags, both ignored.
        root_rewrite: ``(old_prefix, new_prefix)`` pairs applied to list paths (first match).
        check_files: also report files that do not exist.

    Returns:
        (entries in list order, problems). A line with a problem yields no entry; an unreadable
        list yields no entries and one ``missing_file`` problem.
    """
    list_path = os.fspath(list_path)
    root = os.path.abspath(os.fspath(root))
    rewrite = normalize_root_rewrite(tuple(root_rewrite))
    resolver = _Resolver(root, rewrite)
    expected = (
        "'<image>.jpg <label>_bin.png' with optional 4 integer flags"
        if labelled
        else "'<image>.jpg' optionally followed by a (dummy) label and 4 integer flags"
    )
    log = ProblemLog()
    entries: list[Entry] = []
    first_line: dict[str, int] = {}
    for lineno, raw in read_list_lines(list_path, log, expected):
        text = raw.strip()
        try:
            image_field, label_field = _line_fields(text, labelled)
        except _MalformedLine as e:
            log.add("malformed_line", list_path, lineno, f"{e}; expected {expected}")
            continue
        image_path = resolver.resolve(image_field)
        label_path = None if label_field is None else resolver.resolve(label_field)
        key = key_of(image_path, root)
        if key in first_line:
            log.add(
                "malformed_line",
                list_path,
                lineno,
                f"duplicate image {image_field!r} (first at line {first_line[key]}); "
                f"expected {expected}",
            )
            continue
        files = (("image", image_field, image_path), ("label", label_field, label_path))
        missing = [
            (what, field, path)
            for what, field, path in files
            if check_files and path is not None and not os.path.isfile(path)
        ]
        for what, field, path in missing:
            log.add(
                "missing_file",
                path,
                lineno,
                f"{list_path}:{lineno}: {what} {field!r} -> {path} does not exist"
                + _missing_hint(path, root, rewrite),
            )
        if missing:
            continue
        first_line[key] = lineno
        entries.append(Entry(key, image_path, label_path, lineno))
    return entries, log.problems


class _LayoutScan:
    """The splits of a scanned layout, built road by road (see ``scan_layout``)."""

    def __init__(self, root: str, valid_records: Iterable[str], test_roads: Iterable[str]):
        self.root = root
        self.valid_records = {r.strip("/") for r in valid_records}
        self.test_roads = set(test_roads)
        self.resolver = _Resolver(root, ())
        self.splits: dict[str, list[Entry]] = {s: [] for s in SPLITS}
        self.problems: dict[str, ProblemLog] = {s: ProblemLog() for s in SPLITS}
        self.seen_records: set[str] = set()

    def split_of(self, road: str, rel_dir: str) -> str:
        record = f"{road}/{rel_dir.split(os.sep)[0]}"
        self.seen_records.add(record)
        return "valid" if record in self.valid_records else "train"

    def add_road(self, road: str, road_dir: str) -> None:
        """Adds a road's images: all to ``test``, or each paired with its label."""
        images = _walk_files(road_dir, IMAGE_SUFFIX)
        if road in self.test_roads:
            self.splits["test"] += [Entry(key_of(p, self.root), p, None) for p in images]
            return
        image_base = os.path.join(road_dir, "ColorImage")
        label_base = os.path.join(self.root, f"Labels_{road}", "Label")
        paired: set[str] = set()
        for path in images:
            label = self._pair(road, path, image_base, label_base)
            if label is not None:
                paired.add(os.path.normcase(label))
        for label in _walk_files(label_base, LABEL_SUFFIX):
            if os.path.normcase(label) not in paired:
                rel_dir = os.path.dirname(os.path.relpath(label, label_base))
                self.problems[self.split_of(road, rel_dir)].add(
                    "missing_file",
                    label,
                    None,
                    f"label {label} has no image under {image_base}",
                    blocking=False,
                )

    def _pair(self, road: str, path: str, image_base: str, label_base: str) -> str | None:
        """Files the image ``path`` with its label under its record's split; the label or None."""
        rel = os.path.relpath(path, image_base)
        rel_dir, base = os.path.split(rel)
        if rel.startswith(os.pardir) or not rel_dir:
            self.problems["train"].add(
                "missing_file",
                path,
                None,
                f"image {path} is not under {image_base}{os.sep}<Record>{os.sep}<Camera>",
            )
            return None
        stem = base[: -len(IMAGE_SUFFIX)]
        label = os.path.join(
            self.resolver.resolve_dir(os.path.join(label_base, rel_dir)), stem + LABEL_SUFFIX
        )
        split = self.split_of(road, rel_dir)
        if not os.path.isfile(label):
            self.problems[split].add(
                "missing_file", label, None, f"image {path} has no label: expected {label}"
            )
            return None
        self.splits[split].append(Entry(key_of(path, self.root), path, label))
        return label


def scan_layout(
    root: str | os.PathLike,
    valid_records: Iterable[str] = DEFAULT_VALID_RECORDS,
    test_roads: Iterable[str] = DEFAULT_TEST_ROADS,
) -> tuple[dict[str, list[Entry]], dict[str, list[Problem]]]:
    """Builds the three splits from the folder layout.

    Every ``ColorImage_<road>/`` folder is scanned; roads in ``test_roads`` form ``test`` (every
    ``*.jpg`` below, nested or flat), the other roads' images pair with
    ``Labels_<road>/Label/<same relative folder>/<stem>_bin.png``; a record ``<road>/<RecordNNN>``
    in ``valid_records`` goes to ``valid``, every other labelled record to ``train``.

    Args:
        root: dataset root holding ``ColorImage_<road>/`` and ``Labels_<road>/`` folders.
        valid_records: ``<road>/<record>`` names that form ``valid``.
        test_roads: roads without labels that form ``test``.

    Returns:
        ({split: entries sorted by key}, {split: problems}): images without labels (blocking)
        and labels without images (not blocking), under the split of their record.

    Raises:
        DatasetLayoutError: the root cannot be listed.
    """
    root = os.path.abspath(os.fspath(root))
    scan = _LayoutScan(root, valid_records, test_roads)
    try:
        top = sorted(os.listdir(root))
    except OSError as e:
        raise DatasetLayoutError(f"cannot list dataset root {root}: {e}") from None
    for name in top:
        m = ROAD_DIR_RE.match(name)
        if m is not None and os.path.isdir(os.path.join(root, name)):
            scan.add_road(m.group(1), os.path.join(root, name))
    for split in scan.splits:
        scan.splits[split].sort(key=lambda e: e.key)
    if scan.seen_records and not scan.valid_records & scan.seen_records:
        logging.warning(
            "ApolloScape scan: none of the valid records %s exists under %s (records found: %s)",
            sorted(scan.valid_records),
            root,
            sorted(scan.seen_records),
        )
    return scan.splits, {s: log.problems for s, log in scan.problems.items()}


def _walk_files(top: str, suffix: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        out += [os.path.join(dirpath, n) for n in sorted(filenames) if n.endswith(suffix)]
    return out


def image_size_hw(path: str) -> tuple[int, int]:
    """(height, width) of an image from its header (no pixel decode).

    Raises:
        DatasetLayoutError: the file is missing or not an image (names the file).
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (OSError, ValueError) as e:
        raise DatasetLayoutError(f"cannot read image header of {path}: {e}") from None
    return int(h), int(w)
