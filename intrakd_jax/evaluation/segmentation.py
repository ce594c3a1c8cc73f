"""Confusion-matrix segmentation metrics: per-class IoU, mIoU, pixel accuracy, precision, recall.

`confusion_matrix` runs on device (inside `jax.jit` or `jax.shard_map`) and returns one batch's
counts as int32. int32 overflows past 2**31 pixels, so callers add each batch into a host-side
int64 numpy matrix and call `iou_from_confusion` once at the end.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(
    labels: jax.Array,
    preds: jax.Array,
    num_classes: int,
    ignore_label: int | None = 255,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Counts (ground truth, prediction) pixel pairs of one batch.

    Pixels whose label equals `ignore_label`, pixels of examples with `mask[b] == False` (padding
    of the last eval batch) and pixels whose label or prediction lies outside
    `[0, num_classes)` are not counted. Values cannot be checked for range under `jit`, so
    out-of-range labels are dropped silently rather than raising; validate labels in the data
    pipeline.

    The counts are made per example (a vmapped `bincount`) and then summed over the batch. A
    single `bincount` over the flattened batch is a scatter whose output sharding jax cannot
    resolve when the batch axis is sharded over an Explicit mesh axis (ShardingTypeError, see
    ANCHORS.md 2.3); the per-example form keeps the batch axis and reduces it with a plain sum,
    which works with Auto and Explicit meshes and inside `shard_map` (psum the result there).

    Args:
      labels: integer ground truth, shape (B, ...) e.g. (B, H, W).
      preds: integer predictions (class ids, e.g. an argmax), same shape as `labels`.
      num_classes: number of classes n (a static Python int).
      ignore_label: label value that is never counted; None to count every in-range label.
      mask: optional bool (B,) marking real examples; False rows contribute nothing.

    Returns:
      int32 (n, n) counts; rows are ground truth, columns are predictions.

    Raises:
      ValueError: on a non-positive `num_classes`, mismatched shapes or a mask that is not (B,).
    """
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(
            f"confusion_matrix: num_classes must be a positive int, got {num_classes!r}"
        )
    labels = jnp.asarray(labels)
    preds = jnp.asarray(preds)
    if labels.shape != preds.shape:
        raise ValueError(
            f"confusion_matrix: labels shape {labels.shape} != preds shape {preds.shape}"
        )
    if labels.ndim < 1:
        raise ValueError("confusion_matrix: labels must have a leading batch axis, got a scalar")
    n = num_classes
    labels = labels.astype(jnp.int32)
    preds = preds.astype(jnp.int32)

    valid = (labels >= 0) & (labels < n) & (preds >= 0) & (preds < n)
    if ignore_label is not None:
        valid &= labels != ignore_label
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != labels.shape[:1]:
            raise ValueError(
                f"confusion_matrix: mask must have shape (B,) = {labels.shape[:1]}, "
                f"got {mask.shape}"
            )
        mask_b11 = mask.astype(bool).reshape(mask.shape + (1,) * (labels.ndim - 1))
        valid &= mask_b11
    # Invalid pixels go to bucket n*n, which is cut off below.
    idx_b_pix = jnp.where(valid, labels * n + preds, n * n).reshape(labels.shape[0], -1)
    counts_b = jax.vmap(lambda idx: jnp.bincount(idx, length=n * n + 1))(idx_b_pix)
    return counts_b.sum(axis=0, dtype=jnp.int32)[: n * n].reshape(n, n)


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
