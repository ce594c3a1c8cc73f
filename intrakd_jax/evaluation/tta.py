"""Multi-scale plus corner-crop test-time augmentation of the IntRA-KD ApolloScape test script.

IntRA-KD `test_erfnet_multi_scale.py` / `test_pspnet_multi_scale.py` (DATASETS.md 3.5), for the
cropped 1010 x 3384 test image:

1. resize the image with `cv2.INTER_LINEAR` to each scale (W, H) of (1692, 505), (1861, 556),
   (1624, 485), (2030, 606);
2. run the network on four corner crops of (test_size // 3) x test_size at every scale (top-left,
   top-right, bottom-left, bottom-right), add the outputs into a map of the scale's size and
   divide by the count of crops covering each pixel;
3. resize every scale's map to the first scale's size with `cv2.INTER_LINEAR` and average.

The released scripts use test_size 1440 (ERFNet, crops 480 x 1440) and 1410 (PSPNet, 470 x 1410)
and average the raw network output (logits). One quirk: their loop adds only scales 2..4 into
the sum (the first scale has no `else` branch) and still divides by 4, so the released numbers
come from three scales; `drop_first_scale=True` reproduces that, the default averages all
scales as the scripts and the paper describe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

# (height, width) of the four official test scales, first = output size.
OFFICIAL_SCALES_HW: tuple[tuple[int, int], ...] = (
    (505, 1692),
    (556, 1861),
    (485, 1624),
    (606, 2030),
)
ERFNET_TEST_SIZE = 1440
PSPNET_TEST_SIZE = 1410


def official_crop_hw(test_size: int) -> tuple[int, int]:
    """Crop (height, width) = (int(test_size / 3), test_size) of the official test scripts."""
    if not isinstance(test_size, int) or test_size < 3:
        raise ValueError(f"official_crop_hw: test_size must be an int >= 3, got {test_size!r}")
    return int(test_size / 3), test_size


def corner_offsets(scale_hw: Sequence[int], crop_hw: Sequence[int]) -> list[tuple[int, int]]:
    """(top, left) of the four corner crops, in the official order TL, TR, BL, BR."""
    h, w = int(scale_hw[0]), int(scale_hw[1])
    ch, cw = int(crop_hw[0]), int(crop_hw[1])
    return [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)]


def _resize(arr_hwc: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if arr_hwc.shape[:2] == hw:
        return arr_hwc
    out = cv2.resize(arr_hwc, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    # cv2 drops a trailing channel axis of size 1.
    return out.reshape(hw + arr_hwc.shape[2:])


def _checked_geometry(
    image_hwc: np.ndarray, scales: Sequence[Sequence[int]], crop_hw: Sequence[int]
) -> tuple[np.ndarray, list[tuple[int, int]], tuple[int, int]]:
    """Validates the `tta_probs` inputs; returns the image, the scales and the crop as ints."""
    image = np.asarray(image_hwc)
    if image.ndim != 3:
        raise ValueError(f"tta_probs: image_hwc must be (H, W, C), got shape {image.shape}")
    scale_list = [(int(s[0]), int(s[1])) for s in scales]
    if not scale_list or any(h <= 0 or w <= 0 for h, w in scale_list):
        raise ValueError(f"tta_probs: scales must be positive (height, width) pairs, got {scales}")
    ch, cw = int(crop_hw[0]), int(crop_hw[1])
    if ch <= 0 or cw <= 0:
        raise ValueError(f"tta_probs: crop_hw must be positive, got {crop_hw}")
    for h, w in scale_list:
        if ch > h or cw > w:
            # The official slicing would silently take a smaller, wrapped crop here.
            raise ValueError(f"tta_probs: crop {(ch, cw)} is larger than the scale {(h, w)}")
        if 2 * ch < h or 2 * cw < w:
            # Four corner crops leave a gap in the middle; the official count map would be 0.
            raise ValueError(
                f"tta_probs: four {(ch, cw)} corner crops do not cover the scale {(h, w)} "
                "(need crop >= half the scale in both directions)"
            )
    return image, scale_list, (ch, cw)


def tta_probs(
    predict_fn: Callable[[np.ndarray], Any],
    image_hwc: np.ndarray,
    scales: Sequence[Sequence[int]] = OFFICIAL_SCALES_HW,
    crop_hw: Sequence[int] = (480, 1440),
    *,
    out_hw: Sequence[int] | None = None,
    drop_first_scale: bool = False,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Averages `predict_fn` over scales and four corner crops per scale (official ApolloScape TTA).

    For each scale (h, w): the image is resized to (h, w) with `cv2.INTER_LINEAR` (in its own
    dtype, so a uint8 image is resized like the official cv2 loader does), the four corner
    crops of `crop_hw` (TL, TR, BL, BR) go to `predict_fn` as one batch, and their outputs are
    summed into an (h, w, K) map and divided by the per-pixel crop count. Each scale's map is
    resized to `out_hw` with `cv2.INTER_LINEAR` and the maps are averaged.

    Averaging is linear, so `predict_fn` may return probabilities or logits; the official
    scripts average the raw network output (logits).

    Args:
      predict_fn: maps a (4, crop_h, crop_w, C) batch to (4, crop_h, crop_w, K) scores (numpy
        or jax array); the caller jits it. All calls share one input shape.
      image_hwc: (H, W, C) image, e.g. rows 1700: of an ApolloScape frame (uint8 or float).
      scales: (height, width) of every scale; default the four official scales.
      crop_hw: crop (height, width), between half and all of every scale's size; official
        `official_crop_hw(1440)` = (480, 1440) for ERFNet.
      out_hw: output (height, width); default the first scale (the official 505 x 1692).
      drop_first_scale: reproduce the released scripts, which leave the first scale out of
        the sum but still divide by the number of scales.
      dtype: accumulation dtype.

    Returns:
      (out_h, out_w, K) averaged scores in `dtype`.

    Raises:
      ValueError: bad shapes, a crop larger than a scale, or a `predict_fn` output of the wrong
        shape.
    """
    image, scale_list, (ch, cw) = _checked_geometry(image_hwc, scales, crop_hw)
    target_hw = scale_list[0] if out_hw is None else (int(out_hw[0]), int(out_hw[1]))

    total_hwk = None
    for index, (h, w) in enumerate(scale_list):
        scaled = _resize(image, (h, w))
        offsets = corner_offsets((h, w), (ch, cw))
        batch = np.stack([scaled[t : t + ch, x : x + cw] for t, x in offsets])
        out = np.asarray(predict_fn(batch))
        if out.ndim != 4 or out.shape[:3] != (4, ch, cw):
            raise ValueError(
                f"tta_probs: predict_fn must return (4, {ch}, {cw}, K) for a {batch.shape} "
                f"batch, got {out.shape}"
            )
        if index == 0 and drop_first_scale:
            continue
        sum_hwk = np.zeros((h, w, out.shape[-1]), dtype=dtype)
        count_hw1 = np.zeros((h, w, 1), dtype=dtype)
        for (t, x), crop_out in zip(offsets, out, strict=True):
            sum_hwk[t : t + ch, x : x + cw] += crop_out.astype(dtype)
            count_hw1[t : t + ch, x : x + cw] += 1
        # Every pixel is covered (checked above), so the count is >= 1.
        scale_hwk = _resize(sum_hwk / count_hw1, target_hw)
        total_hwk = scale_hwk if total_hwk is None else total_hwk + scale_hwk
    if total_hwk is None:
        raise ValueError("tta_probs: drop_first_scale=True needs at least two scales")
    return (total_hwk / len(scale_list)).astype(dtype, copy=False)
