"""Confusion-matrix segmentation metrics: per-class IoU, mIoU, pixel accuracy, precision, recall.

numpy only. The counts come from `evaluation.device.confusion_matrix` (jax, on device, one batch
at a time) added up on the host in int64, or from any other (n, n) count matrix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else math.nan


def iou_from_confusion(conf: np.ndarray) -> dict[str, Any]:
    """Derives IoU, mIoU, pixel accuracy, precision and recall from a confusion matrix.

    Conventions (n = number of classes, TP_k = conf[k, k]):
    - iou[k] = TP_k / (TP_k + FP_k + FN_k); nan when class k appears in neither the ground truth
      nor the predictions. "miou" is the mean over the non-nan entries (nan if all are nan).
    - precision[k] = TP_k / (predicted as k); nan when k was never predicted.
    - recall[k] = TP_k / (ground truth k); nan when k is absent from the ground truth.
    - pixel_accuracy = trace / total; nan for an empty matrix.

    Args:
      conf: (n, n) non-negative counts, rows = ground truth, columns = prediction (any integer
        or float dtype; accumulate in int64 on the host).

    Returns:
      Dict with "iou", "precision", "recall" (lists of n Python floats), "miou",
      "pixel_accuracy" (Python floats) and "num_pixels" (Python int). nan stays nan; use
      `report.to_jsonable` (nan -> None) before serialising to JSON.

    Raises:
      ValueError: if `conf` is not a square 2-D matrix or has negative entries.
    """
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.shape[0] == 0:
        raise ValueError(
            f"iou_from_confusion: conf must be a non-empty (n, n) matrix, got {conf.shape}"
        )
    if np.any(conf < 0):
        raise ValueError("iou_from_confusion: conf has negative counts")
    # float64 is exact for integer counts below 2**53.
    conf64 = conf.astype(np.float64)
    tp_k = np.diag(conf64)
    gt_k = conf64.sum(axis=1)
    pred_k = conf64.sum(axis=0)
    union_k = gt_k + pred_k - tp_k
    iou = [_ratio(t, u) for t, u in zip(tp_k, union_k, strict=True)]
    present = [v for v in iou if not math.isnan(v)]
    total = conf64.sum()
    return {
        "iou": iou,
        # Mean by hand: np.nanmean warns (an error under pytest) when every entry is nan.
        "miou": float(sum(present) / len(present)) if present else math.nan,
        "pixel_accuracy": _ratio(tp_k.sum(), total),
        "precision": [_ratio(t, p) for t, p in zip(tp_k, pred_k, strict=True)],
        "recall": [_ratio(t, g) for t, g in zip(tp_k, gt_k, strict=True)],
        "num_pixels": int(conf.sum()),
    }
