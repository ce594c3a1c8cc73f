r"""CULane lanes as the official evaluator reads and splines them (numpy, no OpenCV drawing).

* Reading: every ``getline`` line of a ``.lines.txt`` file is one lane (blank and whitespace-only
  lines included); numbers are read as C++ ``stream >> double`` reads them (pairs until the first
  failure) and stored as float32 (``cv::Point2f``). A missing file means no lanes.
* Lanes of fewer than 2 points get no polyline (IoU 0 with everything, still FP / FN).
* Lanes of exactly 2 points are one segment. Longer lanes go through the official natural cubic
  spline over chord length (``Spline::cal_fun``: float32 point differences, float64 TDMA in the
  same order), sampled 50 times per interval, stored as float32, plus the last input point, then
  ``cvRound`` (round half to even; out-of-range values become INT_MIN as on x86-64).
* Documented deviation where the official tool is undefined (DATASETS.md 1.9a): consecutive
  duplicate points of a lane of more than 2 points (zero-length spline interval, NaN coordinates
  in the C++ tool) are dropped before the spline; if 2 points remain the lane is one segment, if
  1 remains it is a dot (what ``cv::line(p, p)`` draws).

`intrakd_jax.evaluation.culane` draws these polylines (`culane_raster`) and counts TP / FP / FN.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import numpy as np

SPLINE_SAMPLES = 50
_INT_MIN = -(2**31)

# ---------------------------------------------------------------------------------------------
# Reading .lines.txt exactly like `while (getline(f, line)) { stringstream ss(line); while (ss >> x
# >> y) ... }` in the C locale.

_WS = rb"[ \t\n\r\x0b\x0c]"
_NUMBER = rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
# A number matched atomically (greedy, never given back): `\d+\.?\d*` can split a digit run in
# many ways, and under the repetitions below a run of digits followed by junk made the regex
# engine try all of them (30 digits and a letter took minutes). Greedy tokens are also the
# only ones the C++ extraction takes, so nothing is lost.
_ATOMIC_NUMBER = rb"(?>" + _NUMBER + rb")"
# When a line fully matches this, the greedy left-to-right NUMBER tokens are exactly what the
# C++ extraction consumes; anything else goes through the character-level scanner below.
_CLEAN_LINE_RE = re.compile(_WS + rb"*(?:" + _ATOMIC_NUMBER + _WS + rb"*)*")
# A file of numbers separated by whitespace (no two numbers glued together): split() tokens.
_CLEAN_FILE_RE = re.compile(
    _WS
    + rb"*(?:"
    + _ATOMIC_NUMBER
    + rb"(?:"
    + _WS
    + rb"+"
    + _ATOMIC_NUMBER
    + rb")*)?"
    + _WS
    + rb"*"
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


def _spline_moments(
    h: np.ndarray, slope: np.ndarray, counts: np.ndarray, starts: np.ndarray
) -> np.ndarray:
    """Second derivatives M of the natural splines (``Spline::cal_fun``'s TDMA), all lanes at once.

    Args:
      h: (n_tot - 1,) chord lengths between consecutive points (across lanes too).
      slope: (n_tot - 1, 2) point differences over h.
      counts: (L,) points per lane, each >= 3.
      starts: (L,) index of each lane's first point.

    Returns:
      (n_tot, 2) float64 M per point; the lane ends keep 0 (natural spline).
    """
    n_tot = len(h) + 1
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
    return m_arr


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
        m_arr = _spline_moments(h, slope, counts, starts)
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
