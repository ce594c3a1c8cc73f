"""Official LLAMAS segmentation metric (per-image, per-class approximate AP) and its PNG format.

The official evaluation (unsupervised_llamas `evaluation/segmentation_metrics.py::binary_approx_auc`
and `evaluate_segmentation.py`, DATASETS.md 2.6a) reads one 8-bit gray PNG per image and class,
scales it by 1/255 and sweeps 101 thresholds with `pred >= t`. It walks the precision/recall
points from (P=1, R=0), adds `(R_i - R_{i-1}) * P_{i-1}`, keeps the corner with the largest P*R
and averages every value over images. This module reproduces that result bit for bit, but
counts all thresholds at once from a histogram of "first threshold at which a pixel turns
positive" instead of making 101 passes over the image.

Inputs of the official script: for every label ``<labels>/<recording>/<ts>.json`` (all ``.json``
files under the label folder) the inference folder holds ``<recording>/<ts>.json_<k>.png``:
k = 0..4 (background, l1, l0, r0, r1) with ``--multi_class``, k = 1 alone for the binary task,
at 717 x 1276. `write_llamas_probability_pngs` writes that layout, `evaluate_pixel_ap` scores it
against the labels rendered from the json files, and the command line does the same::

  python -m intrakd_jax.evaluation.llamas --labels LLAMAS/labels/valid --predictions DIR \
      [--multi_class] [--workers N] [--output result.json]

It prints the inference folder and the per-class means keyed by class id, as the official script
does (``pprint``), then the mean AP over the lane classes. A missing or unreadable prediction
PNG stops it with the file's name (the official script fails there too).
"""

from __future__ import annotations

import argparse
import os
import pprint
import sys
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from data_pipelines.formats.llamas import (
    BINARY_NAMES,
    MULTICLASS_NAMES,
    read_json,
    render_binary_label,
    render_multiclass_label,
)
from intrakd_jax.evaluation import cli, pool

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
    script expects full resolution (717 x 1276); resizing is the caller's job. By default the
    maps the official script reads are written (`official_class_ids`): all K for multi-class,
    background included, and k = 1 alone for a binary (K = 2) model.

    Args:
      out_dir: inference folder root.
      key: "<recording>/<ts>" (the label base without ".json"; a trailing ".json" is accepted).
      probs_hwk: (H, W, K) probabilities.
      class_ids: channels k to write (default `official_class_ids(K)`).
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
    ids = official_class_ids(num_k) if class_ids is None else [int(k) for k in class_ids]
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


# ----------------------------------------------------------------------------------------------
# Folder evaluation: the official evaluate_segmentation.py inputs.


def official_class_ids(num_classes: int) -> list[int]:
    """The ``.json_<k>.png`` maps the official script reads for a model of K classes.

    Binary (K = 2): [1]. Multi-class: every class, background included (0..4 for LLAMAS: the
    official ``--multi_class`` loop reads ``json_0`` to ``json_4``).
    """
    if num_classes < 2:
        raise ValueError(f"official_class_ids: need at least 2 classes, got {num_classes}")
    return [1] if num_classes == 2 else list(range(num_classes))


def label_base(label_path: str | os.PathLike[str]) -> str:
    """Official `get_label_base`: the last two path components, `<recording>/<ts>.json`."""
    parts = os.fspath(label_path).replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def list_label_files(label_dir: str | os.PathLike[str]) -> list[str]:
    """Every ``.json`` file under a label folder (official `get_files_from_folder`), sorted.

    Raises:
      FileNotFoundError: the folder does not exist or holds no ``.json`` file.
    """
    root = os.fspath(label_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"LLAMAS label folder {root!r} does not exist "
            "(expected labels/<split> with <recording>/<ts>.json files)"
        )
    paths = []
    for dirpath, _, files in os.walk(root):
        paths.extend(os.path.join(dirpath, f) for f in files if f.endswith(".json"))
    if not paths:
        raise FileNotFoundError(f"no .json labels found under {root!r}")
    return sorted(paths)


def probability_png_path(
    pred_dir: str | os.PathLike[str], label_path: str | os.PathLike[str], class_id: int
) -> str:
    """``<pred_dir>/<recording>/<ts>.json_<k>.png``, the official name for one label and class."""
    return os.path.join(os.fspath(pred_dir), label_base(label_path)) + f"_{class_id}.png"


def read_probability_png(path: str, hw: Sequence[int]) -> np.ndarray:
    """The 8-bit levels the official script reads (``cv2.imread(path, IMREAD_GRAYSCALE)``).

    Raises:
      FileNotFoundError: the file is missing or OpenCV cannot read it.
      ValueError: its size differs from the label's (H, W).
    """
    levels = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if levels is None:
        raise FileNotFoundError(
            f"{path}: prediction PNG missing or unreadable (the official script reads "
            "<recording>/<ts>.json_<k>.png for every label and class)"
        )
    if levels.shape != tuple(hw):
        raise ValueError(
            f"{path}: prediction is {levels.shape[1]}x{levels.shape[0]} pixels, the label "
            f"{hw[1]}x{hw[0]} (write the maps at full resolution)"
        )
    return levels


