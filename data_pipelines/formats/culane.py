"""CULane file formats: layout constants, list files and the official label generator.

Layout (DATASETS.md 1.1-1.2)::

    <root>/driver_XX_YYframe/<MMDDhhmm_NNNN>.MP4/<frame>.jpg        1640x590 frames
    <root>/driver_XX_YYframe/<MMDDhhmm_NNNN>.MP4/<frame>.lines.txt  lane points (x y pairs)
    <root>/laneseg_label_w16/<same path>.png                         8-bit labels 0..4
    <root>/list/{train_gt,val_gt}.txt     "<img> <label> e1 e2 e3 e4" (paths start with '/')
    <root>/list/{train,val,test}.txt      "<img>"
    <root>/list/test_split/test<K>_<category>.txt   "<img>" (nine categories)

List paths: one leading ``/`` is stripped and the rest is relative to the dataset root. Lists
written on another machine with absolute paths are made usable with
``config.data.root_rewrite = (old_prefix, new_prefix)``: a path starting with ``old_prefix`` gets
``new_prefix`` instead, where ``new_prefix`` is relative to the root (usually ``""``) or an
absolute path inside the root (``normalize_list_path``).

``render_seg_label`` ports the official ``seg_label_generate`` label drawing (DATASETS.md
1.5-1.6); the synthetic generator draws its labels with it. The ``.lines.txt`` files are
``formats.lines_txt``. numpy and OpenCV only (no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence

import cv2
import numpy as np

from data_pipelines.formats.lists import Problem, ProblemLog, read_list_lines, rewrite_prefix

IMAGE_WH = (1640, 590)  # official frame size (width, height)
IMAGE_HW = (IMAGE_WH[1], IMAGE_WH[0])
CROP_TOP = 240  # official rows dropped at the top (VERTICAL_CROP_SIZE)
NUM_LANES = 4
CLASS_NAMES = ("background", "lane1", "lane2", "lane3", "lane4")  # slots left to right
LABEL_DIR = "laneseg_label_w16"
LIST_DIR = "list"
TEST_CATEGORIES = (
    "normal",
    "crowd",
    "hlight",
    "shadow",
    "noline",
    "arrow",
    "curve",
    "cross",
    "night",
)
CATEGORY_SPLITS = tuple(f"test{k}_{c}" for k, c in enumerate(TEST_CATEGORIES))
SPLITS = ("train", "valid", "test", *CATEGORY_SPLITS)
# split -> (list file relative to the root, line format)
LIST_FILES: dict[str, tuple[str, str]] = {
    "train": (f"{LIST_DIR}/train_gt.txt", "gt"),
    "valid": (f"{LIST_DIR}/val_gt.txt", "gt"),
    "test": (f"{LIST_DIR}/test.txt", "image"),
    **{s: (f"{LIST_DIR}/test_split/{s}.txt", "image") for s in CATEGORY_SPLITS},
}
LIST_FORMATS = {
    "gt": "'<image> <seg label> e1 e2 e3 e4' (6 space-separated fields, e = 0 or 1)",
    "image": "'<image>' (1 field)",
}

# ----------------------------------------------------------------------------------------------
# The official segmentation-label generator (seg_label_generate, `-m imgLabel -w 16`).


@dataclasses.dataclass(frozen=True)
class LabelGeometry:
    """Pixel constants of the official label generator for one image size.

    The official tool hard-codes 1640x590; for smaller (synthetic) frames every length in pixels
    scales with the frame: horizontal ones by ``W / 1640``, vertical ones by ``H / 590``.

    Attributes:
      image_wh: frame (width, height).
      line_width: label line thickness at full size (16 for ``laneseg_label_w16``).
    """

    image_wh: tuple[int, int] = IMAGE_WH
    line_width: int = 16

    @property
    def sx(self) -> float:
        """Horizontal scale relative to 1640."""
        return self.image_wh[0] / IMAGE_WH[0]

    @property
    def sy(self) -> float:
        """Vertical scale relative to 590."""
        return self.image_wh[1] / IMAGE_WH[1]

    @property
    def y_seq(self) -> np.ndarray:
        """The 35 grid rows ``590 - 10 i`` (scaled: ``H * (59 - i) / 59``), float64 (35,)."""
        return self.image_wh[1] * (59.0 - np.arange(35, dtype=np.float64)) / 59.0

    @property
    def thickness(self) -> int:
        """Drawn line thickness in pixels (``line_width`` scaled, at least 1)."""
        return max(1, int(round(self.line_width * self.sx)))


PTS_PER_LINE = 35  # official pts_per_line (also the minimum spline length in samples)


def _spline_coefficients(pts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Natural cubic spline over chord length (official ``Spline::cal_fun``), n >= 3 points.

    Returns:
      (a, b, c, d) float64 (n-1, 2) per-interval coefficients in t and h float64 (n-1,).
    """
    n = pts.shape[0]
    with np.errstate(all="ignore"):  # duplicate points give inf/NaN as in C++ (filtered before)
        diff = (pts[1:] - pts[:-1]).astype(np.float64)  # float32 differences, as on Point2f
        h = np.sqrt(diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1])
        slope = diff / h[:, None]
        sub = h[:-1].copy()
        diag = 2.0 * (h[:-1] + h[1:])
        sup = h[1:].copy()
        rhs = 6.0 * (slope[1:] - slope[:-1])  # (n-2, 2)
        # Thomas algorithm in the official order.
        sup[0] = sup[0] / diag[0]
        rhs[0] = rhs[0] / diag[0]
        for i in range(1, n - 2):
            tmp = diag[i] - sub[i] * sup[i - 1]
            sup[i] = sup[i] / tmp
            rhs[i] = (rhs[i] - sub[i] * rhs[i - 1]) / tmp
        m = np.zeros((n, 2))
        m[n - 2] = rhs[n - 3]
        for i in range(n - 4, -1, -1):
            m[i + 1] = rhs[i] - sup[i] * m[i + 2]
        m[0] = 0.0
        m[n - 1] = 0.0
        a = pts[:-1].astype(np.float64)
        b = slope - (2.0 * h[:, None] * m[:-1] + h[:, None] * m[1:]) / 6.0
        c = m[:-1] / 2.0
        d = (m[1:] - m[:-1]) / (6.0 * h[:, None])
    return a, b, c, d, h


