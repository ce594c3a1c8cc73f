r"""Exact CULane lane F1: the official SCNN C++ evaluator re-implemented in numpy + OpenCV.

Counts (TP, FP, FN) equal those of the official tool (SCNN @428d5e0 ``tools/lane_evaluation``,
DATASETS.md sections 1.9 and 1.9a) because every step reproduces its arithmetic:

* Reading: every ``getline`` line of a ``.lines.txt`` file is one lane (blank and whitespace-only
  lines included); numbers are read as C++ ``stream >> double`` reads them (pairs until the first
  failure) and stored as float32 (``cv::Point2f``). A missing file means no lanes.
* Lanes of fewer than 2 points have IoU 0 with everything but still count as FP / FN.
* Lanes of exactly 2 points are one segment. Longer lanes go through the official natural cubic
  spline over chord length (``Spline::cal_fun``: float32 point differences, float64 TDMA in the
  same order), sampled 50 times per interval, stored as float32, plus the last input point.
* Each polyline is drawn as OpenCV's ``cv::line`` draws it (thickness ``width``, LINE_8) after
  ``cvRound`` of the float32 points (round half to even; out-of-range values become INT_MIN as
  on x86-64), then IoU = |A and B| / (|A| + |B| - |A and B|); TP needs IoU > threshold (strict).
* Matching is the official Kuhn-Munkres code (``pipartiteGraph``) replayed step by step, equality
  slack 1e-2 included. That slack can make it keep a matching up to 0.01 per row below the true
  maximum (for one GT lane and predictions of IoU 0.499 and 0.505 it keeps 0.499: no TP), so an
  exact assignment solver would not give identical counts.

Speed (measured by benchmarks/culane_eval.py) comes without changing a single pixel: each lane
is drawn once per image instead of once per lane pair; lanes are kept as one pixel interval per
image row, so a lane pair's intersection is a few array operations; and all lanes of a chunk of
images are drawn together with array operations from OpenCV's own footprints
(`LaneRasterizer`): consecutive duplicate points are dropped (they redraw the same round cap), a
run of small steps is the union of the caps of its points (row spans of the disc) plus the few
polygon pixels the caps miss, both measured once with OpenCV, and only what cannot be proven
equal that way (long steps, steps across an image border in the few cases where OpenCV's
clipping moves pixels, lanes that need two spans in a row) is drawn by OpenCV itself.
Tests compare every lane of random corpora against the per-segment ``cv2.line`` loop.

Decisions where the official tool is undefined (DATASETS.md 1.9a), documented here:
* consecutive duplicate points of a lane of more than 2 points (zero-length spline interval, NaN
  coordinates in the C++ tool) are dropped before the spline; if 2 points remain the lane is one
  segment, if 1 remains it is a dot (what ``cv::line(p, p)`` draws);
* a GT and a predicted lane that both draw nothing inside the image (0/0 in the C++ tool) get IoU 0.

Command line (same flags and output file as the official ``evaluate`` binary)::

  python -m intrakd_jax.evaluation.culane -a ANNO -d DETECT -l LIST \
      -w 30 -t 0.5 -c 1640 -r 590 -o OUT
  python -m intrakd_jax.evaluation.culane -a ANNO -d DETECT \
      --categories ROOT/list/test_split -o OUT_DIR
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from data_pipelines.lines_txt import lines_txt_path

SPLINE_SAMPLES = 50
CATEGORIES = ("normal", "crowd", "hlight", "shadow", "noline", "arrow", "curve", "cross", "night")
_INT_MIN = -(2**31)
_KM_SLACK = 1e-2  # equality tolerance of the official pipartiteGraph
_CHUNK = 64  # images per multiprocessing task

# ---------------------------------------------------------------------------------------------
# Reading .lines.txt exactly like `while (getline(f, line)) { stringstream ss(line); while (ss >> x
# >> y) ... }` in the C locale.

_WS = rb"[ \t\n\r\x0b\x0c]"
_NUMBER = rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
# When a line fully matches this, the greedy left-to-right NUMBER tokens are exactly what the
# C++ extraction consumes; anything else goes through the character-level scanner below.
_CLEAN_LINE_RE = re.compile(_WS + rb"*(?:" + _NUMBER + _WS + rb"*)*")
# A file of numbers separated by whitespace (no two numbers glued together): split() tokens.
_CLEAN_FILE_RE = re.compile(
    _WS + rb"*(?:" + _NUMBER + rb"(?:" + _WS + rb"+" + _NUMBER + rb")*)?" + _WS + rb"*"
)
_MANTISSA_RE = re.compile(rb"[+-]?\d*(?:\.\d*)?")
_EXPONENT_RE = re.compile(rb"[eE][+-]?\d*")
_WS_BYTES = frozenset(b" \t\n\r\x0b\x0c")


def _scan_cxx_doubles(line: bytes) -> list[float]:
    """Doubles read by repeated ``ss >> double`` (libstdc++ num_get), stopping at the first failure.

    num_get consumes the longest prefix shaped like a float (sign, digits, one '.', and an exponent
    only after a digit), then the conversion fails unless that prefix is a complete number.
    Overflow (inf) is a failure too; underflow is not.
    """
    values: list[float] = []
    pos, end = 0, len(line)
    while True:
        while pos < end and line[pos] in _WS_BYTES:
            pos += 1
        if pos >= end:
            return values
        mantissa = _MANTISSA_RE.match(line, pos)
        stop = mantissa.end()
        if any(48 <= c <= 57 for c in mantissa.group(0)):
            exponent = _EXPONENT_RE.match(line, stop)
            if exponent is not None:
                stop = exponent.end()
        text = line[pos:stop]
        if _NUMBER_RE.fullmatch(text) is None:
            return values
        value = float(text)
        if math.isinf(value):
            return values
        values.append(value)
        pos = stop


def parse_lane_line(line: bytes | str) -> np.ndarray:
    """One line of a ``.lines.txt`` file -> (N, 2) float32 points, as the official reader does.

    Args:
      line: the line without its newline (a trailing carriage return is whitespace).

    Returns:
      (N, 2) float32 array; N = 0 for a blank line (still a lane for the evaluator).
    """
    raw = line.encode("latin-1") if isinstance(line, str) else line
    if _CLEAN_LINE_RE.fullmatch(raw) is not None:
        values = [float(token) for token in _NUMBER_RE.findall(raw)]
        for index, value in enumerate(values):
            if math.isinf(value):  # overflow fails the C++ extraction here
                values = values[:index]
                break
    else:
        values = _scan_cxx_doubles(raw)
    pairs = len(values) // 2  # `ss >> x >> y`: an x without its y is dropped
    with np.errstate(over="ignore"):  # Point2f(double) overflows to inf exactly like C++
        return np.asarray(values[: 2 * pairs], np.float64).reshape(pairs, 2).astype(np.float32)


def read_lane_file(path: str | os.PathLike[str]) -> list[np.ndarray] | None:
    """Reads a CULane ``.lines.txt`` file like the official evaluator.

    Args:
      path: file to read.

    Returns:
      A list of (N, 2) float32 arrays, one per text line (blank lines are lanes with N = 0), or
      ``None`` when the file does not exist (the evaluator treats that as no lanes).
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":  # getline yields no extra line after a final '\n'
        lines.pop()
    if _CLEAN_FILE_RE.fullmatch(data) is None:
        return [parse_lane_line(line) for line in lines]
    # Numbers separated by whitespace only: convert the whole file at once (Python's float(),
    # correctly rounded like strtod), then cut it into lines.
    counts = [len(line.split()) for line in lines]
    values = np.fromiter(map(float, data.split()), np.float64, sum(counts))
    infinite = np.isinf(values)
    lanes = []
    start = 0
    for count in counts:
        v = values[start : start + count]
        if infinite[start : start + count].any():  # overflow fails the C++ extraction here
            v = v[: int(np.argmax(np.isinf(v)))]
        start += count
        pairs = len(v) // 2  # `ss >> x >> y`: an x without its y is dropped
        lanes.append(v[: 2 * pairs].reshape(pairs, 2))
    with np.errstate(over="ignore"):  # Point2f(double) overflows to inf exactly like C++
        return [lane.astype(np.float32) for lane in lanes]


# ---------------------------------------------------------------------------------------------
# Geometry: the official spline and point conversion, batched over many lanes.


