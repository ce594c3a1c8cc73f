"""LLAMAS label files: json reading with the official cleaning, and the official label rendering.

* ``read_json`` reproduces the official ``label_file_scripts.read_json`` cleaning, with strict
  validation (``LabelFormatError`` naming the file and the json path of the bad field).
* ``render_multiclass_label`` / ``render_binary_label`` reproduce the official segmentation
  labels: every marker is a 0.1 m wide quad projected with the label's projection matrix and
  drawn twice with ``cv2.fillConvexPoly(..., cv2.LINE_AA, 0)``; multi-class keeps only pixels of
  exactly the class colour, so anti-aliased edges fall to background.

Rounding rule (checked against the official ``project_lane_marker``): the quad corners are
computed in float64, stored in a float32 array, rounded with ``numpy.round`` (half to even) and
cast to int32; the marker is skipped when the two rounded corner rows are equal.

numpy and OpenCV only: the tf.data reader (``data_pipelines.llamas``), the synthetic generator
and the metrics (``intrakd_jax.evaluation``) import this module without loading TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import cv2
import numpy as np

from data_pipelines.errors import LabelFormatError

IMAGE_WH = (1276, 717)  # official LLAMAS image size (width, height)
IMAGE_HW = (IMAGE_WH[1], IMAGE_WH[0])
SPLITS = ("train", "valid", "test")
MARKER_WIDTH_M = 0.1  # official marker width in metres
COLOR_SUFFIX = "_color_rect.png"
GRAY_SUFFIX = "_gray_rect.png"

# Official BGR lane colours (DATASETS.md 2.4, LL dataset_constants.DICT_COLORS).
DICT_COLORS: dict[str, tuple[int, int, int]] = {
    "l7": (110, 30, 30),
    "l6": (75, 25, 230),
    "l5": (75, 180, 60),
    "l4": (200, 130, 0),
    "l3": (48, 130, 245),
    "l2": (180, 30, 145),
    "l1": (0, 0, 255),
    "l0": (24, 140, 34),
    "r0": (255, 0, 0),
    "r1": (0, 255, 255),
    "r2": (40, 110, 170),
    "r3": (200, 250, 255),
    "r4": (255, 190, 230),
    "r5": (0, 0, 128),
    "r6": (195, 255, 170),
    "r7": (0, 128, 128),
    "r8": (195, 255, 170),
}
# Ids outside the official table (the official code raises KeyError) are drawn in a colour that
# is no class colour, so they count as background like l2+/r2+.
FALLBACK_COLOR = (128, 128, 128)

CLASS_LANES = ("l1", "l0", "r0", "r1")  # multi-class ids 1..4
MULTICLASS_NAMES = ("background", "l1", "l0", "r0", "r1")
BINARY_NAMES = ("background", "marker")
LABEL_TYPES = ("multiclass", "binary")


# ----------------------------------------------------------------------------------------------
# json reading and cleaning.


def _fail(
    source: str, field: str, expected: str, got: Any = None, has_got: bool = True
) -> NoReturn:
    got_txt = f", got {got!r}" if has_got else ""
    raise LabelFormatError(f"{source}: field {field}: expected {expected}{got_txt}") from None


def _require(obj: Mapping, key: str, source: str, path: str) -> Any:
    if key not in obj:
        _fail(source, f"{path}.{key}" if path else key, "the key to be present", has_got=False)
    return obj[key]


def _as_int(value: Any, source: str, field: str) -> int:
    """Official ``int(v)``: numbers truncate, strings must be integral."""
    if isinstance(value, bool):
        _fail(source, field, "an integer or integral numeric string", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            _fail(source, field, "a finite number", value)
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            _fail(source, field, "an integral numeric string (int() must accept it)", value)
    _fail(source, field, "an integer or integral numeric string", value)


def _as_float(value: Any, source: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        _fail(source, field, "a number or numeric string", value)
    try:
        out = float(value)
    except ValueError:
        _fail(source, field, "a number or numeric string", value)
    except OverflowError:  # an int beyond the float range
        _fail(source, field, "a finite number", value)
    if not math.isfinite(out):
        _fail(source, field, "a finite number", value)
    return out


def _point(obj: Any, keys: str, cast, source: str, field: str) -> dict:
    if not isinstance(obj, Mapping):
        _fail(source, field, f"an object with keys {list(keys)}", obj)
    return {k: cast(_require(obj, k, source, field), source, f"{field}.{k}") for k in keys}


def _parse_label(raw: Any, source: str) -> dict:
    """Validates the raw json and returns it with typed values (no cleaning yet)."""
    if not isinstance(raw, Mapping):
        _fail(source, "<root>", "a json object", type(raw).__name__)
    pm = _require(raw, "projection_matrix", source, "")
    if (
        not isinstance(pm, list)
        or len(pm) != 3
        or any(not isinstance(r, list) or len(r) != 3 for r in pm)
    ):
        _fail(source, "projection_matrix", "a 3x3 list of numbers", pm)
    matrix = [
        [_as_float(v, source, f"projection_matrix[{i}][{j}]") for j, v in enumerate(row)]
        for i, row in enumerate(pm)
    ]
    lanes_raw = _require(raw, "lanes", source, "")
    if not isinstance(lanes_raw, list):
        _fail(source, "lanes", "a list of lane objects", type(lanes_raw).__name__)
    lanes = []
    for i, lane in enumerate(lanes_raw):
        lp = f"lanes[{i}]"
        if not isinstance(lane, Mapping):
            _fail(source, lp, "a lane object", lane)
        lane_id = _require(lane, "lane_id", source, lp)
        if not isinstance(lane_id, str) or not lane_id or lane_id[0] not in "lr":
            _fail(source, f"{lp}.lane_id", "a string starting with 'l' or 'r'", lane_id)
        markers_raw = _require(lane, "markers", source, lp)
        if not isinstance(markers_raw, list):
            _fail(source, f"{lp}.markers", "a list of marker objects", type(markers_raw).__name__)
        markers = []
        for j, marker in enumerate(markers_raw):
            mp = f"{lp}.markers[{j}]"
            if not isinstance(marker, Mapping):
                _fail(source, mp, "a marker object", marker)
            clean = {k: v for k, v in marker.items() if k not in _POINT_KEYS}
            for key, (coords, cast) in _POINT_KEYS.items():
                point = _require(marker, key, source, mp)
                clean[key] = _point(point, coords, cast, source, f"{mp}.{key}")
            markers.append(clean)
        out_lane = {k: v for k, v in lane.items() if k not in ("lane_id", "markers")}
        out_lane["lane_id"] = lane_id
        out_lane["markers"] = markers
        lanes.append(out_lane)
    return {"projection_matrix": matrix, "lanes": lanes}


_POINT_KEYS = {
    "world_start": ("xyz", _as_float),
    "world_end": ("xyz", _as_float),
    "pixel_start": ("xy", _as_int),
    "pixel_end": ("xy", _as_int),
}


def _fix_lane_names(lanes: list[dict]) -> None:
    """Official renumbering: consecutive ids per side in lexicographically sorted order."""
    l_counter = r_counter = 0
    mapping = {}
    for key in sorted(lane["lane_id"] for lane in lanes):
        # Duplicated ids overwrite their mapping exactly as the official loop does.
        if key[0] == "l":
            mapping[key] = f"l{l_counter}"
            l_counter += 1
        elif key[0] == "r":
            mapping[key] = f"r{r_counter}"
            r_counter += 1
    for lane in lanes:
        lane["lane_id"] = mapping[lane["lane_id"]]


def clean_label(raw: Any, min_lane_height: int = 20, source: str = "<label>") -> dict:
    """Validates and cleans an already-loaded LLAMAS label dict (see ``read_json``).

    Args:
        raw: the decoded json object.
        min_lane_height: lanes whose ``pixel_start.y`` span is below this are dropped.
        source: name used in error messages (usually the file path).

    Returns:
        ``{"projection_matrix": 3x3 float lists, "lanes": [{"lane_id", "markers", ...}]}`` with
        pixel coordinates as int and world coordinates as float.

    Raises:
        LabelFormatError: a required field is missing or has the wrong type.
    """
    label = _parse_label(raw, source)
    lanes = label["lanes"]
    # 1. Official _filter_lanes_by_size (0-marker lanes, which crash the official min(), go too).
    kept = []
    for lane in lanes:
        ys = [m["pixel_start"]["y"] for m in lane["markers"]]
        if ys and max(ys) - min(ys) >= min_lane_height:
            kept.append(lane)
    # 2. Official _filter_few_markers(min_markers=2).
    kept = [lane for lane in kept if len(lane["markers"]) >= 2]
    # 3. Official _fix_lane_names.
    _fix_lane_names(kept)
    label["lanes"] = kept
    return label


def read_json(path: str | os.PathLike, min_lane_height: int = 20) -> dict:
    """Reads a LLAMAS label json and applies the official ``read_json`` cleaning, in order.

    1. drop lanes whose ``max - min`` of the markers' ``int(pixel_start.y)`` is below
       ``min_lane_height``; 2. drop lanes with fewer than 2 markers; 3. renumber lane ids per side
       consecutively in sorted order (``['l3','l2','l0','r0','r2'] -> ['l2','l1','l0','r0','r1']``);
       4. pixel values as int (numbers truncate, strings must be integral), world values as float.

    Args:
        path: the ``.json`` label file.
        min_lane_height: minimum ``pixel_start.y`` span of a lane, in pixels.

    Returns:
        The cleaned label (see ``clean_label``).

    Raises:
        LabelFormatError: unreadable file, bad json syntax or a missing/mistyped field; the message
            names the file and the json path of the field.
    """
    source = os.fspath(path)
    raw = load_json(source)
    return clean_label(raw, min_lane_height=min_lane_height, source=source)


def load_json(path: str | os.PathLike) -> Any:
    """The decoded json of a label file, any failure as ``LabelFormatError`` naming the file.

    Besides syntax errors and unreadable or non-UTF-8 files, hostile json that Python's decoder
    rejects with other exceptions is reported the same way: nesting deeper than the recursion
    limit (``RecursionError``) and integers of more than 4300 digits (``ValueError``).

    Raises:
        LabelFormatError: the message is ``<path>: invalid json (...)`` (with the line and
            column of a syntax error) or ``<path>: cannot read label file (...)``.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise LabelFormatError(f"{source}: invalid json ({e})") from None
    except RecursionError:
        raise LabelFormatError(f"{source}: invalid json (nested too deeply to decode)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LabelFormatError(f"{source}: cannot read label file ({e})") from None
    except ValueError as e:  # the decoder's int() limit: numbers of more than 4300 digits
        raise LabelFormatError(f"{source}: invalid json ({e})") from None


# ----------------------------------------------------------------------------------------------
# Rendering.


def marker_polygon(
    projection_matrix: Any, world_start: Mapping, world_end: Mapping, width: float = MARKER_WIDTH_M
) -> np.ndarray | None:
    """Official marker quad in pixels, int32 (4, 2) as (x, y), or None when it is skipped.

    Corners ``(u1-hw1, v1), (u1+hw1, v1), (u2+hw2, v2), (u2-hw2, v2)`` with
    ``hw = P[0,0] * width / z / 2`` (z of the world point), rounded half-to-even from float32.
    Returns None when both rounded rows are equal (official skip) or a point is not in front of
    the camera (z <= 0; undefined in the official code).
    """
    p = np.asarray(projection_matrix, dtype=np.float64)
    z1, z2 = float(world_start["z"]), float(world_end["z"])
    if z1 <= 0.0 or z2 <= 0.0:
        return None
    # Finite but extreme values (a zero projected depth, 1e308 coordinates) overflow to inf or
    # NaN here; such a marker is dropped by the range check below, without numpy warnings.
    with np.errstate(all="ignore"):
        p1 = p @ np.array([world_start["x"], world_start["y"], z1], dtype=np.float64)
        p2 = p @ np.array([world_end["x"], world_end["y"], z2], dtype=np.float64)
        p1 = p1 / p1[2]
        p2 = p2 / p2[2]
        hw1 = p[0, 0] * width / z1 / 2.0
        hw2 = p[0, 0] * width / z2 / 2.0
        pts = np.zeros((4, 2), dtype=np.float32)  # float32 on purpose: the official array dtype
        pts[0] = (p1[0] - hw1, p1[1])
        pts[1] = (p1[0] + hw1, p1[1])
        pts[2] = (p2[0] + hw2, p2[1])
        pts[3] = (p2[0] - hw2, p2[1])
    if not np.all(np.abs(pts) < 2**30):  # far outside any image (or NaN); cv2 would overflow
        return None
    pts = np.round(pts).astype(np.int32)
    if pts[0, 1] == pts[3, 1]:
        return None
    return pts


def _draw_lanes(img: np.ndarray, label: Mapping, color_fn) -> np.ndarray:
    proj = np.asarray(label["projection_matrix"], dtype=np.float64)
    for lane in label["lanes"]:
        color = color_fn(lane["lane_id"])
        for marker in lane["markers"]:
            pts = marker_polygon(proj, marker["world_start"], marker["world_end"])
            if pts is None:
                continue
            # Drawn twice like the official code: the second pass changes the AA edge values.
            cv2.fillConvexPoly(img, pts, color, cv2.LINE_AA, 0)
            cv2.fillConvexPoly(img, pts, color, cv2.LINE_AA, 0)
    return img


def check_hw(hw: Sequence[int]) -> tuple[int, int]:
    """``hw`` as (height, width) positive ints.

    Raises:
        ValueError: not two positive integers (the message shows ``hw``).
    """
    try:
        h, w = int(hw[0]), int(hw[1])
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"hw must be (height, width), got {hw!r}") from None
    if h <= 0 or w <= 0 or len(hw) != 2:
        raise ValueError(f"hw must be (height, width) positive ints, got {hw!r}")
    return h, w