def spline_interp_step(points: np.ndarray, step: float = 1.0) -> np.ndarray:
    """Official ``Spline::splineInterpStep``: samples every ``step`` of chord length.

    Two points get their midpoint inserted first; each interval is sampled at
    ``t = 0, step, 2 step, ... < h`` and the last input point is appended. Samples are float32
    (``cv::Point2f``).

    Args:
      points: (N, 2) (x, y) points, N >= 2, no two consecutive points equal.
      step: sampling step in pixels of chord length.

    Returns:
      (M, 2) float32 samples; empty for N < 2.
    """
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    if pts.shape[0] < 2:
        return np.zeros((0, 2), np.float32)
    if pts.shape[0] == 2:
        mid = ((pts[0].astype(np.float64) + pts[1]) / 2.0).astype(np.float32)
        pts = np.stack([pts[0], mid, pts[1]])
    a, b, c, d, h = _spline_coefficients(pts)
    pieces = []
    for j in range(h.shape[0]):
        t = np.arange(0.0, h[j], step)[:, None] if h[j] > 0 else np.zeros((0, 1))
        pieces.append(a[j] + b[j] * t + c[j] * t * t + d[j] * t * t * t)
    pieces.append(pts[-1:].astype(np.float64))
    return np.concatenate(pieces).astype(np.float32)


def _remove_duplicate_points(pts: np.ndarray, geom: LabelGeometry) -> np.ndarray:
    """Official ``remove_dumplicate_points``: drops a point too close to the previous kept one."""
    if pts.shape[0] < 2:
        return pts
    min_dist, min_dy = 2.0 * geom.sx, 1.0 * geom.sy
    keep = [0]
    for e in range(1, pts.shape[0]):
        p, q = pts[keep[-1]].astype(np.float64), pts[e].astype(np.float64)
        if math.hypot(p[0] - q[0], p[1] - q[1]) < min_dist or abs(p[1] - q[1]) < min_dy:
            continue
        keep.append(e)
    return pts[keep]


def _intersection_x(lane: np.ndarray, geom: LabelGeometry) -> float:
    """The x where a degree-1 fit x(y) meets the bottom edge (official ``get_intersection_x``)."""
    coef = np.polyfit(lane[:, 1].astype(np.float64), lane[:, 0].astype(np.float64), 1)
    return float(np.polyval(coef, float(geom.image_wh[1])))


def _slope_k(lane: np.ndarray) -> float:
    """Official ``get_k``: dx/dy of the lane's first two points (bottom first), float32 maths."""
    with np.errstate(all="ignore"):
        return float((lane[1, 0] - lane[0, 0]) / (lane[1, 1] - lane[0, 1]))


@dataclasses.dataclass
class _GridLane:
    """A lane on the official grid rows: x per row (NaN where unset) and its valid rows."""

    xs: np.ndarray  # float64 (35,)
    start: int
    end: int