def _spline_concat(pts: np.ndarray, counts: np.ndarray, times: int) -> np.ndarray:
    """``Spline::splineInterpTimes`` for lanes stored back to back.

    The tridiagonal solve runs for all lanes at once, one equation row at a time: every lane still
    sees exactly the C++ sequence of double operations, so the results are bit-identical.

    Args:
      pts: (sum(counts), 2) float32 points of all lanes, each lane >= 3 points with no two
        consecutive points equal.
      counts: (L,) points per lane.
      times: samples per interval.

    Returns:
      (sum((counts - 1) * times + 1), 2) float32 samples, lane after lane.
    """
    counts = np.asarray(counts, np.int64)
    n_tot = pts.shape[0]
    starts = np.cumsum(counts) - counts
    with np.errstate(all="ignore"):  # degenerate (inf) input gives inf/NaN, as in C++
        d = (pts[1:] - pts[:-1]).astype(np.float64)  # float32 subtraction, as on Point2f
        h = np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1])
        slope = d / h[:, None]
        rhs = 6 * (slope[1:] - slope[:-1])  # row j: equation of interior point j + 1
        diag = 2 * (h[:-1] + h[1:])
        # Equations as (row i, lane) matrices, lanes sorted longest first so that the lanes
        # still active at row i are a prefix.
        order = np.argsort(-counts, kind="stable")
        n_eq = counts[order] - 2
        rows = int(n_eq[0])
        i_col = np.arange(rows)[:, None]
        valid = i_col < n_eq[None, :]
        g = np.where(valid, starts[order][None, :] + i_col, 0)
        a_sub = h[g]
        c_sup = h[g + valid]
        b_diag = diag[g]
        r_xy = np.stack([rhs[g, 0], rhs[g, 1]])  # (2, rows, L)
        active = (n_eq[None, :] > np.arange(rows)[:, None]).sum(axis=1)
        c_sup[0] = c_sup[0] / b_diag[0]
        r_xy[:, 0] = r_xy[:, 0] / b_diag[0]
        for i in range(1, rows):
            k = active[i]
            a_i = a_sub[i, :k]
            tmp = b_diag[i, :k] - a_i * c_sup[i - 1, :k]
            c_sup[i, :k] = c_sup[i, :k] / tmp
            r_xy[:, i, :k] = (r_xy[:, i, :k] - a_i * r_xy[:, i - 1, :k]) / tmp
        # Back substitution: M[n-2] = D[n-3], then M[i+1] = D[i] - C[i] * M[i+2].
        n_lanes = len(counts)
        m_xy = np.zeros((2, rows + 2, n_lanes))
        lanes = np.arange(n_lanes)
        m_xy[:, n_eq, lanes] = r_xy[:, n_eq - 1, lanes]
        back = (n_eq[None, :] - 1 > np.arange(rows)[:, None]).sum(axis=1)
        for i in range(rows - 2, -1, -1):
            k = back[i]
            m_xy[:, i + 1, :k] = r_xy[:, i, :k] - c_sup[i, :k] * m_xy[:, i + 2, :k]
        # Back to point order; the two lane ends keep M = 0 (natural spline).
        p_col = np.arange(rows + 2)[:, None]
        p_valid = p_col < counts[order][None, :]
        m_arr = np.zeros((n_tot, 2))
        dest = (starts[order][None, :] + p_col)[p_valid]
        m_arr[dest, 0] = m_xy[0][p_valid]
        m_arr[dest, 1] = m_xy[1][p_valid]
        seg_ok = np.ones(n_tot - 1, bool)
        seg_ok[starts[1:] - 1] = False  # the step from one lane to the next is not a segment
        seg = np.flatnonzero(seg_ok)
        hh = h[seg][:, None]
        m0, m1 = m_arr[seg], m_arr[seg + 1]
        # Coordinates on the leading axis keep numpy's inner loops long: shapes (2, S, 1).
        coef_a = pts[seg].T.astype(np.float64)[:, :, None]
        coef_b = (slope[seg] - (2 * hh * m0 + hh * m1) / 6).T[:, :, None]
        coef_c = (m0 / 2).T[:, :, None]
        coef_d = ((m1 - m0) / (6 * hh)).T[:, :, None]
        t = (h[seg] / times)[:, None] * np.arange(times, dtype=np.float64)  # (S, times)
        t2 = t * t  # pow(t, 2)
        t3 = t2 * t  # pow(t, 3); see spline_points on why this is safe
        # ((a + b t) + c t^2) + d t^3, as the C++ expression (a + b t == b t + a exactly).
        vals = coef_b * t
        vals += coef_a
        tmp3 = coef_c * t2
        vals += tmp3
        np.multiply(coef_d, t3, out=tmp3)
        vals += tmp3
    samples = vals.reshape(2, -1)
    n_out = (counts - 1) * times + 1
    out = np.empty((int(n_out.sum()), 2), np.float32)
    o0 = np.cumsum(n_out) - n_out
    s0 = np.cumsum(n_out - 1) - (n_out - 1)
    for o, so, n in zip(o0.tolist(), s0.tolist(), (n_out - 1).tolist(), strict=True):
        out[o : o + n, 0] = samples[0, so : so + n]
        out[o : o + n, 1] = samples[1, so : so + n]
    out[o0 + n_out - 1] = pts[starts + counts - 1]
    return out


def spline_points(points: np.ndarray, times: int = SPLINE_SAMPLES) -> np.ndarray:
    """The official ``Spline::splineInterpTimes`` for a lane of 3 or more distinct points.

    Natural cubic spline in x and y over chord length, coefficients from the official tridiagonal
    solve (same operations in the same order, float32 point differences), ``times`` samples per
    interval stored as float32, then the last input point. ``pow(t, 2)`` and ``pow(t, 3)`` are
    evaluated as ``t*t`` and ``t*t*t``; on the 6.2 million samples of the benchmark corpus this
    gives float32 points identical to glibc ``pow`` (a last-bit difference of a double rarely
    survives rounding to float32, and never did there).

    Args:
      points: (N, 2) float32 lane points, N >= 3, no two consecutive points equal.
      times: samples per interval (50).

    Returns:
      ((N - 1) * times + 1, 2) float32 samples.
    """
    pts = np.asarray(points, np.float32).reshape(-1, 2)
    if pts.shape[0] < 3:
        raise ValueError(f"spline_points: needs at least 3 points, got {pts.shape[0]}")
    return _spline_concat(pts, np.array([pts.shape[0]]), times)


def cv_round(values_f32: np.ndarray) -> np.ndarray:
    """``cvRound(float)`` on x86-64: round half to even; NaN and out-of-int32 values -> INT_MIN."""
    v = np.asarray(values_f32, np.float32)
    r = np.rint(v)
    if v.size == 0 or np.abs(r).max() < 2147483648.0:  # False for NaN as well
        return r.astype(np.int32)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(r) & (r >= -2147483648.0) & (r < 2147483648.0)
    return np.where(ok, r, np.float32(_INT_MIN)).astype(np.int32)


def lane_polylines(
    lanes: Sequence[np.ndarray], times: int = SPLINE_SAMPLES
) -> tuple[np.ndarray, np.ndarray]:
    """Integer polylines the official tool draws, for many lanes at once.

    Lanes of fewer than 2 points get no polyline (IoU 0 by rule). Two-point lanes are one segment;
    longer lanes are splined. Documented deviation: consecutive duplicate points of a lane of more
    than 2 points (NaN in the C++ tool, undefined) are dropped first; 2 left make a segment, 1 left
    a dot (what ``cv::line(p, p)`` draws).

    Args:
      lanes: (N_i, 2) float32 point arrays.
      times: spline samples per interval (50).

    Returns:
      ``(points, offsets)``: (M, 2) int64 polyline points of all lanes back to back (after
      ``cvRound``) and (L + 1,) offsets; lane i is ``points[offsets[i]:offsets[i + 1]]``, empty
      for lanes without a polyline.
    """
    n_lanes = len(lanes)
    sizes = np.array([len(lane) for lane in lanes], np.int64)
    if n_lanes == 0 or sizes.sum() == 0:
        return np.zeros((0, 2), np.int64), np.zeros(n_lanes + 1, np.int64)
    flat = np.concatenate([np.asarray(lane, np.float32).reshape(-1, 2) for lane in lanes])
    lane_of = np.repeat(np.arange(n_lanes), sizes)
    long_lane = sizes[lane_of] > 2
    keep = np.ones(flat.shape[0], bool)
    keep[1:] = (
        np.any(flat[1:] != flat[:-1], axis=1) | (lane_of[1:] != lane_of[:-1]) | ~long_lane[1:]
    )
    kept = np.flatnonzero(keep)  # faster than boolean indexing for irregular masks
    flat, lane_of = flat[kept], lane_of[kept]
    counts = np.bincount(lane_of, minlength=n_lanes)
    counts[sizes < 2] = 0
    starts = np.concatenate([[0], np.cumsum(np.bincount(lane_of, minlength=n_lanes))[:-1]])
    to_spline = np.flatnonzero(counts >= 3)
    pieces: list[np.ndarray] = []
    if to_spline.size:
        idx = np.concatenate([np.arange(starts[i], starts[i] + counts[i]) for i in to_spline])
        samples = _spline_concat(flat[idx], counts[to_spline], times)
        n_out = (counts[to_spline] - 1) * times + 1
        spline_parts = np.split(samples, np.cumsum(n_out)[:-1])
    out_counts = np.zeros(n_lanes, np.int64)
    k = 0
    for i in range(n_lanes):
        c = int(counts[i])
        if c == 0:
            continue
        if c >= 3:
            part = spline_parts[k]
            k += 1
        elif c == 2:
            part = flat[starts[i] : starts[i] + 2]
        else:
            part = np.repeat(flat[starts[i] : starts[i] + 1], 2, axis=0)
        pieces.append(part)
        out_counts[i] = len(part)
    if not pieces:
        return np.zeros((0, 2), np.int64), np.zeros(n_lanes + 1, np.int64)
    points = cv_round(np.concatenate(pieces)).astype(np.int64)
    return points, np.concatenate([[0], np.cumsum(out_counts)])


def lane_polyline(points: np.ndarray, times: int = SPLINE_SAMPLES) -> np.ndarray | None:
    """Integer polyline the official tool draws for one lane (see `lane_polylines`).

    Args:
      points: (N, 2) float32 lane points as read.
      times: spline samples per interval (50).

    Returns:
      (M, 2) int32 points, or None for a lane of fewer than 2 points.
    """
    pts, off = lane_polylines([np.asarray(points, np.float32).reshape(-1, 2)], times)
    return None if off[1] == 0 else pts.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Rasterisation: OpenCV's thick lines, as per-row intervals, for many lanes at once.

