"""Small numeric helpers shared by the loss modules."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

__all__ = ["check_feature_pair", "compute_dtype", "safe_norm", "upcast", "weighted_tap_sum"]


def compute_dtype(*dtypes) -> jnp.dtype:
    """The dtype losses compute in: at least float32.

    bfloat16/float16 activations are upcast; float64 stays float64 under x64, so finite-difference
    tests can run in double precision.
    """
    return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def upcast(x: jax.Array) -> jax.Array:
    """``x`` in ``compute_dtype(x.dtype)``."""
    return x.astype(compute_dtype(x.dtype))


def check_feature_pair(where: str, student_feats: jax.Array, teacher_feats: jax.Array) -> None:
    """Raises ValueError unless both are (B, h, w, c) with one B; h, w and c may differ."""
    if student_feats.ndim != 4 or teacher_feats.ndim != 4:
        raise ValueError(
            f"{where}: features must be (B, h, w, c), got {student_feats.shape} and "
            f"{teacher_feats.shape}"
        )
    if student_feats.shape[0] != teacher_feats.shape[0]:
        raise ValueError(
            f"{where}: batch sizes differ: student {student_feats.shape[0]}, teacher "
            f"{teacher_feats.shape[0]}"
        )


def safe_norm(x: jax.Array, axis: int, keepdims: bool = False) -> jax.Array:
    """L2 norm along ``axis`` whose gradient is 0 (not NaN) where x == 0."""
    sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def weighted_tap_sum(
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
    student_taps: Mapping[str, jax.Array],
    teacher_taps: Mapping[str, jax.Array],
    pairs: Sequence[tuple[str, str, float]],
    where: str,
) -> jax.Array:
    """Sum over (student tap, teacher tap, weight) pairs of weight * loss_fn(student, teacher).

    Args:
      loss_fn: Loss of one student tap against one teacher tap.
      student_taps: Tap name -> student features.
      teacher_taps: Tap name -> teacher features.
      pairs: (student_tap_name, teacher_tap_name, weight) triples; at least one.
      where: Prefix of error messages (the caller's name or config field).

    Returns:
      Scalar.

    Raises:
      KeyError: a named tap is missing (the message lists the available taps).
      ValueError: ``pairs`` is empty or malformed.
    """
    if not pairs:
        raise ValueError(f"{where}: pairs is empty; give (student, teacher, weight)")
    total = None
    for pair in pairs:
        if len(pair) != 3:
            raise ValueError(
                f"{where}: each pair must be (student_tap, teacher_tap, weight), got {pair!r}"
            )
        s_name, t_name, weight = pair
        for role, name, taps in (
            ("student", s_name, student_taps),
            ("teacher", t_name, teacher_taps),
        ):
            if name not in taps:
                raise KeyError(
                    f"{where}: {role} tap {name!r} not found; available {role} taps: {sorted(taps)}"
                )
        term = weight * loss_fn(student_taps[s_name], teacher_taps[t_name])
        total = term if total is None else total + term
    return total