def render_color_image(label: Mapping, hw: Sequence[int] = IMAGE_HW) -> np.ndarray:
    """The official blank BGR segmentation image: every lane drawn in its ``DICT_COLORS`` colour."""
    h, w = check_hw(hw)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    return _draw_lanes(img, label, lambda lane_id: DICT_COLORS.get(lane_id, FALLBACK_COLOR))


def render_multiclass_label(label: Mapping, hw: Sequence[int] = IMAGE_HW) -> np.ndarray:
    """Official multi-class label: uint8 (H, W), 0 bg, 1 l1, 2 l0, 3 r0, 4 r1.

    All lanes are drawn (l2+/r2+ in their own colours, later lanes over earlier ones), then a
    pixel gets class k only if its BGR value equals the class colour exactly.

    Args:
        label: a cleaned label from ``read_json``/``clean_label``.
        hw: image (height, width); the official size is (717, 1276).

    Returns:
        The class map.
    """
    img = render_color_image(label, hw)
    out = np.zeros(img.shape[:2], dtype=np.uint8)
    for cls, lane_id in enumerate(CLASS_LANES, start=1):
        color = np.array(DICT_COLORS[lane_id], np.uint8)
        # inRange with lower == upper is an exact match on all 3 channels (and ~50x faster than
        # numpy's all-reduce over the 717x1276x3 frame).
        out[cv2.inRange(img, color, color) != 0] = cls
    return out


def render_binary_label(label: Mapping, hw: Sequence[int] = IMAGE_HW) -> np.ndarray:
    """Official binary label: uint8 (H, W) in {0, 1}, all lanes drawn with colour 1."""
    h, w = check_hw(hw)
    img = np.zeros((h, w), dtype=np.uint8)
    return _draw_lanes(img, label, lambda lane_id: 1)


RENDERERS = {"multiclass": render_multiclass_label, "binary": render_binary_label}
