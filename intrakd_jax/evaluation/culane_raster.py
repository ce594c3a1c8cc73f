"""OpenCV's thick lines as the official CULane tool draws them, for many lanes at once.

The official evaluator draws each lane polyline with ``cv::line(im, p_n, p_{n+1}, 1, width)``
(LINE_8) on a zero 8-bit canvas and counts pixels. `LaneRasterizer` gives exactly those pixels,
without changing a single one, but fast (measured by benchmarks/culane_eval.py): each lane is
drawn once per image instead of once per lane pair; lanes are kept as one pixel interval per
image row, so a lane pair's intersection is a few array operations; and all lanes of a chunk of
images are drawn together with array operations from OpenCV's own footprints: consecutive
duplicate points are dropped (they redraw the same round cap), a run of small steps is the union
of the caps of its points (row spans of the disc) plus the few polygon pixels the caps miss, both
measured once with OpenCV, and only what cannot be proven equal that way (long steps, steps
across an image border in the few cases where OpenCV's clipping moves pixels, lanes that need
two spans in a row) is drawn by OpenCV itself. Tests compare every lane of random corpora
against the per-segment ``cv2.line`` loop.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from intrakd_jax.evaluation.culane_footprints import footprints

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


@dataclasses.dataclass
class _RunRows:
    """Fast runs laid out as blocks of source rows, one block per run.

    Block k holds run k's source rows at ``base[k] + 2r + (y - y_min[k])`` with 2r empty rows on
    both sides, so that sliding windows never mix runs. ``a`` / ``nb`` are the leftmost x and
    the negated rightmost x of the run's points on each row (`_EMPTY_LO` where none); ``ok`` is
    False for runs that skip a row (their steps go to OpenCV).
    """

    run_of: np.ndarray  # run of each run point
    xs: np.ndarray  # run points
    ys: np.ndarray
    row: np.ndarray  # block row of each run point
    y_min: np.ndarray  # per run
    nrows: np.ndarray
    n_moves: np.ndarray
    jump_max: np.ndarray
    block: np.ndarray
    base: np.ndarray
    total: int
    a: np.ndarray  # per block row
    nb: np.ndarray
    filled: np.ndarray
    ok: np.ndarray  # per run


def _run_rows(
    x: np.ndarray,
    y: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    fast: np.ndarray,
    s0: np.ndarray,
    s1: np.ndarray,
    r: int,
) -> _RunRows:
    """Lays out the runs of steps s0[k]..s1[k]-1 as `_RunRows` for a cap of radius r."""
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
    n_moves = np.add.reduceat(moving, s0)
    jump_max = np.maximum.reduceat(np.where(moving, np.abs(dx), 0), s0)
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
    return _RunRows(
        run_of=run_of, xs=xs, ys=ys, row=row, y_min=y_min, nrows=nrows, n_moves=n_moves,
        jump_max=jump_max, block=block, base=base, total=total, a=a, nb=nb, filled=filled, ok=ok,
    )  # fmt: skip


def _row_gaps(
    runs: _RunRows,
    x: np.ndarray,
    y: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    fast: np.ndarray,
    s0: np.ndarray,
    r: int,
) -> np.ndarray:
    """Largest gap between neighbouring points of each block row (1 where there is none).

    A run that enters every row once crosses each row in one stretch of horizontal steps, whose
    largest step bounds the gap; runs that come back to a row get exact values from an
    occupancy map.
    """
    row_gap = np.ones(runs.total, np.int64)
    flat_steps = np.flatnonzero(fast & (dy == 0))
    if flat_steps.size:
        f_run = np.searchsorted(s0, flat_steps, side="right") - 1
        f_row = runs.base[f_run] + 2 * r + (y[flat_steps] - runs.y_min[f_run])
        np.maximum.at(row_gap, f_row, np.abs(dx[flat_steps]))
    revisits = runs.n_moves + 1 != runs.nrows
    if revisits.any():
        a, filled, row = runs.a, runs.filled, runs.row
        width = np.where(filled, -runs.nb - a + 1, 0)
        offset = np.cumsum(width) - width
        occupied = np.zeros(int(width.sum()), bool)
        occupied[offset[row] + runs.xs - a[row]] = True
        pos = np.flatnonzero(occupied)
        src = np.flatnonzero(filled)
        row_of_pos = src[np.searchsorted(offset[src], pos, side="right") - 1]
        same = row_of_pos[1:] == row_of_pos[:-1]
        exact = np.ones(runs.total, np.int64)
        np.maximum.at(exact, row_of_pos[1:][same], np.diff(pos)[same])
        in_revisit = np.repeat(revisits, runs.block)
        row_gap = np.where(in_revisit, exact, row_gap)
    return row_gap


def _merge_spans(
    lo: np.ndarray,
    hi: np.ndarray,
    primary: list[list[np.ndarray]],
    secondary: list[list[np.ndarray]],
    h_img: int,
) -> set[int]:
    """Unions [key, lo, hi] span lists into the per-(lane, row) intervals ``lo`` / ``hi``.

    First the row intervals (two per row only where pieces meet), then the spans set aside,
    most of which lie inside already.

    Returns:
      The lanes with a row that would need two intervals (to be drawn by OpenCV whole).
    """
    failed: set[int] = set()
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
    return failed


class LaneRasterizer:
    """Draws lanes exactly as the official tool's ``cv::line`` loop does, many at once.

    Segments near the image border or longer than a small step are drawn by OpenCV itself. A
    run of small steps away from the border is assembled from OpenCV's own footprints
    (`culane_footprints.Footprints`): per image row, the caps of the run's points on one source
    row form one span (disc rows too narrow for the gaps between that row's points are set
    aside), spans of neighbouring source rows touch, so their union is one interval, found for
    all runs of all lanes at once by a sliding min/max; the set-aside cap rows and the step
    connectors are then added span by span. A lane that would need two intervals in a row is
    drawn whole by OpenCV and kept as a bitmap.
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
        fp = self._fp = footprints(self.width)
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
        runs = _run_rows(x, y, dx, dy, fast, s0, s1, r)
        row_gap = _row_gaps(runs, x, y, dx, dy, fast, s0, r)
        # A row's caps merge into one span per disc row at least as wide as the row's gap. Only
        # the outermost disc rows (the narrow tips) may be set aside, so that the source rows
        # seen by an image row stay contiguous; wider gaps send the run to OpenCV.
        too_wide = row_gap > fp.widths[1 if r else 0]
        ok = runs.ok
        if too_wide.any():
            bad = np.searchsorted(runs.base, np.flatnonzero(too_wide), side="right") - 1
            ok[np.unique(bad)] = False
        tip_rows = row_gap > fp.widths[0] if r else np.zeros(runs.total, bool)
        lo, hi, col_run, out_y = self._sliding_spans(runs, tip_rows)
        sel = (lo < _EMPTY_LO) & ok[col_run]
        lanes_of_run = lane_of[s0]
        primary = self._clip(lanes_of_run[col_run[sel]], out_y[sel], lo[sel], hi[sel])
        keys: list[np.ndarray] = []
        spans: list[np.ndarray] = []
        # The cap tips set aside, for the points of the rows with gaps.
        tips = tip_rows[runs.row] & ok[runs.run_of]
        if tips.any():
            px, py = runs.xs[tips], runs.ys[tips]
            pl = lanes_of_run[runs.run_of[tips]]
            for sign, k in ((-1, 0), (1, 2 * r)):
                keys.append(pl)
                spans.append(
                    np.stack([py + sign * r, px + fp.stencil_lo[k], px + fp.stencil_hi[k]])
                )
        connectors = self._connector_spans(x, y, codes, fast, s0, ok, lanes_of_run)
        if connectors is not None:
            keys.append(connectors[0])
            spans.append(connectors[1])
        if keys:
            allspans = np.concatenate(spans, axis=1)
            secondary = self._clip(np.concatenate(keys), allspans[0], allspans[1], allspans[2])
        else:
            secondary = [np.zeros(0, np.int64)] * 3
        return ok, primary, secondary

    def _sliding_spans(
        self, runs: _RunRows, tip_rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per output row of every block: the union of the caps of its 2r + 1 source rows.

        Sliding min over the source rows, for all blocks at once, accumulated shift by shift in
        int32 (run points are near the image). Runs whose caps of neighbouring source rows may
        not touch are checked and get ``runs.ok`` False when they do not.

        Returns:
          ``(lo, hi, col_run, out_y)``: int64 span per output row (lo = `_EMPTY_LO` where empty),
          the run of each output row and its image row.
        """
        r = self._fp.radius
        big = np.int32(2**30)
        pad = np.stack([runs.a, runs.nb])
        pad[pad >= _EMPTY_LO] = big
        pad = pad.astype(np.int32)
        pad_tips = np.where(tip_rows, big, pad) if tip_rows.any() else pad
        n_out = runs.total - 2 * r
        col_run = np.repeat(np.arange(len(runs.base)), runs.block)[r : r + n_out]
        stencil = self._stencil2.astype(np.int32)  # (2, 2r + 1, 1)
        acc = np.full((2, n_out), big, np.int32)
        tmp = np.empty((2, n_out), np.int32)
        for w in range(2 * r + 1):
            src_pad = pad_tips if w in (0, 2 * r) else pad
            np.add(src_pad[:, w : w + n_out], stencil[:, w], out=tmp)
            np.minimum(acc, tmp, out=acc)
        # Caps of neighbouring source rows must touch; guaranteed when every jump between rows
        # is within the bound of the disc, checked otherwise.
        need = (runs.jump_max > self._touch_bound) & runs.ok
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
            runs.ok[np.unique(col_run[bad_cols])] = False
        out_y = np.arange(r, r + n_out) - runs.base[col_run] - 2 * r + runs.y_min[col_run]
        empty = acc[0] >= big // 2
        lo = np.where(empty, _EMPTY_LO, acc[0].astype(np.int64))
        return lo, -acc[1].astype(np.int64), col_run, out_y

    def _connector_spans(
        self,
        x: np.ndarray,
        y: np.ndarray,
        codes: np.ndarray,
        fast: np.ndarray,
        s0: np.ndarray,
        ok: np.ndarray,
        lanes_of_run: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Connector spans of the runs' steps, less those inside the neighbouring points' caps.

        Returns:
          ``(lanes, spans)`` with spans (3, N) rows of (image row, lo, hi), or None if none.
        """
        sidx = np.flatnonzero(fast & (self._conn_count[codes] > 0))
        if not sidx.size:
            return None
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
        spans = np.stack([py + table[:, 0], px + table[:, 1], px + table[:, 2]])
        return lanes_of_run[srun[which]], spans

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
        h_img = self.im_height
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
        fast, codes = self._fast_steps(x, y, dx, dy, same, counts[lane_of[1:]] >= 3)
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
        failed |= _merge_spans(lo, hi, primary, secondary, h_img)
        # A lane whose rows would need two intervals is drawn by OpenCV whole.
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

    def _fast_steps(
        self,
        x: np.ndarray,
        y: np.ndarray,
        dx: np.ndarray,
        dy: np.ndarray,
        same: np.ndarray,
        long_lane: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Which steps may come from footprints, and their step codes.

        A step qualifies when it is small, inside one lane of at least 3 points, and its first
        point lies far inside the image, or near exactly one border with that case verified
        (`Footprints._verify_borders`).

        Returns:
          ``(fast, codes)``: bool and int64 arrays over the steps.
        """
        fp = self._fp
        h_img, w_img = self.im_height, self.im_width
        small = (np.abs(dx) <= fp.MAX_DX) & (np.abs(dy) <= fp.MAX_DY)
        codes = np.where(small, fp.code(dx, dy), 0)
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
        fast = small & same & step_ok & long_lane
        if not fp.usable:
            fast[:] = False
        return fast, codes

    def draw(self, polyline: np.ndarray) -> LaneMask | None:
        """Draws one int polyline (official semantics); None when no pixel lands in the image."""
        pts = np.asarray(polyline).astype(np.int64).reshape(-1, 2)
        lanes = self.rasterize(pts, np.array([0, len(pts)]))
        return lanes.mask(0) if lanes.area[0] else None