def _grid_lane(lane35: np.ndarray, geom: LabelGeometry) -> _GridLane:
    """The x of a 35-point lane at the grid rows, as the official ``updateLabels`` computes it.

    The grid row just below the lane's first point gets the cubic fit's value; rows along the
    lane take the x of the nearest spline sample in y; the walk stops at the lane's top or at
    a sample left of x = -500 (scaled). Rows above the lane (sigmoid-weighted extrapolation in
    the official code) are never drawn nor counted, so they are not computed.
    """
    y_seq = geom.y_seq
    eps = 1.0 * geom.sy
    n = PTS_PER_LINE
    xs = np.full(n, np.nan)
    interp = spline_interp_step(lane35, geom.sx)
    first_y, last_y = float(interp[0, 1]), float(interp[-1, 1])
    idx, out_flag = 0, False
    poly = None
    while idx < n and y_seq[idx] - eps > first_y:
        if idx < n - 1 and first_y > y_seq[idx + 1]:
            if poly is None:
                poly = np.polyfit(
                    lane35[:, 1].astype(np.float64), lane35[:, 0].astype(np.float64), 3
                )
            xs[idx] = np.polyval(poly, y_seq[idx])
            out_flag = True
        idx += 1
    start = idx - 1 if out_flag else idx
    interp_y = interp[:, 1].astype(np.float64)
    while idx < n:
        y = y_seq[idx]
        if y - eps < last_y:
            break
        dist = np.abs(interp_y - y)
        nearest = int(np.argmin(dist))  # the first minimum, like the official strict '<' scan
        x = float(interp[nearest, 0]) if dist[nearest] < 1000.0 else -1000.0
        if x > -500.0 * geom.sx:
            xs[idx] = x
        else:
            break
        idx += 1
    return _GridLane(xs, start, idx)


def _remove_double_lines(lanes: list[np.ndarray], geom: LabelGeometry) -> list[np.ndarray]:
    """Official ``remove_double_line(lanes, 120)`` with its index bookkeeping reproduced."""
    grids = [_grid_lane(lane, geom) for lane in lanes]
    out = list(lanes)
    thresh = 120.0 * geom.sx
    offset = 0
    for n in range(1, len(lanes)):
        lo = max(grids[n - 1].start, grids[n].start)
        hi = min(grids[n - 1].end, grids[n].end)
        if lo >= hi:
            dis = 300.0 * geom.sx
        else:
            dis = float(np.sum(grids[n].xs[lo:hi] - grids[n - 1].xs[lo:hi])) / (hi - lo)
        # The official code reads the distances by original index but erases from the shrinking
        # list (index minus offset); both are kept as they are.
        left = out[n - 1 - offset]
        with np.errstate(all="ignore"):
            k = float((left[0, 1] - left[-1, 1]) / (left[0, 0] - left[-1, 0]))
        if dis < thresh:
            if k < 0:
                del out[n - 1 - offset]
            else:
                del out[n - offset]
            offset += 1
    return out


def _name_lanes(lanes: list[np.ndarray], geom: LabelGeometry) -> list[int]:
    """Official ``nameLineByK``: slot 0..3 per lane (4 = dropped), lanes sorted left to right."""
    if not lanes:
        return []
    if len(lanes) == 2:
        return [1, 2]
    split = len(lanes)
    found = False
    for n in range(1, len(lanes)):
        if _slope_k(lanes[n - 1]) <= 0 and _slope_k(lanes[n]) > 0:
            split, found = n, True
            break
    if not found:
        for n, lane in enumerate(lanes):
            if _intersection_x(lane, geom) > geom.image_wh[0] * 0.5:
                split = n
                break
    # A single lane ends up here too (its k-based slot is overwritten): slot 2 if it meets the
    # bottom edge right of the centre, else slot 1.
    slots = [NUM_LANES] * len(lanes)
    for i in range(NUM_LANES):
        idx = i + split - 2
        if 0 <= idx < len(lanes):
            slots[idx] = i
    return slots


