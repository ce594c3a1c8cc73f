"""OpenCV's thick-line footprints for the CULane rasterizer, measured once with OpenCV itself.

`culane_raster.LaneRasterizer` assembles most of a lane's pixels from these shapes instead of
calling ``cv::line`` per segment; everything here is measured by drawing with OpenCV, so the
assembled pixels are OpenCV's.
"""

from __future__ import annotations

import cv2
import numpy as np


class Footprints:
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


_FOOTPRINTS: dict[int, Footprints] = {}


def footprints(width: int) -> Footprints:
    """The `Footprints` of one thickness, measured on first use and kept for the process."""
    fp = _FOOTPRINTS.get(width)
    if fp is None:
        fp = _FOOTPRINTS[width] = Footprints(width)
    return fp
