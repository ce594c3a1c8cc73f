"""Official LLAMAS segmentation metric (per-image, per-class approximate AP) and its PNG format.

The official evaluation (unsupervised_llamas `evaluation/segmentation_metrics.py::binary_approx_auc`
and `evaluate_segmentation.py`, DATASETS.md 2.6a) reads one 8-bit gray PNG per image and class,
scales it by 1/255 and sweeps 101 thresholds with `pred >= t`. It walks the precision/recall
points from (P=1, R=0), adds `(R_i - R_{i-1}) * P_{i-1}`, keeps the corner with the largest P*R
and averages every value over images. This module reproduces that result bit for bit, but
counts all thresholds at once from a histogram of "first threshold at which a pixel turns
positive" instead of making 101 passes over the image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

NUM_THRESHOLD_STEPS = 100

# The official loop computes `threshold = (num_steps - i) / num_steps` from Python ints, i.e.
# the correctly rounded float64 of (100 - i) / 100. Deriving the values the same way keeps them
# bit-identical; a running `1.0 - 0.01 * i` would not (e.g. it gives 0.9299999999999999 for 0.93).
THRESHOLDS_DESC: np.ndarray = np.array(
    [(NUM_THRESHOLD_STEPS - i) / NUM_THRESHOLD_STEPS for i in range(NUM_THRESHOLD_STEPS + 1)],
    dtype=np.float64,
)
_THRESHOLDS_ASC = THRESHOLDS_DESC[::-1].copy()
# Step index meaning "positive at no threshold" (one past the last step, 0-based).
_NEVER = NUM_THRESHOLD_STEPS + 1


def _first_positive_step(pred: np.ndarray) -> np.ndarray:
    """Index i (0..100) of the first descending threshold with pred >= t_i; 101 if none.

    pred >= t_i  <=>  #(ascending thresholds <= pred) > 100 - i, and that count is exactly
    `searchsorted(asc, pred, side="right")`, so the comparison is the official float64 one.
    """
    pred = np.asarray(pred, dtype=np.float64)
    count_le = np.searchsorted(_THRESHOLDS_ASC, pred, side="right")
    step = _NEVER - count_le
    # searchsorted sorts nan last (positive everywhere), but `nan >= t` is False in the official
    # loop, so nan pixels never turn positive.
    nan = np.isnan(pred)
    if nan.any():
        step = np.where(nan, _NEVER, step)
    return step


# First positive step of every 8-bit level v, read back as v / 255 like the official
# `cv2.imread(...).astype(float) / 255`.
_LEVEL_TO_STEP: np.ndarray = _first_positive_step(np.arange(256, dtype=np.float64) / 255.0)


def _auc_from_steps(step: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Official P/R sweep from per-pixel first-positive steps and a bool target (same shape)."""
    n_bins = _NEVER + 1
    hist = np.bincount(
        (step.astype(np.int64) + n_bins * target.astype(np.int64)).ravel(), minlength=2 * n_bins
    )
    neg_hist, pos_hist = hist[:n_bins], hist[n_bins:]
    num_pos = int(pos_hist.sum())
    # tp/fp at threshold i = pixels of the class that turned positive at a step <= i.
    tp_i = np.cumsum(pos_hist)[:_NEVER]
    fp_i = np.cumsum(neg_hist)[:_NEVER]
    fn_i = num_pos - tp_i

    # Python floats mirror the official scalar arithmetic, including the summation order.
    auc = 0.0
    prev_precision, prev_recall = 1.0, 0.0
    corner_pr, corner_p, corner_r, corner_t = 0.0, 0.0, 0.0, 0.0
    for i in range(_NEVER):
        tp, fp, fn = int(tp_i[i]), int(fp_i[i]), int(fn_i[i])
        precision = 0.0 if tp + fp == 0 else tp / (tp + fp)
        recall = 0.0 if tp + fn == 0 else tp / (tp + fn)
        # Strict ">" as in the official code: the highest threshold wins ties.
        if precision * recall > corner_pr:
            corner_pr = precision * recall
            corner_p, corner_r, corner_t = precision, recall, float(THRESHOLDS_DESC[i])
        auc += (recall - prev_recall) * prev_precision
        prev_precision, prev_recall = precision, recall
    return {"auc": auc, "precision": corner_p, "recall": corner_r, "threshold": corner_t}


