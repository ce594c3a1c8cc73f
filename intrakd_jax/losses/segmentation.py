"""Class-weighted pixel cross entropy with an ignore label (PyTorch NLLLoss semantics)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["weighted_cross_entropy", "weighted_cross_entropy_sums"]


def weighted_cross_entropy_sums(
    logits: jax.Array,
    labels: jax.Array,
    class_weights: jax.Array | None = None,
    ignore_label: int = 255,
) -> tuple[jax.Array, jax.Array]:
    """Numerator and denominator of the class-weighted cross entropy.

    numerator = sum_i w[y_i] * (-log softmax(logits_i)[y_i]) and denominator = sum_i w[y_i], both
    over non-ignored pixels. Under data parallelism psum both over devices and then divide, so the
    loss does not depend on how the batch is split.

    Args:
      logits: (B, H, W, K) logits, any float dtype (computed in float32).
      labels: (B, H, W) integer labels in [0, K) or ``ignore_label``. Other values are a data
        error that cannot be checked under jit (labels >= K give a NaN loss, negative ones wrap
        around like Python indexing).
      class_weights: (K,) per-class weights, or None for all ones.
      ignore_label: Label value that contributes nothing.

    Returns:
      (numerator, denominator), float32 scalars.
    """
    if logits.ndim != 4 or labels.ndim != 3 or logits.shape[:3] != labels.shape:
        raise ValueError(
            f"weighted_cross_entropy: logits must be (B, H, W, K) and labels (B, H, W) with the "
            f"same (B, H, W), got {logits.shape} and {labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"weighted_cross_entropy: labels must be integers, got {labels.dtype}")
    num_classes = logits.shape[-1]
    logits_bhwk = logits.astype(jnp.float32)
    labels_bhw = labels.astype(jnp.int32)
    valid_bhw = labels_bhw != ignore_label
    # Ignored pixels index class 0 so that every lookup stays in range; `where` masks them out.
    safe_bhw = jnp.where(valid_bhw, labels_bhw, 0)
    nll_bhw = optax.softmax_cross_entropy_with_integer_labels(
        logits_bhwk, safe_bhw, where=valid_bhw[..., None]
    )
    if class_weights is None:
        weight_bhw = valid_bhw.astype(jnp.float32)
    else:
        class_weights = jnp.asarray(class_weights, jnp.float32)
        if class_weights.shape != (num_classes,):
            raise ValueError(
                f"weighted_cross_entropy: class_weights must have shape ({num_classes},) to match "
                f"the logits, got {class_weights.shape}"
            )
        weight_bhw = jnp.where(valid_bhw, class_weights[safe_bhw], 0.0)
    # `where` on nll too: optax already returns 0 there, this keeps NaN logits of ignored pixels
    # from leaking through 0 * NaN.
    numerator = jnp.sum(jnp.where(valid_bhw, weight_bhw * nll_bhw, 0.0))
    denominator = jnp.sum(weight_bhw)
    return numerator, denominator


def weighted_cross_entropy(
    logits_bhwk: jax.Array,
    labels_bhw: jax.Array,
    class_weights: jax.Array | None = None,
    ignore_label: int = 255,
) -> jax.Array:
    """Class-weighted mean cross entropy, as PyTorch ``NLLLoss(weight=w, ignore_index=...)``.

    loss = sum_i w[y_i] * (-log p_i[y_i]) / sum_i w[y_i] over non-ignored pixels; 0 when no pixel
    is labelled (no NaN).

    Args:
      logits_bhwk: (B, H, W, K) logits.
      labels_bhw: (B, H, W) integer labels.
      class_weights: (K,) per-class weights, or None.
      ignore_label: Label value to skip.

    Returns:
      float32 scalar loss.
    """
    numerator, denominator = weighted_cross_entropy_sums(
        logits_bhwk, labels_bhw, class_weights, ignore_label
    )
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)
