"""The one jax module of `intrakd_jax.evaluation`: the confusion matrix of the jitted eval step.

Everything else in the package is numpy / OpenCV / scipy, so the official metrics can be used
without jax (or TensorFlow). This function runs on device, inside `jax.jit` or `jax.shard_map`
(`intrakd_jax.steps`), which is why it lives apart; `evaluation/__init__` does not import it.

`confusion_matrix` returns one batch's counts as int32. int32 overflows past 2**31 pixels, so
callers add each batch into a host-side int64 numpy matrix and call
`segmentation.iou_from_confusion` once at the end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
