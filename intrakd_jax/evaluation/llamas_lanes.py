"""Official LLAMAS lane-level metrics and the lane submission formats (DATASETS.md 2.5-2.7).

* Lane F1 ("CULane metric on LLAMAS", official "discrete" mode of unsupervised_llamas
  `culane_metric/evaluate.py`). Ground truth is the per-row x table of
  `spline_creator.get_horizontal_values_for_four_lanes` (`_extend_lane` + `_sample_points`)
  for l1, l0, r0, r1, kept at rows >= 300 where x >= 0. Predictions are read from
  `<pred_dir>/<recording>/<ts>.lines.txt`; each lane of >= 2 points loses consecutive duplicate
  points and is resampled at 50 points of a scipy `splprep(s=0, k=min(3, n - 1))` spline. Every
  lane is cast to int32 by truncation, drawn with `cv2.line(thickness=30)` on a 717 x 1276
  canvas, IoU is |A & B| / |A | B|, lanes are matched by `linear_sum_assignment(1 - IoU)` and a
  match is a true positive when IoU > 0.5. FP = #pred - TP and FN = #gt - TP, summed over images.
* `read_lines_txt`: the LLAMAS reading of the CULane `.lines.txt` prediction format (the writer
  is `data_pipelines.formats.lines_txt.write_lines_txt`).
* `write_lane_regression_json` / `lane_regression_error`: the "lane approximation" benchmark
  (2.6c): one json of per-row x values per lane, scored by the mean absolute x error at rows
  >= 300.

Where the official code crashes (so there is no official number to equal), this module picks a
rule and says so: a missing prediction file means no lanes; a lane that is left with one point
after removing consecutive duplicates is kept as a prediction that covers no pixel (IoU 0, so a
false positive); a pair of lanes that both draw nothing inside the image has IoU 0 instead of
0/0; a ground-truth lane with fewer than two valid rows at or below row 300 is dropped (the
official code drops lanes with <= 1 valid row over the whole image, then asserts); a lane whose
markers are all horizontal or vertical is not extended (the official `min()` fails).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from scipy.interpolate import splev, splprep
from scipy.optimize import linear_sum_assignment

from data_pipelines.errors import LabelFormatError
from data_pipelines.formats.llamas import clean_label, read_json
from intrakd_jax.evaluation import cli, pool
from intrakd_jax.evaluation.llamas import add_folder_flags, label_base, list_label_files

IMAGE_HW = (717, 1276)  # official LLAMAS (height, width)
MIN_ROW = 300  # official first evaluated row (culane_metric `add_ys`, lane_regression cutoff)
LANE_IDS = ("l1", "l0", "r0", "r1")  # the four lanes of the official lane metrics, in order
NUM_SPLINE_SAMPLES = 50
LANE_WIDTH = 30
IOU_THRESHOLD = 0.5
# Coordinates are clipped to this magnitude before the int32 cast: beyond it the official
# `astype(np.int32)` overflows (undefined), far inside it nothing can reach the canvas.
_COORD_LIMIT = float(2**30)


# ----------------------------------------------------------------------------------------------
# Ground truth: the official per-row x values (spline_creator.get_horizontal_values_...).


def _ir(value: float) -> int:
    """Official `helper_scripts.ir`: Python `int(round(v))` (round half to even)."""
    return int(round(value))


def _extend_lane(markers: list[dict], width: int, height: int) -> list[dict]:
    """Official `_extend_lane`: prepend a fake marker reaching the bottom row or a side border.

    The nearest marker (minimum `world_start.z`, first one on ties) among those with distinct
    start/end x and y is extrapolated in pixel space from its start towards y = height - 1; if
    it leaves the image first, the fake marker starts at x = 0 or x = width instead.
    """
    usable = [
        m
        for m in markers
        if m["pixel_start"]["y"] != m["pixel_end"]["y"]
        and m["pixel_start"]["x"] != m["pixel_end"]["x"]
    ]
    if not usable:
        # The official min() raises on an empty sequence; leave such a lane as it is.
        return markers
    closest = min(usable, key=lambda m: m["world_start"]["z"])
    if closest["world_start"]["z"] < 0:
        return markers
    sx, sy = closest["pixel_start"]["x"], closest["pixel_start"]["y"]
    ex, ey = closest["pixel_end"]["x"], closest["pixel_end"]["y"]
    # Python floats throughout: the official arithmetic, operation for operation.
    x_gradient = (ex - sx) / (ey - sy)
    y_gradient = (ey - sy) / (ex - sx)
    bottom_x = sx + (height - 1 - sy) * x_gradient
    if bottom_x < 0:
        new_point = (0, sy - sx * y_gradient)
    elif bottom_x > width:
        new_point = (width, sy + (width - sx) * y_gradient)
    else:
        new_point = (bottom_x, height - 1)
    fake = {
        "pixel_start": {"x": _ir(new_point[0]), "y": _ir(new_point[1])},
        "pixel_end": {"x": sx, "y": sy},
    }
    return [fake] + list(markers)


def _sample_points(markers: Sequence[dict], height: int, source: str, lane_id: str) -> list[float]:
    """Official `_sample_points(between_markers=True)`: one x per row, -1 where missing.

    Each marker adds its start x at its start row and, when it spans more than 2 rows, a rounded
    x for every row from start to end (so the start row gets its x twice). Rows average their
    values; rows between the first and last set row are then filled by the official sequential
    linear interpolation. Row indices follow Python list indexing like the official code
    (negative rows wrap around); rows outside [-height, height) make the official code fail.
    """
    x_values: list[Any] = [[] for _ in range(height)]

    def add(row: int, x: int) -> None:
        try:
            x_values[row].append(x)
        except IndexError:
            raise ValueError(
                f"{source}: lane {lane_id}: marker row {row} is outside the {height}-row image "
                "(the official spline_creator fails here too)"
            ) from None

    for marker in markers:
        sx, sy = marker["pixel_start"]["x"], marker["pixel_start"]["y"]
        ex, ey = marker["pixel_end"]["x"], marker["pixel_end"]["y"]
        add(sy, sx)
        span = sy - ey
        if span > 2:
            slope = (ex - sx) / span
            step = (sy - ey) / float(span)
            for i in range(span + 1):
                add(_ir(sy - step * i), _ir(sx + slope * step * i))

    for row, xs in enumerate(x_values):
        x_values[row] = sum(xs) / float(len(xs)) if xs else -1

    current = 0
    while current < height and x_values[current] == -1:
        current += 1
    if current == height:  # every average is exactly -1; the official loop runs off the end
        return [float(v) for v in x_values]
    next_set = 0
    while current < height:
        if x_values[current] != -1:
            current += 1
            continue
        while next_set <= current or x_values[next_set] == -1:
            next_set += 1
            if next_set >= height:
                return [float(v) for v in x_values]
        prev = x_values[current - 1]
        x_values[current] = prev + (x_values[next_set] - prev) / (next_set - current + 1)
        current += 1
    return [float(v) for v in x_values]


def _load_label(label: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[dict, str]:
    if isinstance(label, Mapping):
        # clean_label is idempotent, so an already cleaned label passes through unchanged.
        return clean_label(label), "<label>"
    if isinstance(label, str | os.PathLike):
        return read_json(label), os.fspath(label)
    raise TypeError(
        f"label must be a path to a LLAMAS .json file or a decoded label dict, got {type(label)}"
    )


def horizontal_values_for_four_lanes(
    label: str | os.PathLike[str] | Mapping[str, Any],
    image_hw: Sequence[int] = IMAGE_HW,
) -> list[list[float]]:
    """Official `get_horizontal_values_for_four_lanes`: per-row x of l1, l0, r0, r1.

    The label is cleaned with `data_pipelines.llamas.read_json` semantics, each lane is extended
    to the bottom row or a side border (`_extend_lane`) and sampled per row (`_sample_points`).
    When several lanes carry the same id after renaming, the last one wins, like the official
    dict. A missing lane is `[-1.0] * H`.

    Args:
      label: path of a `.json` label, or a decoded (raw or cleaned) label dict.
      image_hw: (height, width) of the image; the official constants are (717, 1276).

    Returns:
      Four lists of H floats, in the order l1, l0, r0, r1; -1.0 marks rows without a value.

    Raises:
      LabelFormatError: the json cannot be read or lacks a field.
      ValueError: a marker row lies outside [-H, H) (the official code fails there too).
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    cleaned, source = _load_label(label)
    sampled: dict[str, list[float]] = {}
    for lane in cleaned["lanes"]:
        if lane["lane_id"] not in LANE_IDS:
            continue
        markers = _extend_lane(list(lane["markers"]), width, height)
        sampled[lane["lane_id"]] = _sample_points(markers, height, source, lane["lane_id"])
    return [sampled.get(lane_id, [-1.0] * height) for lane_id in LANE_IDS]