def score_label(task: tuple[str, str, bool]) -> dict[int, dict[str, float]]:
    """Official per-image results of one label: ``(label_path, pred_dir, multi_class)``.

    Returns:
      {class id: {"auc", "precision", "recall", "threshold"}} for ids 0..4 (multi-class) or 1.
    """
    label_path, pred_dir, multi_class = task
    label = read_json(label_path)
    if multi_class:
        classes_hw = render_multiclass_label(label)
        targets = {k: classes_hw == k for k in range(len(MULTICLASS_NAMES))}
    else:
        targets = {1: render_binary_label(label) != 0}
    out = {}
    for k, target_hw in targets.items():
        levels_hw = read_probability_png(
            probability_png_path(pred_dir, label_path, k), target_hw.shape
        )
        out[k] = _auc_from_steps(_LEVEL_TO_STEP[levels_hw], target_hw)
    return out


def evaluate_pixel_ap(
    label_dir: str | os.PathLike[str],
    pred_dir: str | os.PathLike[str],
    *,
    multi_class: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """The official LLAMAS segmentation scores of an inference folder (``evaluate_set``).

    Every label under `label_dir` is rendered (official multi-class or binary label) and scored
    against its ``.json_<k>.png`` maps in `pred_dir`; each value is averaged over the images
    (summed in sorted label order).

    Args:
      label_dir: e.g. ``LLAMAS/labels/valid``.
      pred_dir: the inference folder, ``<recording>/<ts>.json_<k>.png``.
      multi_class: score k = 0..4 against the multi-class label (official ``--multi_class``);
        else k = 1 against the binary label.
      workers: processes (None: all CPU cores).

    Returns:
      {"per_class": {name: {"auc", "precision", "recall", "threshold"}}, "class_ids": {name: k},
      "map": mean AP over the lane classes (k >= 1), "map_all": mean over every scored class,
      "num_images": int, "multi_class": bool}.

    Raises:
      FileNotFoundError: no labels, or a prediction PNG is missing (named).
      ValueError: a prediction of the wrong size; LabelFormatError for a malformed label.
    """
    labels = list_label_files(label_dir)
    tasks = [(path, os.fspath(pred_dir), bool(multi_class)) for path in labels]
    per_image = pool.map_images(score_label, tasks, workers=workers, what="LLAMAS pixel AP images")
    names = MULTICLASS_NAMES if multi_class else BINARY_NAMES
    ids = list(per_image[0])
    per_class = {
        names[k]: {m: sum(res[k][m] for res in per_image) / len(per_image) for m in _METRICS}
        for k in ids
    }
    aucs = {k: per_class[names[k]]["auc"] for k in ids}
    lanes = [aucs[k] for k in ids if k > 0]
    return {
        "per_class": per_class,
        "class_ids": {names[k]: k for k in ids},
        "map": sum(lanes) / len(lanes),
        "map_all": sum(aucs.values()) / len(aucs),
        "num_images": len(per_image),
        "multi_class": bool(multi_class),
    }


# ----------------------------------------------------------------------------------------------
# Command line.


def add_folder_flags(parser: argparse.ArgumentParser, predictions_help: str) -> None:
    """``--labels`` (a LLAMAS label folder) and ``--predictions`` for the LLAMAS command lines."""
    parser.add_argument(
        "--labels", required=True, help="label folder searched for .json files, e.g. labels/valid"
    )
    parser.add_argument("--predictions", required=True, help=predictions_help)


def _build_parser() -> argparse.ArgumentParser:
    parser = cli.new_parser(
        "intrakd_jax.evaluation.llamas",
        "Official LLAMAS segmentation AP (evaluate_segmentation.py) of an inference folder.",
    )
    add_folder_flags(
        parser, "inference folder with <recording>/<ts>.json_<k>.png (official --inference_folder)"
    )
    parser.add_argument(
        "--multi_class",
        action="store_true",
        help="score json_0..4 against the multi-class labels (default: json_1, binary labels)",
    )
    return parser


def _run(args: argparse.Namespace) -> dict[str, Any]:
    cli.require_dir(args.labels, "--labels")
    cli.require_dir(args.predictions, "--predictions")
    result = evaluate_pixel_ap(
        args.labels, args.predictions, multi_class=args.multi_class, workers=args.workers
    )
    # The official script's printout: the folder, then {class id: means}.
    pprint.pprint(args.predictions)
    pprint.pprint({k: result["per_class"][name] for name, k in result["class_ids"].items()})
    print(f"mean AP over the lane classes: {result['map']:.6f} ({result['num_images']} images)")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (see `evaluation.cli`)."""
    return cli.run(_build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