_EMPTY_LO = 2**40  # lo > hi marks a row without pixels
_EMPTY_HI = -(2**40)


class LaneMask:
    """The pixels of one drawn lane, as per-row intervals or as a bitmap crop.

    Interval form (``bitmap is None``): row ``row0 + k`` holds columns ``lo[k]..hi[k]`` (empty when
    lo > hi). Bitmap form: ``bitmap`` (uint8 0/1) covers rows ``y0..`` and columns ``x0..``.
    """

    __slots__ = ("area", "bitmap", "hi", "lo", "row0", "x0", "y0")

    def __init__(
        self,
        *,
        row0: int = 0,
        lo: np.ndarray | None = None,
        hi: np.ndarray | None = None,
        y0: int = 0,
        x0: int = 0,
        bitmap: np.ndarray | None = None,
    ):
        """Builds either form; the pixel count is computed here."""
        self.row0, self.lo, self.hi = row0, lo, hi
        self.y0, self.x0, self.bitmap = y0, x0, bitmap
        if bitmap is None:
            self.area = int(np.maximum(hi - lo + 1, 0).sum())
        else:
            self.area = int(np.count_nonzero(bitmap))

    def to_image(self, im_width: int, im_height: int) -> np.ndarray:
        """The full (im_height, im_width) uint8 0/1 mask (for tests and visualisation)."""
        out = np.zeros((im_height, im_width), np.uint8)
        if self.bitmap is not None:
            h, w = self.bitmap.shape
            out[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = self.bitmap
        else:
            for k in np.flatnonzero(self.lo <= self.hi).tolist():
                out[self.row0 + k, self.lo[k] : self.hi[k] + 1] = 1
        return out


def _inter_rows(a: LaneMask, b: LaneMask) -> int:
    r0 = max(a.row0, b.row0)
    r1 = min(a.row0 + len(a.lo), b.row0 + len(b.lo))
    if r0 >= r1:
        return 0
    sa, sb = slice(r0 - a.row0, r1 - a.row0), slice(r0 - b.row0, r1 - b.row0)
    width = np.minimum(a.hi[sa], b.hi[sb]) - np.maximum(a.lo[sa], b.lo[sb]) + 1
    return int(width[width > 0].sum())


def _inter_bitmaps(a: LaneMask, b: LaneMask) -> int:
    y0, x0 = max(a.y0, b.y0), max(a.x0, b.x0)
    y1 = min(a.y0 + a.bitmap.shape[0], b.y0 + b.bitmap.shape[0])
    x1 = min(a.x0 + a.bitmap.shape[1], b.x0 + b.bitmap.shape[1])
    if y0 >= y1 or x0 >= x1:
        return 0
    pa = a.bitmap[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0]
    pb = b.bitmap[y0 - b.y0 : y1 - b.y0, x0 - b.x0 : x1 - b.x0]
    return int(np.count_nonzero(pa & pb))


def _inter_mixed(rows: LaneMask, bits: LaneMask) -> int:
    r0 = max(rows.row0, bits.y0)
    r1 = min(rows.row0 + len(rows.lo), bits.y0 + bits.bitmap.shape[0])
    if r0 >= r1:
        return 0
    lo = rows.lo[r0 - rows.row0 : r1 - rows.row0, None]
    hi = rows.hi[r0 - rows.row0 : r1 - rows.row0, None]
    cols = np.arange(bits.x0, bits.x0 + bits.bitmap.shape[1])[None, :]
    sub = bits.bitmap[r0 - bits.y0 : r1 - bits.y0]
    return int(np.count_nonzero((sub != 0) & (cols >= lo) & (cols <= hi)))


def mask_intersection(a: LaneMask, b: LaneMask) -> int:
    """Number of pixels two drawn lanes share."""
    if a.bitmap is None and b.bitmap is None:
        return _inter_rows(a, b)
    if a.bitmap is not None and b.bitmap is not None:
        return _inter_bitmaps(a, b)
    return _inter_mixed(a, b) if a.bitmap is None else _inter_mixed(b, a)


def mask_iou(a: LaneMask | None, b: LaneMask | None) -> float:
    """IoU of two drawn lanes; 0 when either is missing (fewer than 2 points or nothing drawn)."""
    if a is None or b is None:
        return 0.0
    inter = mask_intersection(a, b)
    return inter / (a.area + b.area - inter)


class _Footprints:
    """OpenCV's thick-line footprints for one thickness, measured once with OpenCV itself.

    ``cv::line(p, p)`` draws only the round cap, a disc stencil whose rows are single spans. For
    each small step d, ``cv::line(p, p + d)`` draws F_d = cap(p) + cap(p + d) + ``connectors[d]``
    (the polygon pixels the two caps miss). Away from the image border these shapes are
    translation invariant (OpenCV draws with integer arithmetic on shifted coordinates), so a run
    of small steps is the union of the caps of its points plus the connectors of its steps; a test
    checks the whole construction against OpenCV on random lanes.
    """

    MAX_DX = 8
    MAX_DY = 1
    MAX_WIDTH = 64  # thicker lines are drawn by OpenCV only (measuring them would be slow)

    def __init__(self, width: int):
        c = width + self.MAX_DX + 4
        if width > self.MAX_WIDTH:
            self._opencv_only(width)
            return
        canvas = np.zeros((2 * c + 1, 2 * c + 1), np.uint8)
        cv2.line(canvas, (c, c), (c, c), 1, width)
        ys, xs = np.nonzero(canvas)
        self.radius = r = int(max(c - ys.min(), ys.max() - c))
        rows = np.arange(-r, r + 1)
        self.stencil_lo = np.array([xs[ys == c + k].min() - c for k in rows], np.int64)
        self.stencil_hi = np.array([xs[ys == c + k].max() - c for k in rows], np.int64)
        counts = np.array([np.count_nonzero(ys == c + k) for k in rows])
        # The interval algebra needs every stencil row to be one span containing the centre and
        # the spans to narrow away from the centre row.
        widths = self.stencil_hi - self.stencil_lo + 1
        self.usable = bool(
            np.all(counts == widths)
            and np.all(self.stencil_lo <= 0)
            and np.all(self.stencil_hi >= 0)
            and np.all(np.diff(widths[: r + 1]) >= 0)
            and np.all(np.diff(widths[r:]) <= 0)
        )
        self.widths = widths
        cap = canvas.astype(bool)
        self.connectors: dict[tuple[int, int], np.ndarray] = {}  # (K, 2) x, y offsets from p
        self.footprints: dict[tuple[int, int], np.ndarray] = {}  # whole F_d, (K, 2) x, y
        reach = r
        for dx in range(-self.MAX_DX, self.MAX_DX + 1):
            for dy in range(-self.MAX_DY, self.MAX_DY + 1):
                if dx == 0 and dy == 0:
                    continue
                canvas[...] = 0
                cv2.line(canvas, (c, c), (c + dx, c + dy), 1, width)
                drawn = canvas.astype(bool)
                caps = cap | np.roll(np.roll(cap, dy, axis=0), dx, axis=1)
                if np.any(caps & ~drawn):
                    self.usable = False  # never seen; keeps the fast path honest if it happens
                ey, ex = np.nonzero(drawn & ~caps)
                self.connectors[(dx, dy)] = np.stack([ex - c, ey - c], axis=1).astype(np.int64)
                fy, fx = np.nonzero(drawn)
                self.footprints[(dx, dy)] = np.stack([fx - c, fy - c], axis=1).astype(np.int64)
                reach = max(reach, int(np.abs(fy - c).max()), int(np.abs(fx - c).max()))
        # Points this far inside the image draw without any clipping.
        self.margin = reach + 2
        self.border_ok = self._verify_borders(width)

    n_dy = 2 * MAX_DY + 1
    n_codes = (2 * MAX_DX + 1) * n_dy

    def _opencv_only(self, width: int) -> None:
        """Settings for a thickness drawn by OpenCV alone: only the cap stencil is measured."""
        c = width // 2 + 4
        canvas = np.zeros((2 * c + 1, 2 * c + 1), np.uint8)
        cv2.line(canvas, (c, c), (c, c), 1, width)
        ys, xs = np.nonzero(canvas)
        self.radius = r = int(max(c - ys.min(), ys.max() - c))
        self.stencil_lo = np.array([xs[ys == c + k].min() - c for k in range(-r, r + 1)])
        self.stencil_hi = np.array([xs[ys == c + k].max() - c for k in range(-r, r + 1)])
        self.widths = self.stencil_hi - self.stencil_lo + 1
        self.usable = False
        self.connectors, self.footprints = {}, {}
        self.margin = width // 2 + 4  # thick lines reach about width / 2 past their points
        self.border_ok = np.zeros((4, self.n_codes, 2 * self.margin + 1), bool)

    @classmethod
    def code(cls, dx: np.ndarray | int, dy: np.ndarray | int) -> np.ndarray | int:
        """Index of a small step (dx, dy) in the lookup tables."""
        return (dx + cls.MAX_DX) * cls.n_dy + (dy + cls.MAX_DY)

    def _verify_borders(self, width: int) -> np.ndarray:
        """Where a step drawn across an image border equals its unclipped footprint cut there.

        OpenCV clips a round cap span by span (exact), but clips polygon edges with clipLine,
        which can move a few pixels. For each border, step and signed distance o of the step's
        first point outside the border (-margin < o <= margin), draw the step with OpenCV next to
        that border and compare with the unclipped footprint; only matching cases are drawn from
        footprints near that border. Steps are drawn side by side, one OpenCV call per distance.

        Returns:
          (4, n_codes, 2 * margin + 1) bool, borders bottom, top, left, right; index o + margin.
        """
        k = self.margin
        steps = sorted(self.footprints)
        spacing = 2 * k + 3
        along = np.arange(len(steps)) * spacing + k + 1  # first points, along the border
        long_side = len(steps) * spacing + 2 * k + 2
        short_side = 2 * k + 1
        ok = np.zeros((4, self.n_codes, 2 * k + 1), bool)
        codes = np.array([self.code(dx, dy) for dx, dy in steps])
        offsets = [self.footprints[st] for st in steps]
        for border in range(4):
            horizontal = border < 2  # bottom or top: the border is a row
            shape = (short_side, long_side) if horizontal else (long_side, short_side)
            canvas = np.zeros(shape, np.uint8)
            for o in range(-k, k + 1):
                # Position across the border: bottom y = H-1+o, top y = -o, left x = -o,
                # right x = W-1+o, with H or W = short_side.
                across = [short_side - 1 + o, -o, -o, short_side - 1 + o][border]
                if horizontal:
                    firsts = np.stack([along, np.full_like(along, across)], axis=1)
                else:
                    firsts = np.stack([np.full_like(along, across), along], axis=1)
                canvas[...] = 0
                lines = [
                    np.array([f, f + st], np.int32).reshape(-1, 1, 2)
                    for f, st in zip(firsts, steps, strict=True)
                ]
                cv2.polylines(canvas, lines, False, 1, thickness=width, lineType=cv2.LINE_8)
                expected = np.zeros(shape, np.uint8)
                pix = np.concatenate([f + off for f, off in zip(firsts, offsets, strict=True)])
                inside = (
                    (pix[:, 0] >= 0) & (pix[:, 0] < shape[1])
                    & (pix[:, 1] >= 0) & (pix[:, 1] < shape[0])
                )  # fmt: skip
                expected[pix[inside, 1], pix[inside, 0]] = 1
                diff = canvas != expected
                per_pos = diff.any(axis=0 if horizontal else 1)[: len(steps) * spacing]
                ok[border, codes, o + k] = ~per_pos.reshape(len(steps), spacing).any(axis=1)
        return ok


_FOOTPRINTS: dict[int, _Footprints] = {}


def _footprints(width: int) -> _Footprints:
    fp = _FOOTPRINTS.get(width)
    if fp is None:
        fp = _FOOTPRINTS[width] = _Footprints(width)
    return fp


def _run_bounds(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop (exclusive) indices of the True runs of a boolean array."""
    padded = np.concatenate([[False], flags, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return edges[0::2], edges[1::2]


def _region_intervals(region: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-row [first, last] columns of a 0/1 uint8 region; None when some row has a gap."""
    on = region.view(bool)
    count = np.count_nonzero(on, axis=1)
    first = np.argmax(on, axis=1).astype(np.int64)
    last = region.shape[1] - 1 - np.argmax(on[:, ::-1], axis=1).astype(np.int64)
    filled = count > 0
    if np.any(filled & (count != last - first + 1)):
        return None
    return np.where(filled, first, _EMPTY_LO), np.where(filled, last, _EMPTY_HI)


def _union_check(keys: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Keys (sorted unique) whose spans do not form a single interval."""
    order = np.lexsort((lo, keys))
    keys, lo, hi = keys[order], lo[order], hi[order]
    # Running max of hi within each key: keys are sorted, so shift them far apart.
    shift = keys * (2**32)
    reach = np.maximum.accumulate(hi + shift) - shift
    same = keys[1:] == keys[:-1]
    return np.unique(keys[1:][same & (lo[1:] > reach[:-1] + 1)])


class LaneSet:
    """Drawn lanes: per image row, the span of pixels of each lane (or a bitmap for the rare rest).

    ``lo[i, y]..hi[i, y]`` are the pixels of lane i on image row y (empty when lo > hi). Lanes
    whose rows are not single spans keep ``bitmaps[i] = (y0, x0, uint8 0/1 array)`` instead and
    have empty rows in lo / hi. ``area[i]`` is the pixel count; lanes with area 0 (no polyline, or
    nothing inside the image) have IoU 0 with everything.
    """

    def __init__(
        self,
        lo: np.ndarray,
        hi: np.ndarray,
        bitmaps: dict[int, tuple[int, int, np.ndarray]],
    ):
        """Stores the (L, H) interval arrays and the bitmap lanes; computes the areas."""
        self.lo, self.hi, self.bitmaps = lo, hi, bitmaps
        self.area = np.maximum(hi - lo + 1, 0).sum(axis=1)
        for i, (_, _, bitmap) in bitmaps.items():
            self.area[i] = np.count_nonzero(bitmap)

    def mask(self, i: int) -> LaneMask:
        """Lane i as a `LaneMask`."""
        if i in self.bitmaps:
            y0, x0, bitmap = self.bitmaps[i]
            return LaneMask(y0=y0, x0=x0, bitmap=bitmap)
        return LaneMask(row0=0, lo=self.lo[i], hi=self.hi[i])

    def intersections(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(len(rows), len(cols)) int64 counts of pixels shared by lanes rows[i] and cols[j]."""
        lo = np.maximum(self.lo[rows][:, None], self.lo[cols][None])
        hi = np.minimum(self.hi[rows][:, None], self.hi[cols][None])
        inter = np.maximum(hi - lo + 1, 0).sum(axis=2)
        if self.bitmaps:
            for a, i in enumerate(rows.tolist()):
                for b, j in enumerate(cols.tolist()):
                    if i in self.bitmaps or j in self.bitmaps:
                        inter[a, b] = mask_intersection(self.mask(i), self.mask(j))
        return inter

    def iou(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """IoU matrix of the official tool (0 where either lane drew nothing)."""
        inter = self.intersections(rows, cols)
        union = self.area[rows][:, None] + self.area[cols][None] - inter
        out = np.zeros(inter.shape, np.float64)
        ok = (self.area[rows][:, None] > 0) & (self.area[cols][None] > 0)
        out[ok] = inter[ok] / union[ok]
        return out


class LaneRasterizer:
    """Draws lanes exactly as the official tool's ``cv::line`` loop does, many at once.

    Segments near the image border or longer than a small step are drawn by OpenCV itself. A run of
    small steps away from the border is assembled from OpenCV's own footprints (`_Footprints`):
    per image row, the caps of the run's points on one source row form one span (disc rows too
    narrow for the gaps between that row's points are set aside), spans of neighbouring source rows
    touch, so their union is one interval, found for all runs of all lanes at once by a sliding
    min/max; the set-aside cap rows and the step connectors are then added span by span. A lane
    that would need two intervals in a row is drawn whole by OpenCV and kept as a bitmap.
    """

    def __init__(self, width: int = 30, im_width: int = 1640, im_height: int = 590):
        """Creates the canvas and the lookup tables.

        Args:
          width: line thickness (official ``-w``).
          im_width: canvas width (``-c``).
          im_height: canvas height (``-r``).
        """
        if width < 1:
            raise ValueError(f"width must be a positive integer (official -w), got {width}")
        if im_width < 1 or im_height < 1:
            raise ValueError(f"image size must be positive, got {im_width}x{im_height}")
        self.width = int(width)
        self.im_width = int(im_width)
        self.im_height = int(im_height)
        fp = self._fp = _footprints(self.width)
        self._canvas = np.zeros((self.im_height, self.im_width), np.uint8)
        r = fp.radius
        # Connector spans (dy, x_lo, x_hi) per step code, padded into one table.
        n_codes = fp.n_codes
        spans_by_code = {}
        for (dx, dy), pix in fp.connectors.items():
            spans = []
            for y in np.unique(pix[:, 1]).tolist():
                xs = np.sort(pix[pix[:, 1] == y, 0])
                breaks = np.flatnonzero(np.diff(xs) > 1)
                for i0, i1 in zip(np.r_[0, breaks + 1], np.r_[breaks, len(xs) - 1], strict=True):
                    spans.append((y, int(xs[i0]), int(xs[i1])))
            spans_by_code[fp.code(dx, dy)] = spans
        k = max((len(v) for v in spans_by_code.values()), default=0)
        self._conn = np.zeros((n_codes, max(k, 1), 3), np.int64)
        self._conn_count = np.zeros(n_codes, np.int64)
        for code, spans in spans_by_code.items():
            if spans:
                self._conn[code, : len(spans)] = spans
                self._conn_count[code] = len(spans)
        # Connector spans already inside the cap of the previous point (at p - d_prev) or of the
        # next point (at p + d + d_next) change nothing; tables of those, with one extra index for
        # "no neighbour in the run".
        none = n_codes
        steps_xy = np.zeros((n_codes + 1, 2), np.int64)
        for dx in range(-fp.MAX_DX, fp.MAX_DX + 1):
            for dy in range(-fp.MAX_DY, fp.MAX_DY + 1):
                steps_xy[fp.code(dx, dy)] = (dx, dy)

        def covered(center_x: np.ndarray, center_y: np.ndarray) -> np.ndarray:
            # Span k of the connector table row, against a cap centred at (center_x, center_y).
            rel = self._conn[:, :, 0] - center_y
            inside = np.abs(rel) <= r
            k = np.clip(rel + r, 0, 2 * r)
            lo_ok = self._conn[:, :, 1] - center_x >= fp.stencil_lo[k]
            hi_ok = self._conn[:, :, 2] - center_x <= fp.stencil_hi[k]
            return inside & lo_ok & hi_ok

        self._cov_prev = np.zeros((n_codes + 1, n_codes, k_max := self._conn.shape[1]), bool)
        self._cov_next = np.zeros((n_codes, n_codes + 1, k_max), bool)
        for c in range(n_codes):
            px, py = steps_xy[c]
            self._cov_prev[c] = covered(np.full((n_codes, 1), -px), np.full((n_codes, 1), -py))
            self._cov_next[:, c] = covered(
                steps_xy[:n_codes, 0:1] + px, steps_xy[:n_codes, 1:2] + py
            )
        self._cov_prev[none] = False
        self._cov_next[:, none] = False
        self._no_step = none
        # Stencil (lo offsets, negated hi offsets) in window order: window s is dy = r - s.
        self._stencil2 = np.stack([fp.stencil_lo[::-1], -fp.stencil_hi[::-1]])[:, :, None]
        # The largest horizontal jump between neighbouring rows of a run for which the caps of
        # the two rows touch in every image row.
        reach = np.minimum(
            fp.stencil_hi[1:] - fp.stencil_lo[:-1], fp.stencil_hi[:-1] - fp.stencil_lo[1:]
        )
        self._touch_bound = int(reach.min()) + 1 if r else 0

    # -- OpenCV on the shared canvas ---------------------------------------------------------------

    def _box(self, pts: np.ndarray) -> tuple[int, int, int, int] | None:
        m = self._fp.margin
        x0 = max(int(pts[:, 0].min()) - m, 0)
        y0 = max(int(pts[:, 1].min()) - m, 0)
        x1 = min(int(pts[:, 0].max()) + m, self.im_width - 1)
        y1 = min(int(pts[:, 1].max()) + m, self.im_height - 1)
        if x0 > x1 or y0 > y1:
            return None
        return x0, y0, x1, y1

    def _cv_region(self, runs: list[np.ndarray]) -> tuple[tuple[int, int], np.ndarray] | None:
        """Draws polylines with OpenCV; returns ((y0, x0), the drawn region) or None if outside."""
        box = self._box(np.concatenate(runs))
        if box is None:
            return None
        cv2.polylines(
            self._canvas, [r.astype(np.int32).reshape(-1, 1, 2) for r in runs], False, 1,
            thickness=self.width, lineType=cv2.LINE_8,
        )  # fmt: skip
        x0, y0, x1, y1 = box
        view = self._canvas[y0 : y1 + 1, x0 : x1 + 1]
        region = view.copy()
        view[...] = 0
        return (y0, x0), region

    # -- the batched fast path --------------------------------------------------------------------

    def _fast_runs(
        self,
        x: np.ndarray,
        y: np.ndarray,
        dx: np.ndarray,
        dy: np.ndarray,
        lane_of: np.ndarray,
        codes: np.ndarray,
        fast: np.ndarray,
        s0: np.ndarray,
        s1: np.ndarray,
    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Row intervals of all fast runs (steps s0[k]..s1[k]-1 of the points x, y) at once.

        Returns:
          ``ok`` (K,) bool per run; the runs' row intervals and the spans set aside (cap rows
          too narrow for the gaps, connectors), each as [keys, lo, hi] with key = lane * H + row,
          clipped to the image.
        """
        fp = self._fp
        r = fp.radius
        n_runs = len(s0)
        npts = s1 - s0 + 1
        run_of = np.repeat(np.arange(n_runs), npts)
        first = np.cumsum(npts) - npts
        pidx = np.arange(int(npts.sum())) + np.repeat(s0 - first, npts)
        xs, ys = x[pidx], y[pidx]
        y_min = np.minimum.reduceat(ys, first)
        y_max = np.maximum.reduceat(ys, first)
        nrows = y_max - y_min + 1
        # Per-run step statistics (steps outside runs are neutral in these reductions).
        moving = fast & (dy != 0)
        adx = np.abs(dx)
        n_moves = np.add.reduceat(moving, s0)
        jump_max = np.maximum.reduceat(np.where(moving, adx, 0), s0)
        # Each run gets a block of rows with 2r empty rows on both sides, so that the sliding
        # windows never mix runs: block k holds its source rows at base[k] + 2r + (y - y_min).
        block = nrows + 4 * r
        base = np.cumsum(block) - block
        total = int(block.sum())
        row = base[run_of] + 2 * r + (ys - y_min[run_of])
        a = np.full(total, _EMPTY_LO, np.int64)
        nb = np.full(total, _EMPTY_LO, np.int64)  # negated right ends, so one min() does both
        np.minimum.at(a, row, xs)
        np.minimum.at(nb, row, -xs)
        filled = a < _EMPTY_LO
        ok = np.add.reduceat(filled, base) == nrows  # every row visited (|dy| <= 1)
        # Largest gap between neighbouring points of each source row. A run that enters every
        # row once crosses each row in one stretch of horizontal steps, whose largest step bounds
        # the gap; runs that come back to a row get exact values from an occupancy map.
        row_gap = np.ones(total, np.int64)
        flat_steps = np.flatnonzero(fast & (dy == 0))
        if flat_steps.size:
            f_run = np.searchsorted(s0, flat_steps, side="right") - 1
            f_row = base[f_run] + 2 * r + (y[flat_steps] - y_min[f_run])
            np.maximum.at(row_gap, f_row, np.abs(dx[flat_steps]))
        revisits = n_moves + 1 != nrows
        if revisits.any():
            width = np.where(filled, -nb - a + 1, 0)
            offset = np.cumsum(width) - width
            occupied = np.zeros(int(width.sum()), bool)
            occupied[offset[row] + xs - a[row]] = True
            pos = np.flatnonzero(occupied)
            src = np.flatnonzero(filled)
            row_of_pos = src[np.searchsorted(offset[src], pos, side="right") - 1]
            same = row_of_pos[1:] == row_of_pos[:-1]
            exact = np.ones(total, np.int64)
            np.maximum.at(exact, row_of_pos[1:][same], np.diff(pos)[same])
            in_revisit = np.repeat(revisits, block)
            row_gap = np.where(in_revisit, exact, row_gap)
        # A row's caps merge into one span per disc row at least as wide as the row's gap. Only
        # the outermost disc rows (the narrow tips) may be set aside, so that the source rows
        # seen by an image row stay contiguous; wider gaps send the run to OpenCV.
        too_wide = row_gap > fp.widths[1 if r else 0]
        if too_wide.any():
            ok[np.unique(np.searchsorted(base, np.flatnonzero(too_wide), side="right") - 1)] = False
        tip_rows = row_gap > fp.widths[0] if r else np.zeros(total, bool)
        # Sliding min over the 2r + 1 source rows of every output row, for all blocks at once,
        # accumulated shift by shift in int32 (run points are near the image).
        big = np.int32(2**30)
        pad = np.stack([a, nb])
        pad[pad >= _EMPTY_LO] = big
        pad = pad.astype(np.int32)
        pad_tips = np.where(tip_rows, big, pad) if tip_rows.any() else pad
        n_out = total - 2 * r
        col_run = np.repeat(np.arange(n_runs), block)[r : r + n_out]
        stencil = self._stencil2.astype(np.int32)  # (2, 2r + 1, 1)
        acc = np.full((2, n_out), big, np.int32)
        tmp = np.empty((2, n_out), np.int32)
        for w in range(2 * r + 1):
            src_pad = pad_tips if w in (0, 2 * r) else pad
            np.add(src_pad[:, w : w + n_out], stencil[:, w], out=tmp)
            np.minimum(acc, tmp, out=acc)
        # Caps of neighbouring source rows must touch; guaranteed when every jump between rows
        # is within the bound of the disc, checked otherwise.
        need = (jump_max > self._touch_bound) & ok
        if need.any():
            cand = (
                np.stack(
                    [
                        (pad_tips if w in (0, 2 * r) else pad)[:, w : w + n_out]
                        for w in range(2 * r + 1)
                    ],
                    axis=1,
                ).astype(np.int64)
                + self._stencil2
            )
            c_lo, c_hi = cand[0], -cand[1]
            present = c_lo < big // 2
            both = present[1:] & present[:-1]
            split = np.maximum(c_lo[1:], c_lo[:-1]) > np.minimum(c_hi[1:], c_hi[:-1]) + 1
            bad_cols = np.flatnonzero((both & split).any(axis=0) & need[col_run])
            ok[np.unique(col_run[bad_cols])] = False
        out_y = np.arange(r, r + n_out) - base[col_run] - 2 * r + y_min[col_run]
        sel = (acc[0] < big // 2) & ok[col_run]
        lanes_of_run = lane_of[s0]
        primary = self._clip(
            lanes_of_run[col_run[sel]], out_y[sel], acc[0][sel].astype(np.int64),
            -acc[1][sel].astype(np.int64),
        )  # fmt: skip
        keys: list[np.ndarray] = []
        spans: list[np.ndarray] = []
        # The cap tips set aside, for the points of the rows with gaps.
        tips = tip_rows[row] & ok[run_of]
        if tips.any():
            px, py, pl = xs[tips], ys[tips], lanes_of_run[run_of[tips]]
            for sign, k in ((-1, 0), (1, 2 * r)):
                keys.append(pl)
                spans.append(
                    np.stack([py + sign * r, px + fp.stencil_lo[k], px + fp.stencil_hi[k]])
                )
        # Connector spans of the runs' steps, less those inside the neighbouring points' caps.
        sidx = np.flatnonzero(fast & (self._conn_count[codes] > 0))
        if sidx.size:
            srun = np.searchsorted(s0, sidx, side="right") - 1
            sidx, srun = sidx[ok[srun]], srun[ok[srun]]
            sc = codes[sidx]
            n_steps = len(fast)
            has_prev = (sidx > 0) & fast[np.maximum(sidx - 1, 0)]
            has_next = (sidx + 1 < n_steps) & fast[np.minimum(sidx + 1, n_steps - 1)]
            prev_c = np.where(has_prev, codes[np.maximum(sidx - 1, 0)], self._no_step)
            next_c = np.where(has_next, codes[np.minimum(sidx + 1, n_steps - 1)], self._no_step)
            slots = np.arange(self._conn.shape[1])[None, :] < self._conn_count[sc][:, None]
            need_span = slots & ~self._cov_prev[prev_c, sc] & ~self._cov_next[sc, next_c]
            which, k = np.nonzero(need_span)
            table = self._conn[sc[which], k]
            px, py = x[sidx[which]], y[sidx[which]]
            keys.append(lanes_of_run[srun[which]])
            spans.append(np.stack([py + table[:, 0], px + table[:, 1], px + table[:, 2]]))
        if keys:
            allspans = np.concatenate(spans, axis=1)
            secondary = self._clip(np.concatenate(keys), allspans[0], allspans[1], allspans[2])
        else:
            secondary = [np.zeros(0, np.int64)] * 3
        return ok, primary, secondary

    def _clip(
        self, lane: np.ndarray, row: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> list[np.ndarray]:
        """Spans cut to the image, as [key, lo, hi] with key = lane * H + row."""
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.im_width - 1)
        sel = (row >= 0) & (row < self.im_height) & (lo <= hi)
        return [lane[sel] * self.im_height + row[sel], lo[sel], hi[sel]]

    def rasterize(self, points: np.ndarray, offsets: np.ndarray) -> LaneSet:
        """Draws lanes given as integer polylines back to back (see `lane_polylines`).

        Args:
          points: (M, 2) int64 points.
          offsets: (L + 1,) lane offsets into points; empty lanes draw nothing.

        Returns:
          The drawn lanes.
        """
        fp = self._fp
        h_img, w_img = self.im_height, self.im_width
        n_lanes = len(offsets) - 1
        lo = np.full(n_lanes * h_img, _EMPTY_LO, np.int64)
        hi = np.full(n_lanes * h_img, _EMPTY_HI, np.int64)
        bitmaps: dict[int, tuple[int, int, np.ndarray]] = {}
        counts = np.diff(offsets)
        if points.shape[0] == 0:
            return LaneSet(lo.reshape(n_lanes, h_img), hi.reshape(n_lanes, h_img), bitmaps)
        lane_of = np.repeat(np.arange(n_lanes), counts)
        # Repeated points only redraw the same cap: drop them (exact).
        key = (points[:, 0] << 32) ^ (points[:, 1] & 0xFFFFFFFF)
        keep = np.ones(points.shape[0], bool)
        keep[1:] = (key[1:] != key[:-1]) | (lane_of[1:] != lane_of[:-1])
        kept = np.flatnonzero(keep)  # faster than boolean indexing for irregular masks
        q, lane_of = points[kept], lane_of[kept]
        x, y = q[:, 0].copy(), q[:, 1].copy()
        counts = np.bincount(lane_of, minlength=n_lanes)
        starts = np.cumsum(counts) - counts
        dx, dy = x[1:] - x[:-1], y[1:] - y[:-1]
        same = lane_of[1:] == lane_of[:-1]
        small = (np.abs(dx) <= fp.MAX_DX) & (np.abs(dy) <= fp.MAX_DY)
        codes = np.where(small, fp.code(dx, dy), 0)
        # Where a step may come from footprints: its first point far inside the image, or near
        # exactly one border with that case verified (`_Footprints._verify_borders`).
        m = fp.margin
        x_in = (x >= m) & (x <= w_img - 1 - m)
        y_in = (y >= m) & (y <= h_img - 1 - m)
        step_ok = (x_in & y_in)[:-1]
        edge = np.flatnonzero(~step_ok & small)
        if edge.size:
            xe, ye = x[edge], y[edge]
            xi, yi = x_in[edge], y_in[edge]
            dist = np.stack([ye - (h_img - 1), -ye, -xe, xe - (w_img - 1)])  # outside b, t, l, r
            near = (dist > -m) & (dist <= m) & np.stack([xi, xi, yi, yi])
            border = np.argmax(near, axis=0)
            o = np.clip(dist[border, np.arange(len(edge))] + m, 0, 2 * m)
            one_near = near.sum(axis=0) == 1
            step_ok[edge] = one_near & fp.border_ok[border, codes[edge], o]
        fast = small & same & step_ok & (counts[lane_of[1:]] >= 3)
        if not fp.usable:
            fast[:] = False
        s0, s1 = _run_bounds(fast)
        primary: list[list[np.ndarray]] = []
        secondary: list[list[np.ndarray]] = []
        slow_steps = ~fast & same
        if len(s0):
            ok, run_rows, run_spans = self._fast_runs(x, y, dx, dy, lane_of, codes, fast, s0, s1)
            primary.append(run_rows)
            secondary.append(run_spans)
            for k in np.flatnonzero(~ok).tolist():  # runs OpenCV must draw after all
                slow_steps[s0[k] : s1[k]] = True
        # Everything else is drawn by OpenCV: per lane, its slow runs (a lane without any step is
        # a single point, drawn as cv::line(p, p)).
        slow_lanes: dict[int, list[np.ndarray]] = {}
        b0, b1 = _run_bounds(slow_steps)
        for a0, a1 in zip(b0.tolist(), b1.tolist(), strict=True):
            slow_lanes.setdefault(int(lane_of[a0]), []).append(q[a0 : a1 + 1])
        for lane in np.flatnonzero(counts == 1).tolist():
            slow_lanes[lane] = [np.repeat(q[starts[lane] : starts[lane] + 1], 2, axis=0)]
        failed: set[int] = set()
        for lane, runs in slow_lanes.items():
            got = self._cv_region(runs)
            if got is None:
                continue
            (y0, x0), region = got
            rows = _region_intervals(region)
            if rows is None:
                failed.add(lane)
                continue
            filled = rows[0] <= rows[1]
            ys = np.flatnonzero(filled) + y0
            primary.append([lane * h_img + ys, rows[0][filled] + x0, rows[1][filled] + x0])
        # Union per (lane, row): first the row intervals (two only where pieces meet), then the
        # spans set aside, most of which lie inside already. A row that would need two
        # intervals sends its lane to OpenCV whole.
        if primary:
            keys = np.concatenate([it[0] for it in primary])
            s_lo = np.concatenate([it[1] for it in primary])
            s_hi = np.concatenate([it[2] for it in primary])
            np.minimum.at(lo, keys, s_lo)
            np.maximum.at(hi, keys, s_hi)
            multi = np.bincount(keys, minlength=lo.size)[keys] > 1
            if multi.any():
                bad = _union_check(keys[multi], s_lo[multi], s_hi[multi])
                failed.update((bad // h_img).tolist())
        if secondary:
            keys = np.concatenate([it[0] for it in secondary])
            s_lo = np.concatenate([it[1] for it in secondary])
            s_hi = np.concatenate([it[2] for it in secondary])
            out = (s_lo < lo[keys]) | (s_hi > hi[keys])
            if out.any():
                keys, s_lo, s_hi = keys[out], s_lo[out], s_hi[out]
                touched = np.unique(keys)
                touched = touched[lo[touched] <= hi[touched]]
                bad = _union_check(
                    np.concatenate([keys, touched]),
                    np.concatenate([s_lo, lo[touched]]),
                    np.concatenate([s_hi, hi[touched]]),
                )
                failed.update((bad // h_img).tolist())
                np.minimum.at(lo, keys, s_lo)
                np.maximum.at(hi, keys, s_hi)
        for lane in failed:
            lo[lane * h_img : (lane + 1) * h_img] = _EMPTY_LO
            hi[lane * h_img : (lane + 1) * h_img] = _EMPTY_HI
            got = self._cv_region([q[starts[lane] : starts[lane] + counts[lane]]])
            if got is None:
                continue
            (y0, x0), region = got
            rows = _region_intervals(region)
            if rows is None:
                bitmaps[lane] = (y0, x0, region)
            else:
                sl = slice(lane * h_img + y0, lane * h_img + y0 + region.shape[0])
                lo[sl], hi[sl] = rows[0] + x0, rows[1] + x0
        return LaneSet(lo.reshape(n_lanes, h_img), hi.reshape(n_lanes, h_img), bitmaps)

    def draw(self, polyline: np.ndarray) -> LaneMask | None:
        """Draws one int polyline (official semantics); None when no pixel lands in the image."""
        pts = np.asarray(polyline).astype(np.int64).reshape(-1, 2)
        lanes = self.rasterize(pts, np.array([0, len(pts)]))
        return lanes.mask(0) if lanes.area[0] else None


# ---------------------------------------------------------------------------------------------
# Matching: the official Kuhn-Munkres (pipartiteGraph::match), replayed operation by operation.


def official_match(similarity: Sequence[Sequence[float]]) -> list[int]:
    """Row -> column matching chosen by the official tool (``Counter::makeMatch``).

    Args:
      similarity: (num_gt, num_pred) IoU matrix as nested sequences, both sizes >= 1.

    Returns:
      For each GT row, its matched prediction column or -1.
    """
    rows = len(similarity)
    cols = len(similarity[0]) if rows else 0
    if rows == 0 or cols == 0:
        raise ValueError(f"official_match: empty similarity matrix ({rows}x{cols})")
    exchange = rows > cols
    if exchange:
        mat = [[float(similarity[j][i]) for j in range(rows)] for i in range(cols)]
        n_left, n_right = cols, rows
    else:
        mat = [[float(v) for v in row] for row in similarity]
        n_left, n_right = rows, cols
    left_match = [-1] * n_left
    right_match = [-1] * n_right
    right_w = [0.0] * n_right
    left_w = []
    for i in range(n_left):
        w = -1e5
        for j in range(n_right):
            if w < mat[i][j]:
                w = mat[i][j]
        left_w.append(w)
    left_used = [False] * n_left
    right_used = [False] * n_right

    def dfs(u: int) -> bool:
        left_used[u] = True
        for v in range(n_right):
            if not right_used[v] and abs(left_w[u] + right_w[v] - mat[u][v]) < _KM_SLACK:
                right_used[v] = True
                if right_match[v] == -1 or dfs(right_match[v]):
                    right_match[v] = u
                    left_match[u] = v
                    return True
        return False

    aborted = False
    for u in range(n_left):
        for _ in range(100_000):  # the C++ loops forever here; no valid input gets near this
            for i in range(n_left):
                left_used[i] = False
            for j in range(n_right):
                right_used[j] = False
            if dfs(u):
                break
            d = 1e10
            for i in range(n_left):
                if left_used[i]:
                    for j in range(n_right):
                        if not right_used[j]:
                            d = min(d, left_w[i] + right_w[j] - mat[i][j])
            if d == 1e10:
                aborted = True
                break
            for i in range(n_left):
                if left_used[i]:
                    left_w[i] -= d
            for j in range(n_right):
                if right_used[j]:
                    right_w[j] += d
        else:
            raise RuntimeError(f"official_match: Kuhn-Munkres did not converge on {similarity!r}")
        if aborted:
            break
    return list(right_match) if exchange else list(left_match)


# ---------------------------------------------------------------------------------------------
# Per image and per list.


def count_images(
    images: Sequence[tuple[Sequence[np.ndarray] | None, Sequence[np.ndarray] | None]],
    rasterizer: LaneRasterizer,
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """(TP, FP, FN) per image, as ``Counter::count_im_pair``, all images drawn in one batch.

    Args:
      images: (gt_lanes, pred_lanes) per image; lanes are (N, 2) float32 arrays as read (N < 2
        allowed), None means no lanes.
      rasterizer: drawing settings (width, canvas size).
      iou_threshold: a matched pair is a TP when its IoU is strictly greater.

    Returns:
      (num_images, 3) int64 array of tp, fp, fn.
    """
    out = np.zeros((len(images), 3), np.int64)
    lanes: list[np.ndarray] = []
    spans = []
    for k, (gt, pred) in enumerate(images):
        n_gt, n_pred = len(gt or ()), len(pred or ())
        if n_gt == 0:
            out[k] = (0, n_pred, 0)
        elif n_pred == 0:
            out[k] = (0, 0, n_gt)
        else:  # only images with lanes on both sides are drawn, as in the official tool
            spans.append((k, len(lanes), n_gt, n_pred))
            lanes.extend(gt)
            lanes.extend(pred)
    if not spans:
        return out
    drawn = rasterizer.rasterize(*lane_polylines(lanes))
    for k, start, n_gt, n_pred in spans:
        rows = np.arange(start, start + n_gt)
        sim = drawn.iou(rows, np.arange(start + n_gt, start + n_gt + n_pred))
        match = official_match(sim.tolist())
        tp = sum(1 for i, j in enumerate(match) if j >= 0 and sim[i, j] > iou_threshold)
        out[k] = (tp, n_pred - tp, n_gt - tp)
    return out


def iou_matrix(
    gt_lanes: Sequence[np.ndarray],
    pred_lanes: Sequence[np.ndarray],
    rasterizer: LaneRasterizer,
) -> np.ndarray:
    """(num_gt, num_pred) float64 IoU matrix of the official tool for one image."""
    lanes = [np.asarray(lane, np.float32).reshape(-1, 2) for lane in (*gt_lanes, *pred_lanes)]
    drawn = rasterizer.rasterize(*lane_polylines(lanes))
    n_gt = len(gt_lanes)
    return drawn.iou(np.arange(n_gt), np.arange(n_gt, len(lanes)))


def count_image(
    gt_lanes: Sequence[np.ndarray],
    pred_lanes: Sequence[np.ndarray],
    rasterizer: LaneRasterizer,
    iou_threshold: float = 0.5,
) -> tuple[int, int, int]:
    """(TP, FP, FN) of one image (see `count_images`)."""
    tp, fp, fn = count_images([(gt_lanes, pred_lanes)], rasterizer, iou_threshold)[0].tolist()
    return tp, fp, fn


def evaluate_lanes(
    gt_lanes: Sequence[np.ndarray],
    pred_lanes: Sequence[np.ndarray],
    width: int = 30,
    iou_threshold: float = 0.5,
    im_width: int = 1640,
    im_height: int = 590,
) -> tuple[int, int, int]:
    """(TP, FP, FN) for one image given in memory (lanes as (N, 2) arrays of x, y).

    Points are converted to float32 first, as the official reader stores them.
    """
    return count_image(
        [np.asarray(lane, np.float64).reshape(-1, 2).astype(np.float32) for lane in gt_lanes],
        [np.asarray(lane, np.float64).reshape(-1, 2).astype(np.float32) for lane in pred_lanes],
        LaneRasterizer(width, im_width, im_height),
        iou_threshold,
    )


_WORKER_RASTERIZERS: dict[tuple[int, int, int], LaneRasterizer] = {}


def _count_files(
    pairs: Sequence[tuple[str, str]], settings: tuple[int, float, int, int]
) -> np.ndarray:
    """Worker: (k, 5) int64 rows of tp, fp, fn, anno_missing, detect_missing."""
    width, threshold, im_width, im_height = settings
    key = (width, im_width, im_height)
    rasterizer = _WORKER_RASTERIZERS.get(key)
    if rasterizer is None:
        rasterizer = _WORKER_RASTERIZERS[key] = LaneRasterizer(width, im_width, im_height)
    out = np.zeros((len(pairs), 5), np.int64)
    images = []
    for k, (anno_file, detect_file) in enumerate(pairs):
        gt = read_lane_file(anno_file)
        pred = read_lane_file(detect_file)
        images.append((gt, pred))
        out[k, 3] = gt is None
        out[k, 4] = pred is None
    out[:, :3] = count_images(images, rasterizer, threshold)
    return out


def read_list(list_file: str | os.PathLike[str]) -> list[str]:
    """Image paths of a CULane list file (first field of each non-blank line).

    Raises:
      FileNotFoundError: when the list file does not exist.
    """
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"CULane list file not found: {os.fspath(list_file)!r}")
    with open(list_file, encoding="utf-8", errors="surrogateescape") as handle:
        return [line.split()[0] for line in handle if line.strip()]


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork is fastest, but not once JAX has started its (multithreaded) backends in this process.
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    if sys.platform.startswith("linux") and not getattr(xla_bridge, "_backends", None):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if sys.platform != "win32" else "spawn")


def _count_many(
    pairs: list[tuple[str, str]],
    settings: tuple[int, float, int, int],
    workers: int | None,
) -> np.ndarray:
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1 or None (all cores), got {workers}")
    chunks = [pairs[i : i + _CHUNK] for i in range(0, len(pairs), _CHUNK)]
    if workers == 1 or len(chunks) <= 1:
        parts = [_count_files(chunk, settings) for chunk in chunks]
    else:
        with _mp_context().Pool(min(workers, len(chunks))) as pool:
            parts = pool.starmap(_count_files, [(chunk, settings) for chunk in chunks], chunksize=1)
    return np.concatenate(parts) if parts else np.zeros((0, 5), np.int64)


def scores(tp: int, fp: int, fn: int) -> dict[str, Any]:
    """Official precision / recall / F (``Counter::get_precision`` etc.) from counts.

    Precision is -1 when tp + fp = 0 and recall is -1 when tp + fn = 0, as in the C++ tool; F is
    2PR / (P + R) evaluated in doubles, NaN when P = R = 0 (the tool prints ``-nan``).
    """
    precision = -1.0 if tp + fp == 0 else tp / float(tp + fp)
    recall = -1.0 if tp + fn == 0 else tp / float(tp + fn)
    denominator = precision + recall
    f1 = -math.nan if denominator == 0 else 2 * precision * recall / denominator
    return {
        "tp": int(tp), "fp": int(fp), "fn": int(fn),
        "precision": precision, "recall": recall, "f1": f1,
    }  # fmt: skip


def _check_dirs(anno_dir: str | os.PathLike[str], detect_dir: str | os.PathLike[str]) -> None:
    for flag, folder in (("anno_dir (-a)", anno_dir), ("detect_dir (-d)", detect_dir)):
        if not os.path.isdir(folder):
            raise NotADirectoryError(f"CULane {flag} is not a directory: {os.fspath(folder)!r}")


def evaluate(
    anno_dir: str | os.PathLike[str],
    detect_dir: str | os.PathLike[str],
    list_file: str | os.PathLike[str],
    width: int = 30,
    iou_threshold: float = 0.5,
    im_width: int = 1640,
    im_height: int = 590,
    *,
    workers: int | None = None,
) -> dict[str, Any]:
    """CULane F1 over a list of images, with the official tool's TP / FP / FN.

    Args:
      anno_dir: dataset root holding ``<image path without ext>.lines.txt`` ground truth.
      detect_dir: prediction root with the same layout; a missing file means no lanes.
      list_file: image list (``test.txt`` or a ``test_split`` file), one path per line.
      width: lane thickness in pixels (official ``-w``, 30).
      iou_threshold: TP when the matched IoU is strictly greater (``-t``, 0.5).
      im_width: canvas width (``-c``, 1640).
      im_height: canvas height (``-r``, 590).
      workers: processes (None: all CPU cores; 1: in this process).

    Returns:
      ``{"tp", "fp", "fn", "precision", "recall", "f1"}`` with the official values (see `scores`),
      plus ``"images"``, ``"missing_anno"`` and ``"missing_detect"`` (file counts) and
      ``"seconds"`` (wall time).

    Raises:
      FileNotFoundError: missing list file.
      NotADirectoryError: missing annotation or prediction directory.
      ValueError: non-positive width or image size.
    """
    start = time.perf_counter()
    _check_dirs(anno_dir, detect_dir)
    if not math.isfinite(iou_threshold):
        raise ValueError(f"iou_threshold must be finite, got {iou_threshold}")
    LaneRasterizer(width, im_width, im_height)  # validates the drawing settings up front
    images = read_list(list_file)
    pairs = [(lines_txt_path(anno_dir, p), lines_txt_path(detect_dir, p)) for p in images]
    settings = (int(width), float(iou_threshold), int(im_width), int(im_height))
    totals = _count_many(pairs, settings, workers).sum(axis=0)
    result = scores(int(totals[0]), int(totals[1]), int(totals[2]))
    result.update(
        images=len(images),
        missing_anno=int(totals[3]),
        missing_detect=int(totals[4]),
        seconds=time.perf_counter() - start,
    )
    return result


def category_list(list_dir: str | os.PathLike[str], index: int) -> str:
    """Path of ``test{index}_{name}.txt`` in a CULane ``list/test_split`` folder."""
    return os.path.join(os.fspath(list_dir), f"test{index}_{CATEGORIES[index]}.txt")


def evaluate_categories(
    anno_dir: str | os.PathLike[str],
    detect_dir: str | os.PathLike[str],
    list_dir: str | os.PathLike[str],
    width: int = 30,
    iou_threshold: float = 0.5,
    im_width: int = 1640,
    im_height: int = 590,
    *,
    workers: int | None = None,
) -> dict[str, dict[str, Any]]:
    """The nine CULane test categories and their total (as ``calTotal.m``: summed counts).

    Args:
      anno_dir: dataset root.
      detect_dir: prediction root.
      list_dir: folder with ``test0_normal.txt`` ... ``test8_night.txt``.
      width: lane thickness (30).
      iou_threshold: IoU threshold (0.5).
      im_width: canvas width (1640).
      im_height: canvas height (590).
      workers: processes (None: all CPU cores).

    Returns:
      ``{category: result}`` for the nine categories in the official order plus ``"total"``; each
      result is as in `evaluate`. All images of all lists are evaluated in one process pool.
    """
    start = time.perf_counter()
    _check_dirs(anno_dir, detect_dir)
    LaneRasterizer(width, im_width, im_height)
    lists = [read_list(category_list(list_dir, k)) for k in range(len(CATEGORIES))]
    pairs = [
        (lines_txt_path(anno_dir, p), lines_txt_path(detect_dir, p)) for imgs in lists for p in imgs
    ]
    settings = (int(width), float(iou_threshold), int(im_width), int(im_height))
    rows = _count_many(pairs, settings, workers)
    seconds = time.perf_counter() - start
    out: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, imgs in zip(CATEGORIES, lists, strict=True):
        part = rows[offset : offset + len(imgs)].sum(axis=0)
        offset += len(imgs)
        out[name] = scores(int(part[0]), int(part[1]), int(part[2]))
        out[name].update(images=len(imgs), missing_anno=int(part[3]), missing_detect=int(part[4]))
    total = rows.sum(axis=0)
    out["total"] = scores(int(total[0]), int(total[1]), int(total[2]))
    out["total"].update(
        images=len(pairs),
        missing_anno=int(total[3]),
        missing_detect=int(total[4]),
        seconds=seconds,
    )
    return out


# ---------------------------------------------------------------------------------------------
# Output in the official formats.


def _cxx_double(value: float) -> str:
    """``std::ostream << double`` with default flags (%g, 6 significant digits)."""
    if math.isnan(value):
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"
    return f"{value:.6g}"


def format_official_output(result: dict[str, Any], output_file: str) -> str:
    """Text the official tool writes to its ``-o`` file."""
    return (
        f"file: {output_file}\n"
        f"tp: {result['tp']} fp: {result['fp']} fn: {result['fn']}\n"
        f"precision: {_cxx_double(result['precision'])}\n"
        f"recall: {_cxx_double(result['recall'])}\n"
        f"Fmeasure: {_cxx_double(result['f1'])}\n\n"
    )


def write_official_output(result: dict[str, Any], output_file: str) -> None:
    """Writes the official output file (``file:``, ``tp: fp: fn:``, precision, recall, Fmeasure)."""
    folder = os.path.dirname(output_file)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(output_file, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(format_official_output(result, output_file))


def _percent(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.2f}"


def category_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the literature: F1 (%) per category, FP for cross, total F1."""
    lines = ["| category | images | F1 (%) |", "|---|---:|---:|"]
    for name in CATEGORIES:
        res = results[name]
        value = f"FP {res['fp']}" if name == "cross" else _percent(res["f1"])
        lines.append(f"| {name} | {res['images']} | {value} |")
    total = results["total"]
    lines.append(f"| total | {total['images']} | {_percent(total['f1'])} |")
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m intrakd_jax.evaluation.culane",
        description="CULane lane F1 with the official evaluator's exact TP/FP/FN.",
    )
    parser.add_argument("-a", dest="anno_dir", required=True, help="annotation root")
    parser.add_argument("-d", dest="detect_dir", required=True, help="prediction root")
    parser.add_argument(
        "-i", dest="im_dir", default=None, help="image root (ignored, as officially)"
    )
    parser.add_argument("-l", dest="list_file", default=None, help="image list file")
    parser.add_argument("-w", dest="width", type=int, default=30, help="lane width (30)")
    parser.add_argument("-t", dest="iou_threshold", type=float, default=0.5, help="IoU threshold")
    parser.add_argument("-c", dest="im_width", type=int, default=1640, help="image width")
    parser.add_argument("-r", dest="im_height", type=int, default=590, help="image height")
    parser.add_argument("-f", dest="frame", default=None, help="ignored, as officially")
    parser.add_argument("-s", dest="show", action="store_true", help="visualise (not supported)")
    parser.add_argument(
        "-o",
        dest="output",
        default=None,
        help="output file (default ./output.txt); with --categories, a folder for "
        "out{k}_{category}.txt and out_total.txt",
    )
    parser.add_argument(
        "--categories",
        dest="list_dir",
        default=None,
        help="folder with test0_normal.txt .. test8_night.txt: print the per-category table",
    )
    parser.add_argument("-j", "--workers", type=int, default=None, help="processes (all cores)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _build_parser().parse_args(argv)
    if args.show:
        print("error: -s (visualisation) is not supported", file=sys.stderr)
        return 2
    if (args.list_file is None) == (args.list_dir is None):
        print("error: give exactly one of -l LIST and --categories LIST_DIR", file=sys.stderr)
        return 2
    settings = dict(
        width=args.width, iou_threshold=args.iou_threshold, im_width=args.im_width,
        im_height=args.im_height, workers=args.workers,
    )  # fmt: skip
    workers = args.workers or os.cpu_count() or 1
    if args.list_file is not None:
        result = evaluate(args.anno_dir, args.detect_dir, args.list_file, **settings)
        output = args.output or "./output.txt"
        write_official_output(result, output)
        total = result
        print(f"tp: {result['tp']} fp: {result['fp']} fn: {result['fn']}")
        print(f"precision: {_cxx_double(result['precision'])}")
        print(f"recall: {_cxx_double(result['recall'])}")
        print(f"Fmeasure: {_cxx_double(result['f1'])}")
        images, seconds = result["images"], result["seconds"]
    else:
        results = evaluate_categories(args.anno_dir, args.detect_dir, args.list_dir, **settings)
        if args.output:
            for k, name in enumerate(CATEGORIES):
                path = os.path.join(args.output, f"out{k}_{name}.txt")
                write_official_output(results[name], path)
            write_official_output(results["total"], os.path.join(args.output, "out_total.txt"))
        print(category_table(results))
        total = results["total"]
        images, seconds = total["images"], total["seconds"]
    if total["missing_anno"]:
        print(
            f"warning: {total['missing_anno']} of {images} ground-truth files are missing "
            f"(check -a); they count as images without lanes",
            file=sys.stderr,
        )
    rate = images / seconds if seconds > 0 else float("inf")
    print(f"{images} images in {seconds:.2f} s: {rate:.1f} images/s (up to {workers} processes)")
    return 0


if __name__ == "__main__":
    # Run the importable module's main so worker processes can unpickle its functions.
    from intrakd_jax.evaluation import culane as _culane

    sys.exit(_culane.main())