def official_slot_lanes(
    lanes: Sequence[np.ndarray], image_wh: Sequence[int] = IMAGE_WH
) -> dict[int, np.ndarray]:
    """The lanes the official generator keeps, by slot: ``{slot 0..3: 35-point lane (35, 2)}``.

    Steps (DATASETS.md 1.5): drop near-duplicate points, sort by y descending, drop lanes of < 2
    points, spline with step 1 and drop lanes of < 35 samples, keep 35 evenly spaced samples,
    sort by the bottom-edge intercept, remove double lines (< 120 px apart), name by slope.

    Args:
      lanes: raw ``.lines.txt`` lanes, (K, 2) (x, y) each (read as float32 like the official
        ``Point2f``).
      image_wh: frame size; pixel constants scale with it (see ``LabelGeometry``).

    Returns:
      The kept lanes by slot.
    """
    geom = LabelGeometry((int(image_wh[0]), int(image_wh[1])))
    kept = []
    for lane in lanes:
        pts = np.asarray(lane, dtype=np.float32).reshape(-1, 2)
        pts = _remove_duplicate_points(pts, geom)
        pts = pts[np.argsort(-pts[:, 1], kind="stable")]
        if pts.shape[0] < 2:
            continue
        interp = spline_interp_step(pts, geom.sx)
        if interp.shape[0] < PTS_PER_LINE:
            continue
        step = (interp.shape[0] - 1.0) / (PTS_PER_LINE - 1.0)
        kept.append(interp[[int(i * step) for i in range(PTS_PER_LINE)]])
    kept.sort(key=lambda lane: _intersection_x(lane, geom))
    kept = _remove_double_lines(kept, geom)
    slots = _name_lanes(kept, geom)
    return {slot: lane for lane, slot in zip(kept, slots, strict=True) if slot < NUM_LANES}


def existence_flags(
    lanes: Sequence[np.ndarray], image_wh: Sequence[int] = IMAGE_WH
) -> tuple[int, int, int, int]:
    """The official e1..e4 of a frame (``render_seg_label``'s flags without drawing)."""
    geom = LabelGeometry((int(image_wh[0]), int(image_wh[1])))
    exist = [0] * NUM_LANES
    for slot, lane35 in official_slot_lanes(lanes, geom.image_wh).items():
        grid = _grid_lane(lane35, geom)
        exist[slot] = int(grid.end - grid.start >= 2)
    return (exist[0], exist[1], exist[2], exist[3])