def binary_approx_auc(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Official LLAMAS per-image approximate AP ("AUC") and best precision/recall corner.

    Thresholds are t_i = (100 - i) / 100 for i = 0..100 (float64, bit-identical to the official
    loop) and a pixel is positive when `float64(pred) >= t_i`. Per threshold:
    tp = #(target & positive), fp = #(~target & positive), fn = #(target & ~positive);
    precision = tp / (tp + fp) or 0, recall = tp / (tp + fn) or 0. Starting from (P=1, R=0),
    auc += (R_i - R_{i-1}) * P_{i-1}. The corner is the first (highest-threshold) point with the
    largest P * R > 0, or (0, 0, 0) if there is none. An image without positives scores auc = 0.

    `pred` is cast to float64 before comparing, as the official code compares float64 values
    read from PNG; a float32 array compared with a Python float would be compared in float32
    under numpy 2 and could differ at the threshold boundaries. nan never counts as positive.

    Args:
      pred: predicted probabilities, any shape, nominally in [0, 1].
      target: same shape, values in {0, 1} (bool or integer).

    Returns:
      {"auc", "precision", "recall", "threshold"} as Python floats.

    Raises:
      ValueError: on a shape mismatch or target values other than 0 and 1.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(
            f"binary_approx_auc: pred shape {pred.shape} != target shape {target.shape}"
        )
    if target.dtype != np.bool_:
        # The official tp counts `pred == label` with a 0/1 pred, so any other label value
        # would silently change the definition; insist on a binary target.
        if np.any((target != 0) & (target != 1)):
            raise ValueError("binary_approx_auc: target must contain only 0 and 1")
        target = target != 0
    return _auc_from_steps(_first_positive_step(pred), target)


ROUNDING_MODES = ("truncate", "round")


def quantize_probabilities(probs: np.ndarray, rounding: str = "truncate") -> np.ndarray:
    """Converts probabilities to 8-bit PNG levels: uint8(clip(p, 0, 1) * 255).

    "truncate" (default) is `astype(np.uint8)` of the product; "round" rounds to nearest (half
    to even), which is what `cv2.imwrite` of a float image does. The choice matters for the
    official AP: the recall gained at the first threshold that has any positive pixel is
    weighted by the precision of the threshold before, which is 0 when no pixel passed it, and
    only the start point (P=1 before t=1.00) escapes that. Under "truncate" only p == 1.0 reaches
    level 255 (t=1.00); under "round" every p >= 254.5/255 does. The product is taken in the
    input's float dtype; writer and accumulator both call this function, so the in-memory metric
    equals what the official script reads back from our PNGs.

    Args:
      probs: float array of probabilities, any shape.
      rounding: "truncate" or "round".

    Returns:
      uint8 array of the same shape.

    Raises:
      ValueError: if `probs` is not floating point, contains nan/inf, or `rounding` is unknown.
    """
    if rounding not in ROUNDING_MODES:
        raise ValueError(
            f"quantize_probabilities: rounding must be one of {ROUNDING_MODES}, got {rounding!r}"
        )
    probs = np.asarray(probs)
    if "float" in probs.dtype.name and not np.issubdtype(probs.dtype, np.floating):
        # ml_dtypes floats (bfloat16 from jax) are not numpy floating subtypes.
        probs = probs.astype(np.float32)
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"quantize_probabilities: expected float probabilities, got {probs.dtype}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("quantize_probabilities: probabilities contain nan or inf")
    scaled = np.clip(probs, 0.0, 1.0) * 255
    if rounding == "round":
        scaled = np.rint(scaled)
    return scaled.astype(np.uint8)


_METRICS = ("auc", "precision", "recall", "threshold")


class PixelAPAccumulator:
    """Mean over images of the official per-image, per-class LLAMAS AP.

    Class k of an image is scored with `binary_approx_auc(prob[..., k], label == k)`. Pixels
    labelled `ignore_label` are, by default, "not class k" for every k (negatives), which is what
    the official metric does with every pixel that is not of the class; the official rendered
    LLAMAS labels have no ignore region, so this only matters for labels from other sources.
    With `exclude_ignore=True` those pixels are left out of tp/fp/fn instead.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str],
        *,
        quantize: bool = True,
        rounding: str = "truncate",
        ignore_label: int | None = 255,
        exclude_ignore: bool = False,
    ) -> None:
        """Creates an empty accumulator.

        Args:
          num_classes: number of classes K; class 0 is background, 1..K-1 are lanes.
          class_names: K names, used as keys of the result.
          quantize: score `uint8(p * 255) / 255` like the official PNG round trip (default);
            False scores the float probabilities directly.
          rounding: "truncate" or "round", see `quantize_probabilities`.
          ignore_label: label value of ignored pixels (None: labels must all be in [0, K)).
          exclude_ignore: drop ignored pixels from the counts instead of treating them as
            negatives.

        Raises:
          ValueError: if `num_classes` < 2 or `class_names` does not have K unique entries.
        """
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"PixelAPAccumulator: num_classes must be an int >= 2, got {num_classes!r}"
            )
        names = [str(n) for n in class_names]
        if len(names) != num_classes or len(set(names)) != num_classes:
            raise ValueError(
                f"PixelAPAccumulator: class_names must be {num_classes} unique names, got {names}"
            )
        self.num_classes = num_classes
        self.class_names = names
        if rounding not in ROUNDING_MODES:
            raise ValueError(
                f"PixelAPAccumulator: rounding must be one of {ROUNDING_MODES}, got {rounding!r}"
            )
        self.quantize = quantize
        self.rounding = rounding
        self.ignore_label = ignore_label
        self.exclude_ignore = exclude_ignore
        self.num_images = 0
        self._sums = [dict.fromkeys(_METRICS, 0.0) for _ in range(num_classes)]

    def update(
        self,
        probs_bhwk: np.ndarray,
        labels_bhw: np.ndarray,
        mask_b: np.ndarray | None = None,
    ) -> None:
        """Adds the images of one batch.

        Args:
          probs_bhwk: (B, H, W, K) class probabilities (softmax output) at label resolution.
          labels_bhw: (B, H, W) integer labels in [0, K) or `ignore_label`.
          mask_b: optional bool (B,); False marks padding examples, which are skipped.

        Raises:
          ValueError: on shape mismatches or label values outside [0, K) other than the ignore
            label.
        """
        probs_bhwk = np.asarray(probs_bhwk)
        labels_bhw = np.asarray(labels_bhw)
        k_cls = self.num_classes
        if probs_bhwk.ndim != 4 or probs_bhwk.shape[-1] != k_cls:
            raise ValueError(
                f"PixelAPAccumulator.update: probs_bhwk must be (B, H, W, {k_cls}), "
                f"got {probs_bhwk.shape}"
            )
        if labels_bhw.shape != probs_bhwk.shape[:3]:
            raise ValueError(
                f"PixelAPAccumulator.update: labels_bhw shape {labels_bhw.shape} != "
                f"probs_bhwk spatial shape {probs_bhwk.shape[:3]}"
            )
        if mask_b is None:
            mask_b = np.ones(labels_bhw.shape[0], dtype=bool)
        mask_b = np.asarray(mask_b).astype(bool)
        if mask_b.shape != labels_bhw.shape[:1]:
            raise ValueError(
                f"PixelAPAccumulator.update: mask_b must have shape {labels_bhw.shape[:1]}, "
                f"got {mask_b.shape}"
            )
        ignore_hw_all = (
            labels_bhw == self.ignore_label
            if self.ignore_label is not None
            else np.zeros(labels_bhw.shape, bool)
        )
        bad = ~ignore_hw_all & ((labels_bhw < 0) | (labels_bhw >= k_cls))
        if np.any(bad & mask_b[:, None, None]):
            raise ValueError(
                f"PixelAPAccumulator.update: labels_bhw has values outside [0, {k_cls}) that are "
                f"not ignore_label={self.ignore_label}: {np.unique(labels_bhw[bad])[:10]}"
            )
        if self.quantize:
            # Quantise only the real examples: padding rows may hold garbage (nan).
            levels_bhwk = np.zeros(probs_bhwk.shape, np.uint8)
            levels_bhwk[mask_b] = quantize_probabilities(probs_bhwk[mask_b], self.rounding)

        for b in np.flatnonzero(mask_b):
            ignore_hw = ignore_hw_all[b]
            drop_ignore = self.exclude_ignore and bool(ignore_hw.any())
            for k in range(k_cls):
                if self.quantize:
                    step_hw = _LEVEL_TO_STEP[levels_bhwk[b, :, :, k]]
                else:
                    step_hw = _first_positive_step(probs_bhwk[b, :, :, k])
                target_hw = labels_bhw[b] == k
                if drop_ignore:
                    # Never positive and not a target: contributes to none of tp/fp/fn.
                    step_hw = np.where(ignore_hw, _NEVER, step_hw)
                res = _auc_from_steps(step_hw, target_hw)
                sums = self._sums[k]
                for m in _METRICS:
                    sums[m] += res[m]
            self.num_images += 1

    def result(self) -> dict[str, Any]:
        """Per-class means over images and the mean AP.

        Returns:
          {"per_class": {name: {"auc", "precision", "recall", "threshold"}},
           "map": mean auc over lane classes 1..K-1, "map_all": mean auc over all K classes
           (background included; which one the leaderboard reports is unconfirmed),
           "num_images": int}.

        Raises:
          RuntimeError: if no image has been added.
        """
        if self.num_images == 0:
            raise RuntimeError("PixelAPAccumulator.result: no images were added (all masked?)")
        per_class = {
            name: {m: self._sums[k][m] / self.num_images for m in _METRICS}
            for k, name in enumerate(self.class_names)
        }
        aucs = [per_class[name]["auc"] for name in self.class_names]
        return {
            "per_class": per_class,
            "map": float(sum(aucs[1:]) / (self.num_classes - 1)),
            "map_all": float(sum(aucs) / self.num_classes),
            "num_images": self.num_images,
        }


def _split_key(key: str) -> tuple[str, str]:
    """Validates "<recording>/<ts>" (a trailing ".json" is tolerated) and splits it."""
    if not isinstance(key, str):
        raise ValueError(f"write_llamas_probability_pngs: key must be a str, got {type(key)}")
    base = key.replace("\\", "/")
    if base.endswith(".json"):
        base = base[: -len(".json")]
    parts = base.split("/")
    if len(parts) != 2 or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"write_llamas_probability_pngs: key must be '<recording>/<ts>', got {key!r}"
        )
    return parts[0], parts[1]


def write_llamas_probability_pngs(
    out_dir: str | os.PathLike[str],
    key: str,
    probs_hwk: np.ndarray,
    class_ids: Sequence[int] | None = None,
    rounding: str = "truncate",
) -> list[str]:
    """Writes one image's probabilities in the official inference-folder layout.

    Files are `<out_dir>/<recording>/<ts>.json_<k>.png`, 8-bit single-channel with the levels
    of `quantize_probabilities(p, rounding)`, i.e. uint8(clip(p, 0, 1) * 255). The official
    script expects full resolution (717 x 1276); resizing is the caller's job.

    Args:
      out_dir: inference folder root.
      key: "<recording>/<ts>" (the label base without ".json"; a trailing ".json" is accepted).
      probs_hwk: (H, W, K) probabilities.
      class_ids: channels k to write (default all K); e.g. [1] for the binary task.
      rounding: "truncate" or "round"; use the same as the `PixelAPAccumulator`.

    Returns:
      The written paths, in `class_ids` order.

    Raises:
      ValueError: on a malformed key, a non-(H, W, K) array or a class id out of range.
      OSError: if OpenCV fails to write a file.
    """
    recording, ts = _split_key(key)
    probs_hwk = np.asarray(probs_hwk)
    if probs_hwk.ndim != 3:
        raise ValueError(
            f"write_llamas_probability_pngs: probs_hwk must be (H, W, K), got {probs_hwk.shape}"
        )
    num_k = probs_hwk.shape[-1]
    ids = list(range(num_k)) if class_ids is None else [int(k) for k in class_ids]
    if any(k < 0 or k >= num_k for k in ids):
        raise ValueError(
            f"write_llamas_probability_pngs: class_ids {ids} out of range for K={num_k}"
        )
    folder = os.path.join(os.fspath(out_dir), recording)
    os.makedirs(folder, exist_ok=True)
    levels_hwk = quantize_probabilities(probs_hwk, rounding)
    paths = []
    for k in ids:
        path = os.path.join(folder, f"{ts}.json_{k}.png")
        if not cv2.imwrite(path, np.ascontiguousarray(levels_hwk[:, :, k])):
            raise OSError(f"write_llamas_probability_pngs: cv2.imwrite failed for {path}")
        paths.append(path)
    return paths
