"""CULane probability maps -> lanes (the official MATLAB ``prob2lines``).

The official pipeline (SCNN / ERFNet-CULane ``tools/prob2lines``, DATASETS.md section 1.8) turns,
per test image, four lane-probability maps in crop space (976x208 for rows 240..589 of the
1640x590 frame) and four existence flags into at most four lanes of 18 points:

* for each existing lane j and each of 18 sample rows i = 1..18 (image row ``590 - (i-1)*20``),
  read map row ``round_half_away(208 - (i-1)*20/350*208)`` (1-based), take the first arg-max
  column ``id`` (1-based) and keep it when ``max/255 > 0.3``;
* keep the lane when more than one of the 18 points is valid;
* write ``x = round_half_away(id*1640/976) - 1`` and ``y = 590 - (i-1)*20 - 1`` as ``"%d %d "`` per
  point, one lane per line, bottom point first.

MATLAB's ``uint16()`` rounds halves away from zero (``id = 61`` gives exactly 102.5 -> 103), which
is not numpy's round-half-to-even; this module reproduces MATLAB's rule. Everything is vectorised
over lanes and rows. The ``.lines.txt`` writer (``format_lines``, ``write_lines_txt``,
``lines_txt_path``) is ``data_pipelines.formats.lines_txt``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

# Official constants (ERFNet-CULane ``erf_settings.py`` / ``prob2lines/main.m``).
CULANE_IMAGE_WIDTH = 1640
CULANE_IMAGE_HEIGHT = 590
CULANE_CROP_TOP = 240
NUM_POINTS = 18
ROW_STEP = 20
SCORE_THRESHOLD = 0.3
EXIST_THRESHOLD = 0.5


def _round_half_away(values: np.ndarray) -> np.ndarray:
    """MATLAB ``uint16``/``round`` rounding (halves away from zero) for non-negative floats."""
    return np.floor(values + 0.5)


def sample_rows(
    map_height: int,
    *,
    image_height: int = CULANE_IMAGE_HEIGHT,
    crop_top: int = CULANE_CROP_TOP,
    num_points: int = NUM_POINTS,
    row_step: int = ROW_STEP,
) -> tuple[np.ndarray, np.ndarray]:
    """The map rows read and the image rows written by the official algorithm.

    Args:
      map_height: height of the probability map (208 for the ERFNet-CULane 976x208 maps).
      image_height: height of the full image (590).
      crop_top: rows cut from the top of the image before the network (240).
      num_points: number of sample rows (18).
      row_step: image rows between samples (20).

    Returns:
      ``(map_rows, image_rows)``, int64 arrays of shape (num_points,): 0-based map rows and the
      image y coordinates written to ``.lines.txt`` (already minus 1, as MATLAB writes them).

    Raises:
      ValueError: when a sample row falls outside the map or the image.
    """
    crop_height = image_height - crop_top
    if map_height < 1 or crop_height < 1 or num_points < 1 or row_step < 1:
        raise ValueError(
            f"sample_rows: expected positive sizes, got map_height={map_height}, "
            f"image_height={image_height}, crop_top={crop_top}, num_points={num_points}, "
            f"row_step={row_step}"
        )
    # Evaluate in MATLAB's order, left to right in float64: (i-1)*20/350*208.
    map_rows_1 = np.array(
        [
            math.floor(map_height - (i - 1) * row_step / crop_height * map_height + 0.5)
            for i in range(1, num_points + 1)
        ],
        dtype=np.int64,
    )
    if map_rows_1.min() < 1 or map_rows_1.max() > map_height:
        raise ValueError(
            f"sample_rows: num_points={num_points} x row_step={row_step} reaches outside the "
            f"{map_height}-row map (rows {map_rows_1.min()}..{map_rows_1.max()}, 1-based)"
        )
    image_rows = image_height - np.arange(num_points, dtype=np.int64) * row_step - 1
    if image_rows.min() < 0:
        raise ValueError(
            f"sample_rows: num_points={num_points} x row_step={row_step} leaves the "
            f"{image_height}-row image"
        )
    return map_rows_1 - 1, image_rows


def prob2lines(
    prob_maps: np.ndarray,
    exist: Sequence[float] | np.ndarray,
    *,
    image_width: int = CULANE_IMAGE_WIDTH,
    image_height: int = CULANE_IMAGE_HEIGHT,
    crop_top: int = CULANE_CROP_TOP,
    num_points: int = NUM_POINTS,
    row_step: int = ROW_STEP,
    threshold: float = SCORE_THRESHOLD,
    exist_threshold: float = EXIST_THRESHOLD,
) -> list[np.ndarray]:
    """Lanes from per-lane probability maps and existence scores (official MATLAB algorithm).

    Args:
      prob_maps: (num_lanes, H, W) maps in crop space, lane slots left to right (the 4
        non-background softmax channels). ``uint8`` maps are the official ``*_avg.png`` scores
        (0..255, compared as ``value/255 > threshold``); float maps are probabilities in [0, 1]
        compared as ``value > threshold``. To reproduce official numbers bit for bit pass the
        uint8 scores (see `average_score_maps`).
      exist: (num_lanes,) existence scores (a lane exists when ``score > exist_threshold``) or
        bools.
      image_width: width of the full image (1640).
      image_height: height of the full image (590).
      crop_top: rows cut from the top before the network (240); the maps cover the rest.
      num_points: number of sample rows (18).
      row_step: image rows between sample rows (20).
      threshold: minimum score of a valid point (0.3).
      exist_threshold: existence threshold for float scores (0.5).

    Returns:
      A list with one int64 array of shape (K, 2) of ``(x, y)`` image coordinates per lane slot,
      bottom point first; K = 0 for a slot that does not exist or has fewer than 2 valid points.
      `write_lines_txt` skips the empty slots, as the official script does.

    Raises:
      ValueError: for maps that are not 3-D, or an ``exist`` of the wrong length.
    """
    maps_lhw = np.asarray(prob_maps)
    if maps_lhw.ndim != 3:
        raise ValueError(
            f"prob2lines: prob_maps must be (num_lanes, H, W), got shape {maps_lhw.shape}"
        )
    num_lanes, map_h, map_w = maps_lhw.shape
    exist_arr = np.asarray(exist)
    if exist_arr.shape != (num_lanes,):
        raise ValueError(
            f"prob2lines: exist must have shape ({num_lanes},) to match prob_maps, "
            f"got {exist_arr.shape}"
        )
    exists_l = exist_arr if exist_arr.dtype == bool else exist_arr > exist_threshold

    map_rows, image_rows = sample_rows(
        map_h,
        image_height=image_height,
        crop_top=crop_top,
        num_points=num_points,
        row_step=row_step,
    )
    rows_lpw = maps_lhw[:, map_rows, :]
    cols_lp = np.argmax(rows_lpw, axis=2)  # first maximum, like MATLAB's max()
    best_lp = np.take_along_axis(rows_lpw, cols_lp[..., None], axis=2)[..., 0]
    if maps_lhw.dtype == np.uint8:
        valid_lp = best_lp.astype(np.float64) / 255.0 > threshold
    else:
        valid_lp = best_lp.astype(np.float64) > threshold
    keep_l = exists_l & (valid_lp.sum(axis=1) > 1)
    # MATLAB: uint16(id*1640/976) - 1 with a 1-based id, evaluated as (id*1640)/976.
    xs_lp = _round_half_away((cols_lp + 1).astype(np.float64) * image_width / map_w) - 1
    lanes = []
    for lane in range(num_lanes):
        if not keep_l[lane]:
            lanes.append(np.zeros((0, 2), np.int64))
            continue
        sel = valid_lp[lane]
        lanes.append(np.stack([xs_lp[lane, sel].astype(np.int64), image_rows[sel]], axis=1))
    return lanes


def average_score_maps(probs_lhw: np.ndarray, kernel: int = 9) -> np.ndarray:
    """The official ``*_avg.png`` scores from softmax probabilities.

    The reference test script stores ``blur(int(prob * 255), 9x9)`` as an 8-bit PNG. This truncates
    to integers, applies OpenCV's normalised box filter (reflect-101 border) and rounds to uint8.

    Args:
      probs_lhw: (num_lanes, H, W) float probabilities in [0, 1].
      kernel: box size (9).

    Returns:
      (num_lanes, H, W) uint8 scores for `prob2lines`.
    """
    probs = np.asarray(probs_lhw)
    if probs.ndim != 3:
        raise ValueError(f"average_score_maps: expected (num_lanes, H, W), got {probs.shape}")
    scores = np.trunc(probs.astype(np.float64) * 255.0).astype(np.float32)
    out = np.empty(probs.shape, np.uint8)
    for lane in range(probs.shape[0]):
        blurred = cv2.blur(scores[lane], (kernel, kernel))
        out[lane] = np.clip(np.rint(blurred), 0, 255).astype(np.uint8)
    return out
