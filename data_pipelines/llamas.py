"""LLAMAS (Bosch "unsupervised Labeled LAne MArkerS") reader with the official label semantics.

* ``read_json`` reproduces the official ``label_file_scripts.read_json`` cleaning, with strict
  validation (``LabelFormatError`` naming the file and the json path of the bad field).
* ``render_multiclass_label`` / ``render_binary_label`` reproduce the official segmentation
  labels: every marker is a 0.1 m wide quad projected with the label's projection matrix and
  drawn twice with ``cv2.fillConvexPoly(..., cv2.LINE_AA, 0)``; multi-class keeps only pixels of
  exactly the class colour, so anti-aliased edges fall to background.
* ``LlamasDataset`` lists ``color_images/<split>/<rec>/<ts>_color_rect.png`` with
  ``labels/<split>/<rec>/<ts>.json``, renders labels once into an atomic PNG cache
  (``<cache_dir>/<label_type>/<split>/<rec>/<ts>.png``) and serves them through the shared
  tf.data pipeline.

Rounding rule (checked against the official ``project_lane_marker``): the quad corners are
computed in float64, stored in a float32 array, rounded with ``numpy.round`` (half to even) and
cast to int32; the marker is skipped when the two rounded corner rows are equal.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import cv2
import numpy as np
from absl import logging

from data_pipelines import pipeline
from data_pipelines.errors import DataConfigError, DatasetLayoutError, LabelFormatError

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


# Mirroring the scene turns the leftmost divider into the rightmost one: l1<->r1, l0<->r0.
MULTICLASS_HFLIP_LUT = pipeline.class_swap_lut([(1, 4), (2, 3)])


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
    try:
        with open(source, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise LabelFormatError(f"{source}: invalid json ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LabelFormatError(f"{source}: cannot read label file ({e})") from None
    return clean_label(raw, min_lane_height=min_lane_height, source=source)


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
    if not np.all(np.abs(pts) < 2**30):  # far outside any image; cv2 would overflow
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


def _check_hw(hw: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = int(hw[0]), int(hw[1])
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"hw must be (height, width), got {hw!r}") from None
    if h <= 0 or w <= 0 or len(hw) != 2:
        raise ValueError(f"hw must be (height, width) positive ints, got {hw!r}")
    return h, w


def render_color_image(label: Mapping, hw: Sequence[int] = IMAGE_HW) -> np.ndarray:
    """The official blank BGR segmentation image: every lane drawn in its ``DICT_COLORS`` colour."""
    h, w = _check_hw(hw)
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
    h, w = _check_hw(hw)
    img = np.zeros((h, w), dtype=np.uint8)
    return _draw_lanes(img, label, lambda lane_id: 1)


RENDERERS = {"multiclass": render_multiclass_label, "binary": render_binary_label}


# ----------------------------------------------------------------------------------------------
# Files on disk.


@dataclasses.dataclass(frozen=True)
class Sample:
    """One LLAMAS frame: key ``<recording>/<ts>``, colour image and label json (None: test)."""

    key: str
    image_path: str
    label_path: str | None


def _list_files(root: str, suffix: str) -> dict[str, str]:
    out = {}
    for rec in sorted(os.listdir(root)):
        rec_dir = os.path.join(root, rec)
        if not os.path.isdir(rec_dir):
            continue
        for name in os.listdir(rec_dir):
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
    images = _list_files(image_root, COLOR_SUFFIX)
    if not images:
        raise DatasetLayoutError(f"no *{COLOR_SUFFIX} images found under {image_root}/<recording>/")
    has_labels = os.path.isdir(label_root)
    if not has_labels and split != "test":
        raise DatasetLayoutError(
            f"LLAMAS label folder {label_root} does not exist; expected "
            f"labels/{split}/<recording>/<ts>.json under {data_dir}"
        )
    labels = _list_files(label_root, ".json") if has_labels else {}
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


def write_file_atomic(path: str, data: bytes) -> None:
    """Writes via a temp file in the same folder + ``os.replace``: readers never see half a file."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp creates 0600 files; give the data the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def encode_png(img: np.ndarray, photo: bool = False) -> bytes:
    """Encodes an image as PNG, tuned for speed.

    Args:
      img: uint8 image (H, W) or (H, W, 3) BGR.
      photo: noisy photographs compress best (and ~3x faster) with the SUB filter and
        Huffman-only deflate; flat label maps with run-length encoding and no filter.

    Returns:
      The PNG bytes.
    """
    if photo:
        strategy, png_filter = cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY, cv2.IMWRITE_PNG_FILTER_SUB
    else:
        strategy, png_filter = cv2.IMWRITE_PNG_STRATEGY_RLE, cv2.IMWRITE_PNG_FILTER_NONE
    params = [
        cv2.IMWRITE_PNG_COMPRESSION, 1,
        cv2.IMWRITE_PNG_STRATEGY, strategy,
        cv2.IMWRITE_PNG_FILTER, png_filter,
    ]  # fmt: skip
    ok, buf = cv2.imencode(".png", img, params)
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a PNG")
    return buf.tobytes()


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
    hw = _check_hw(hw)
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

    progress = pipeline.ProgressLogger(f"LLAMAS {split} {label_type} labels", len(todo))
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


class LlamasDataset(pipeline.FolderDataset):
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
    GENERATOR_MODULE = "data_pipelines.synthetic.llamas"

    def __init__(self, config):
        """Validates ``config`` (the data ConfigDict); checks the folder unless it is synthetic."""
        self._label_type = pipeline.config_choice(config, "label_type", LABEL_TYPES, "multiclass")
        class_names = MULTICLASS_NAMES if self._label_type == "multiclass" else BINARY_NAMES
        super().__init__(
            config,
            class_names=class_names,
            default_class_weights=(1.0,) * len(class_names),
            classes_desc=f"label_type {self._label_type!r} has {len(class_names)} classes "
            f"{list(class_names)}",
            class_lut=MULTICLASS_HFLIP_LUT if self._label_type == "multiclass" else None,
        )
        self._min_lane_height = int(pipeline.config_get(config, "min_lane_height", 20))
        cache_dir = pipeline.config_get(config, "cache_dir")
        self._cache_dir = (
            pipeline.absolute_path(cache_dir)
            if cache_dir
            else os.path.join(self._data_dir, ".label_cache")
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

    def _examples(self, split: str) -> list[pipeline.Example]:
        self._prepare_split(split)
        return [
            pipeline.Example(
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