def render_seg_label(
    lanes: Sequence[np.ndarray], image_wh: Sequence[int] = IMAGE_WH, line_width: int = 16
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The official ``laneseg_label_w16`` label and existence flags of one frame.

    Each slot's valid grid rows (``590 - 10 i``) are splined again with step 1 and drawn as
    ``cv::line`` segments of thickness ``line_width`` and value ``slot + 1`` (LINE_8, points
    rounded half to even), slots 0..3 in order (later slots paint over earlier ones). A slot
    exists when it has at least 2 valid grid rows.

    Args:
      lanes: raw ``.lines.txt`` lanes, (K, 2) (x, y) each.
      image_wh: frame size (width, height).
      line_width: thickness at 1640x590 (scaled with the frame width).

    Returns:
      (uint8 (H, W) label with values 0..4, existence flags e1..e4).
    """
    geom = LabelGeometry((int(image_wh[0]), int(image_wh[1])), line_width)
    w, h = geom.image_wh
    label = np.zeros((h, w), np.uint8)
    exist = [0] * NUM_LANES
    y_seq = geom.y_seq
    for slot, lane35 in sorted(official_slot_lanes(lanes, geom.image_wh).items()):
        grid = _grid_lane(lane35, geom)
        if grid.end - grid.start >= 2:
            exist[slot] = 1
        rows = np.arange(grid.start, grid.end)
        rows = rows[np.isfinite(grid.xs[rows])]
        if rows.size < 2:
            continue
        solid = np.stack([grid.xs[rows], y_seq[rows]], axis=1).astype(np.float32)
        pts = np.rint(spline_interp_step(solid, geom.sx)).astype(np.int32)
        # One open polyline draws exactly the union of the official per-segment cv::line calls:
        # the same segment bodies, and every joint gets the same round cap.
        cv2.polylines(label, [pts], False, int(slot + 1), geom.thickness, cv2.LINE_8)
    return label, (exist[0], exist[1], exist[2], exist[3])


# ----------------------------------------------------------------------------------------------
# List files.


@dataclasses.dataclass(frozen=True)
class ListEntry:
    """One parsed list line.

    Attributes:
      line: 1-based line number in the list file.
      image: image path relative to the root (``/``-separated, no leading ``/``).
      label: label path relative to the root (``gt`` lists) or None.
      exist: existence flags e1..e4 (``gt`` lists) or None.
    """

    line: int
    image: str
    label: str | None = None
    exist: tuple[int, int, int, int] | None = None

    @property
    def key(self) -> str:
        """Image path without its extension (``driver_23_30frame/05151649_0422.MP4/00000``)."""
        return os.path.splitext(self.image)[0]


def normalize_list_path(
    raw: str, data_dir: str | None = None, root_rewrite: Sequence[str] | None = None
) -> str:
    """A list path relative to the dataset root.

    Applies ``root_rewrite = (old_prefix, new_prefix)`` (prefix replacement), makes an absolute
    path inside ``data_dir`` relative, then strips one leading ``/``.

    Args:
      raw: the path as written in the list.
      data_dir: absolute dataset root.
      root_rewrite: optional (old_prefix, new_prefix).

    Returns:
      The relative path (may still start with ``/`` when the list path began with ``//``).
    """
    path = raw if root_rewrite is None else rewrite_prefix(raw, (root_rewrite,))
    if data_dir and os.path.isabs(path):
        root = data_dir.rstrip("/")
        if path.startswith(root + "/"):
            path = path[len(root) :]
    if path.startswith("/"):
        path = path[1:]
    return path


def _parse_line(
    fields: list[str], fmt: str, data_dir: str | None, root_rewrite: Sequence[str] | None
) -> tuple[list[str], tuple[int, ...] | None] | str:
    """(root-relative paths, existence flags) of a line's fields, or what is wrong with them."""
    exist = None
    if fmt == "gt":
        if any(f not in ("0", "1") for f in fields[2:]):
            return f"existence flags must be 0 or 1, got {' '.join(fields[2:])!r}"
        exist = tuple(int(f) for f in fields[2:])
    raw_paths = fields[: 2 if fmt == "gt" else 1]
    paths = [normalize_list_path(p, data_dir, root_rewrite) for p in raw_paths]
    bad = [raw for raw, p in zip(fields, paths, strict=False) if not p or p[0] == "/"]
    if bad:
        return (
            f"path {bad[0]!r} does not lie under the dataset root after stripping one "
            "leading '/' and config.data.root_rewrite"
        )
    return paths, exist


def parse_list(
    list_path: str | os.PathLike,
    fmt: str,
    *,
    data_dir: str | None = None,
    root_rewrite: Sequence[str] | None = None,
    strict: bool = True,
) -> tuple[list[ListEntry], list[Problem]]:
    """Parses a CULane list file.

    Formats: ``"gt"`` = ``<image> <seg label> e1 e2 e3 e4`` (e in {0, 1}), ``"image"`` =
    ``<image>``. Blank lines are skipped. Paths go through ``normalize_list_path``.

    Args:
      list_path: the list file.
      fmt: ``"gt"`` or ``"image"``.
      data_dir: dataset root (for absolute paths inside it).
      root_rewrite: optional (old_prefix, new_prefix) applied to every path.
      strict: True raises at the first problem; False collects every problem (data check).

    Returns:
      (entries of the well-formed lines, problems) -- problems is always empty when strict.

    Raises:
      ValueError: unknown ``fmt``.
      DatasetLayoutError: (strict) missing list file, or a malformed or duplicated line; the
        message names ``file:line`` and the expected format.
    """
    if fmt not in LIST_FORMATS:
        raise ValueError(f"fmt must be one of {list(LIST_FORMATS)}, got {fmt!r}")
    path = os.fspath(list_path)
    log = ProblemLog(strict)
    n_fields = 6 if fmt == "gt" else 1
    entries: list[ListEntry] = []
    seen: dict[str, int] = {}
    for number, line in read_list_lines(path, log, LIST_FORMATS[fmt]):
        fields = line.split()
        if len(fields) != n_fields:
            log.add(
                "malformed_line",
                path,
                number,
                f"expected {LIST_FORMATS[fmt]}, got {len(fields)} field(s): {line.strip()!r}",
            )
            continue
        parsed = _parse_line(fields, fmt, data_dir, root_rewrite)
        if isinstance(parsed, str):
            log.add("malformed_line", path, number, parsed)
            continue
        paths, exist = parsed
        entry = ListEntry(number, paths[0], paths[1] if fmt == "gt" else None, exist)
        if entry.image in seen:
            log.add(
                "malformed_line",
                path,
                number,
                f"image {entry.image!r} is listed twice (first at line {seen[entry.image]})",
            )
            continue
        seen[entry.image] = number
        entries.append(entry)
    return entries, log.problems


def rewrite_hint(raw_rel: str) -> str:
    """Suggests a root_rewrite when a path looks like an absolute path from another machine."""
    match = re.search(r"(driver_\d+_\d+frame|laneseg_label_w16)/", raw_rel)
    if match is None or match.start() == 0:
        return ""
    prefix = "/" + raw_rel[: match.start()]
    return (
        f"; the list seems to hold absolute paths from another machine: set "
        f"config.data.root_rewrite = ({prefix!r}, '')"
    )