def gt_lanes_from_json(
    label: str | os.PathLike[str] | Mapping[str, Any],
    *,
    min_row: int = MIN_ROW,
    image_hw: Sequence[int] = IMAGE_HW,
) -> list[np.ndarray]:
    """Ground-truth lanes of the official LLAMAS lane F1 (culane_metric `load_labels`).

    For each of l1, l0, r0, r1 (in that order) the official per-row x values
    (`horizontal_values_for_four_lanes`) are kept at rows >= `min_row` where x >= 0; a lane with
    fewer than two such rows is dropped.

    Args:
      label: path of a `.json` label, or a decoded (raw or cleaned) label dict.
      min_row: first row used (official 300).
      image_hw: (height, width) of the image (official (717, 1276)).

    Returns:
      A list of float64 (N, 2) arrays of (x, y) points, y increasing.
    """
    lanes = []
    for xs in horizontal_values_for_four_lanes(label, image_hw):
        xs_rows = np.asarray(xs[min_row:], dtype=np.float64)
        valid = xs_rows >= 0
        if int(valid.sum()) < 2:
            continue
        ys = np.arange(min_row, min_row + len(xs_rows), dtype=np.float64)[valid]
        lanes.append(np.stack([xs_rows[valid], ys], axis=1))
    return lanes


# ----------------------------------------------------------------------------------------------
# Predictions: .lines.txt reading/writing and the official spline resampling.


def read_lines_txt(path: str | os.PathLike[str], missing_ok: bool = True) -> list[np.ndarray]:
    """Reads a `.lines.txt` prediction file like the official LLAMAS `load_prediction`.

    Each line is one lane of whitespace-separated "x y x y ..." numbers; lanes with fewer than 2
    points (blank lines included) are dropped, as the official LLAMAS loader does.

    Args:
      path: the `.lines.txt` file.
      missing_ok: a missing file means no lanes (the official script fails instead).

    Returns:
      A list of float64 (N, 2) arrays, N >= 2, in file order.

    Raises:
      FileNotFoundError: the file is missing and `missing_ok` is False.
      LabelFormatError: (a ValueError) the file is not UTF-8 text or cannot be read, a token
        is not a finite number, or a line has an odd number of values; the message names the
        file and the line.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            # readlines (not splitlines) splits exactly where the official loader does.
            lines = f.readlines()
    except FileNotFoundError:
        if missing_ok:
            return []
        raise FileNotFoundError(
            f"{source}: prediction file not found (one <recording>/<ts>.lines.txt per label)"
        ) from None
    except UnicodeDecodeError as e:
        raise LabelFormatError(
            f"{source}: not a text file ({e.reason} at byte {e.start})"
        ) from None
    except OSError as e:  # a folder, no permission: not a missing file, so not "no lanes"
        raise LabelFormatError(f"{source}: cannot read prediction file ({e})") from None
    lanes = []
    for line_no, line in enumerate(lines, start=1):
        tokens = line.split()
        try:
            values = np.array([float(t) for t in tokens], dtype=np.float64)
        except ValueError:
            raise LabelFormatError(f"{source}:{line_no}: expected numbers 'x y x y ...'") from None
        if values.size % 2:
            raise LabelFormatError(
                f"{source}:{line_no}: expected an even number of values (x y pairs), "
                f"got {values.size}"
            )
        if not np.all(np.isfinite(values)):
            raise LabelFormatError(f"{source}:{line_no}: coordinates must be finite numbers")
        if values.size >= 4:
            lanes.append(values.reshape(-1, 2))
    return lanes


def interpolate_lane(points: np.ndarray, n: int = NUM_SPLINE_SAMPLES) -> np.ndarray:
    """Official LLAMAS `interpolate_lane`: spline resampling of a predicted lane.

    Consecutive duplicate points are removed, then `splprep([x, y], s=0, k=min(3, m - 1))`
    (chord-length parameter in [0, 1]) is evaluated at `linspace(0, 1, n)`. The official call
    also passes `t=n`, which scipy ignores for `task=0`; the result is the same.

    Args:
      points: (N, 2) float (x, y) points, N >= 2.
      n: number of samples.

    Returns:
      float64 (n, 2) samples, or (1, 2) when only one distinct point is left (the official
      `splprep(k=0)` fails; such a lane covers no pixel when drawn).
    """
    pts = np.asarray(points, dtype=np.float64)
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)
    pts = pts[keep]
    if len(pts) < 2:
        return pts[:1]
    tck, _ = splprep([pts[:, 0], pts[:, 1]], s=0, k=min(3, len(pts) - 1))
    return np.stack(splev(np.linspace(0.0, 1.0, n), tck), axis=1)


# ----------------------------------------------------------------------------------------------
# Per-image matching.


def _draw(points_xy: np.ndarray, image_hw: tuple[int, int], width: int):
    """Draws a lane like the official `draw_lane`; returns (mask, bbox) with bbox = (slice, slice).

    The bbox is a superset of the drawn pixels computed from the points (cv2 draws at most about
    width / 2 px around a segment), so IoU terms are counted only where a lane can be.
    """
    h, w = image_hw
    mask = np.zeros((h, w), dtype=np.uint8)
    pts = np.clip(points_xy, -_COORD_LIMIT, _COORD_LIMIT).astype(np.int32)
    if len(pts) < 2:
        return mask, None
    for (x1, y1), (x2, y2) in zip(pts[:-1], pts[1:], strict=True):
        cv2.line(mask, (int(x1), int(y1)), (int(x2), int(y2)), 1, thickness=width)
    margin = width + 2
    x0 = max(int(pts[:, 0].min()) - margin, 0)
    x1 = min(int(pts[:, 0].max()) + margin + 1, w)
    y0 = max(int(pts[:, 1].min()) - margin, 0)
    y1 = min(int(pts[:, 1].max()) + margin + 1, h)
    if x0 >= x1 or y0 >= y1:
        return mask, None
    return mask, (y0, y1, x0, x1)


def lane_iou_matrix(
    lanes_a: Sequence[np.ndarray],
    lanes_b: Sequence[np.ndarray],
    width: int = LANE_WIDTH,
    image_hw: Sequence[int] = IMAGE_HW,
) -> np.ndarray:
    """Official discrete IoU of every lane pair: lanes drawn `width` px wide, |A & B| / |A | B|.

    Each lane is truncated to int32 (`astype`, like the official code) and drawn segment by
    segment with `cv2.line(..., 1, thickness=width)` on an (H, W) canvas. A pair that covers no
    pixel at all gets 0 (the official 0/0 is nan and then fails in the matching).

    Args:
      lanes_a: (N_i, 2) float (x, y) polylines (already interpolated if needed).
      lanes_b: the same for the other side.
      width: line thickness in pixels.
      image_hw: canvas (height, width).

    Returns:
      float64 (len(lanes_a), len(lanes_b)) IoU matrix.
    """
    hw = (int(image_hw[0]), int(image_hw[1]))
    drawn_a = [_draw(np.asarray(lane, np.float64).reshape(-1, 2), hw, width) for lane in lanes_a]
    drawn_b = [_draw(np.asarray(lane, np.float64).reshape(-1, 2), hw, width) for lane in lanes_b]

    def area(drawn) -> int:
        mask, box = drawn
        return 0 if box is None else int(np.count_nonzero(mask[box[0] : box[1], box[2] : box[3]]))

    area_a = [area(d) for d in drawn_a]
    area_b = [area(d) for d in drawn_b]
    ious = np.zeros((len(drawn_a), len(drawn_b)), dtype=np.float64)
    for i, (mask_a, box_a) in enumerate(drawn_a):
        for j, (mask_b, box_b) in enumerate(drawn_b):
            inter = 0
            if box_a is not None and box_b is not None:
                y0, y1 = max(box_a[0], box_b[0]), min(box_a[1], box_b[1])
                x0, x1 = max(box_a[2], box_b[2]), min(box_a[3], box_b[3])
                if y0 < y1 and x0 < x1:
                    inter = int(np.count_nonzero(mask_a[y0:y1, x0:x1] & mask_b[y0:y1, x0:x1]))
            union = area_a[i] + area_b[j] - inter
            # int / int in float64: the official `(x & y).sum() / (x | y).sum()`.
            ious[i, j] = inter / union if union > 0 else 0.0
    return ious


def lane_f1_counts(
    pred_lanes: Sequence[np.ndarray],
    gt_lanes: Sequence[np.ndarray],
    width: int = LANE_WIDTH,
    iou_threshold: float = IOU_THRESHOLD,
    image_hw: Sequence[int] = IMAGE_HW,
    num_samples: int = NUM_SPLINE_SAMPLES,
) -> tuple[int, int, int]:
    """(TP, FP, FN) of one image under the official LLAMAS discrete lane metric.

    Predictions are spline-resampled (`interpolate_lane`), ground truth is drawn as given; the
    IoU matrix (rows = predictions) is matched with `linear_sum_assignment(1 - IoU)` and a match
    with IoU strictly above `iou_threshold` is a TP.

    Args:
      pred_lanes: predicted (N, 2) lanes with N >= 2 (as returned by `read_lines_txt`).
      gt_lanes: ground-truth (N, 2) lanes (as returned by `gt_lanes_from_json`).
      width: lane thickness in pixels.
      iou_threshold: IoU above which a match counts.
      image_hw: canvas (height, width).
      num_samples: spline samples per predicted lane.

    Returns:
      (tp, fp, fn) with fp = #pred - tp and fn = #gt - tp.
    """
    if len(pred_lanes) == 0:
        return 0, 0, len(gt_lanes)
    if len(gt_lanes) == 0:
        return 0, len(pred_lanes), 0
    interp = [interpolate_lane(lane, num_samples) for lane in pred_lanes]
    ious = lane_iou_matrix(interp, gt_lanes, width, image_hw)
    rows, cols = linear_sum_assignment(1 - ious)
    tp = int((ious[rows, cols] > iou_threshold).sum())
    return tp, len(pred_lanes) - tp, len(gt_lanes) - tp


def prediction_path(pred_dir: str | os.PathLike[str], label_path: str | os.PathLike[str]) -> str:
    """`<pred_dir>/<recording>/<ts>.lines.txt` for a label `.../<recording>/<ts>.json`."""
    return os.path.join(os.fspath(pred_dir), label_base(label_path).replace(".json", ".lines.txt"))


def _label_paths(
    label_dir_or_json_list: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[str]:
    if isinstance(label_dir_or_json_list, str | os.PathLike):
        return list_label_files(label_dir_or_json_list)
    paths = [os.fspath(p) for p in label_dir_or_json_list]
    bad = [p for p in paths if not p.endswith(".json")]
    if bad:
        raise ValueError(f"evaluate_lane_f1: label paths must end in .json, got {bad[:3]}")
    return paths


def _scores(tp: int, fp: int, fn: int) -> dict[str, Any]:
    # Official LLAMAS convention: all three scores are 0 when there is no TP.
    if tp == 0:
        precision = recall = f1 = 0.0
    else:
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        f1 = 2 * precision * recall / (precision + recall)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def lane_counts_of_label(task: tuple[str, str, dict[str, Any]]) -> tuple[int, int, int]:
    """(TP, FP, FN) of one label: ``(label_path, pred_dir, settings of evaluate_lane_f1)``."""
    label_path, pred_dir, settings = task
    gt = gt_lanes_from_json(label_path, min_row=settings["min_row"], image_hw=settings["image_hw"])
    pred = read_lines_txt(prediction_path(pred_dir, label_path), missing_ok=settings["missing_ok"])
    return lane_f1_counts(
        pred, gt, settings["width"], settings["iou_threshold"], settings["image_hw"]
    )


def evaluate_lane_f1(
    label_dir_or_json_list: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    pred_dir: str | os.PathLike[str],
    *,
    width: int = LANE_WIDTH,
    iou_threshold: float = IOU_THRESHOLD,
    image_hw: Sequence[int] = IMAGE_HW,
    min_row: int = MIN_ROW,
    missing_ok: bool = True,
    workers: int | None = 1,
) -> dict[str, Any]:
    """Official LLAMAS lane F1 ("CULane metric", discrete mode) over a set of labels.

    For every label `.../<recording>/<ts>.json` the predictions are read from
    `<pred_dir>/<recording>/<ts>.lines.txt` and scored with `lane_f1_counts`; TP, FP and FN are
    summed over images. P = TP / (TP + FP), R = TP / (TP + FN), F1 = 2PR / (P + R), and all
    three are 0 when TP = 0 (the official LLAMAS convention).

    Args:
      label_dir_or_json_list: a folder searched recursively for `.json` labels (e.g.
        `labels/valid`), or an iterable of label paths.
      pred_dir: the prediction folder.
      width: lane thickness in pixels (official 30).
      iou_threshold: IoU above which a match is a TP (official 0.5).
      image_hw: canvas (height, width) (official (717, 1276)).
      min_row: first ground-truth row (official 300).
      missing_ok: a missing prediction file means no lanes (else FileNotFoundError, as the
        official script fails).
      workers: processes over images (None: all CPU cores; 1: in this process).

    Returns:
      {"tp", "fp", "fn", "precision", "recall", "f1", "num_images"}.

    Raises:
      FileNotFoundError: no labels, or a missing prediction file with `missing_ok=False`.
      ValueError: malformed prediction file (named, with its line) or label geometry.
    """
    labels = _label_paths(label_dir_or_json_list)
    settings = {
        "width": int(width),
        "iou_threshold": float(iou_threshold),
        "image_hw": (int(image_hw[0]), int(image_hw[1])),
        "min_row": int(min_row),
        "missing_ok": bool(missing_ok),
    }
    tasks = [(path, os.fspath(pred_dir), settings) for path in labels]
    counts = pool.map_images(
        lane_counts_of_label, tasks, workers=workers, what="LLAMAS lane F1 images"
    )
    tp = sum(c[0] for c in counts)
    fp = sum(c[1] for c in counts)
    fn = sum(c[2] for c in counts)
    return {**_scores(tp, fp, fn), "num_images": len(labels)}


# ----------------------------------------------------------------------------------------------
# Lane regression ("lane approximation") benchmark, DATASETS.md 2.6c.


def _regression_key(key: str) -> str:
    base = os.fspath(key).replace("\\", "/")
    if not base.endswith(".json"):
        base += ".json"
    parts = base.split("/")
    if len(parts) != 2 or any(p in ("", ".", "..", ".json") for p in parts):
        raise ValueError(f"lane regression key must be '<recording>/<ts>[.json]', got {key!r}")
    return base


def write_lane_regression_json(
    path: str | os.PathLike[str],
    predictions: Mapping[str, Mapping[str, Sequence[float]]],
    image_height: int = IMAGE_HW[0],
    min_row: int = MIN_ROW,
) -> int:
    """Writes the official lane-regression submission json.

    The file maps `<recording>/<ts>.json` (the official `get_label_base` key; a key without
    `.json` gets it appended) to {"l1", "l0", "r0", "r1"} lists of x values, one per row: either
    H values (all rows) or H - min_row values (rows min_row..H-1). nan is allowed (written as
    `NaN`, which Python's json reads back) but the official scorer accepts it only where the
    reference lane has no value.

    Args:
      path: output `.json` file.
      predictions: per-image lane x lists.
      image_height: H (official 717).
      min_row: first scored row (official 300).

    Returns:
      The number of images written.

    Raises:
      ValueError: a bad key, a missing lane or a list of the wrong length.
    """
    valid_lengths = (image_height, image_height - min_row)
    out: dict[str, dict[str, list[float]]] = {}
    for key, lanes in predictions.items():
        base = _regression_key(key)
        if base in out:
            raise ValueError(f"write_lane_regression_json: duplicate key {base!r}")
        entry = {}
        for lane_id in LANE_IDS:
            if lane_id not in lanes:
                raise ValueError(f"write_lane_regression_json: {key!r} lacks lane {lane_id!r}")
            xs = [float(v) for v in np.asarray(lanes[lane_id], dtype=np.float64).ravel()]
            if len(xs) not in valid_lengths:
                raise ValueError(
                    f"write_lane_regression_json: {key!r} lane {lane_id!r} has {len(xs)} values, "
                    f"expected {valid_lengths[0]} (all rows) or {valid_lengths[1]} (rows >= "
                    f"{min_row})"
                )
            entry[lane_id] = xs
        out[base] = entry
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f)
    return len(out)


def lane_regression_error(
    reference_xs: Sequence[float],
    detected_xs: Sequence[float],
    min_row: int = MIN_ROW,
) -> float:
    """Official `compare_lane`: mean |reference - detected| over rows >= min_row with a reference.

    Args:
      reference_xs: H per-row reference x values, -1 where missing.
      detected_xs: H values (all rows) or H - min_row values (rows min_row..).
      min_row: first scored row (official 300).

    Returns:
      The mean absolute error in pixels; nan when the reference has no value at those rows.

    Raises:
      ValueError: wrong lengths, or a nan detection where the reference has a value.
    """
    ref = np.asarray(reference_xs, dtype=np.float64)
    det = np.asarray(detected_xs, dtype=np.float64)
    height = len(ref)
    if len(det) == height:
        det = det[min_row:]
    elif len(det) != height - min_row:
        raise ValueError(
            f"lane_regression_error: detected lane has {len(det)} values, expected {height} or "
            f"{height - min_row}"
        )
    ref = np.where(ref[min_row:] == -1, np.nan, ref[min_row:])
    if np.any(np.isnan(det) & ~np.isnan(ref)):
        raise ValueError("lane_regression_error: nan detections where the reference is set")
    diff = np.abs(ref - det)
    valid = ~np.isnan(diff)
    return float(diff[valid].mean()) if valid.any() else math.nan


# ----------------------------------------------------------------------------------------------
# Command line.


def _build_parser() -> argparse.ArgumentParser:
    parser = cli.new_parser(
        "intrakd_jax.evaluation.llamas_lanes",
        "Official LLAMAS lane F1 (culane_metric/evaluate.py, discrete mode) of .lines.txt files.",
    )
    add_folder_flags(parser, "folder with <recording>/<ts>.lines.txt (official --pred_dir)")
    parser.add_argument("--width", type=int, default=LANE_WIDTH, help="lane width in pixels (30)")
    parser.add_argument(
        "--missing_as_empty",
        action="store_true",
        help="a missing .lines.txt means no lanes (default: an error, as officially)",
    )
    return parser


def _run(args: argparse.Namespace) -> dict[str, Any]:
    cli.require_dir(args.labels, "--labels")
    cli.require_dir(args.predictions, "--predictions")
    if args.width < 1:
        raise cli.UsageError(f"--width must be >= 1, got {args.width}")
    result = evaluate_lane_f1(
        args.labels,
        args.predictions,
        width=args.width,
        missing_ok=args.missing_as_empty,
        workers=args.workers,
    )
    # The official script's printout.
    header = "=" * 20 + " Results" + "=" * 20
    print(header)
    for key in ("tp", "fp", "fn"):
        print(f"{key.upper()}: {result[key]}")
    for key in ("precision", "recall"):
        print(f"{key.capitalize()}: {result[key]:.4f}")
    print(f"F1: {result['f1']:.4f}")
    print("=" * len(header))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (see `evaluation.cli`)."""
    return cli.run(_build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
