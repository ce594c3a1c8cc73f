"""Baseline distillation terms the paper compares against (METHOD.md section 4).

All are optional extra terms, computed in float32, with the teacher side under stop_gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["attention_transfer_loss", "channel_wise_distillation_loss", "logit_kd_loss"]


def _positive_temperature(name: str, temperature: float) -> float:
    temperature = float(temperature)
    if not temperature > 0.0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature}")
    return temperature


def logit_kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    temperature: float = 1.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Hinton KD: per-pixel KL(softmax(t / T) || softmax(s / T)) * T^2, mean over valid pixels.

    Args:
      student_logits: (..., K) student logits, e.g. (B, H, W, K).
      teacher_logits: Teacher logits of the same shape.
      temperature: Softmax temperature T > 0.
      mask: Optional boolean/0-1 array of shape logits.shape[:-1]; pixels where it is False/0 are
        skipped. None uses every pixel.

    Returns:
      float32 scalar; 0 when no pixel is valid.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit_kd_loss: student_logits {student_logits.shape} and teacher_logits "
            f"{teacher_logits.shape} must have the same shape"
        )
    temperature = _positive_temperature("logit_kd_loss", temperature)
    log_ps = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    log_pt = jax.nn.log_softmax(
        jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, axis=-1
    )
    kl_pix = optax.losses.kl_divergence_with_log_targets(log_ps, log_pt, axis=-1)
    if mask is None:
        return jnp.mean(kl_pix) * temperature**2
    if mask.shape != kl_pix.shape:
        raise ValueError(
            f"logit_kd_loss: mask must have shape {kl_pix.shape} (logits without the class axis), "
            f"got {mask.shape}"
        )
    valid = mask.astype(bool)
    count = jnp.sum(valid)
    total = jnp.sum(jnp.where(valid, kl_pix, 0.0))
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0) * temperature**2


def _attention_map(feats_bhwc: jax.Array) -> jax.Array:
    """Channel mean of F^2, (B, h, w)."""
    feats_bhwc = feats_bhwc.astype(jnp.float32)
    return jnp.mean(feats_bhwc * feats_bhwc, axis=-1)


def _l2_normalize_rows(x_bp: jax.Array, eps: float = 1e-12) -> jax.Array:
    # max(norm, eps) as torch.nn.functional.normalize; the where keeps grad finite at 0.
    sq = jnp.sum(x_bp * x_bp, axis=-1, keepdims=True)
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    return x_bp / jnp.maximum(norm, eps)


def attention_transfer_loss(student_feats: jax.Array, teacher_feats: jax.Array) -> jax.Array:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017).

    The attention map of a (B, h, w, c) tap is the channel mean of F^2, flattened and
    L2-normalised per image. If the student map's (h, w) differ from the teacher's it is resized
    (bilinear, half-pixel centres, no antialiasing) to the teacher's size before normalising. The
    loss is the mean over batch and positions of the squared difference of the normalised maps.
    Channel counts may differ.

    Args:
      student_feats: (B, hs, ws, cs) student features.
      teacher_feats: (B, ht, wt, ct) teacher features.

    Returns:
      float32 scalar.
    """
    if student_feats.ndim != 4 or teacher_feats.ndim != 4:
        raise ValueError(
            f"attention_transfer_loss: features must be (B, h, w, c), got {student_feats.shape} "
            f"and {teacher_feats.shape}"
        )
    if student_feats.shape[0] != teacher_feats.shape[0]:
        raise ValueError(
            f"attention_transfer_loss: batch sizes differ: student {student_feats.shape[0]}, "
            f"teacher {teacher_feats.shape[0]}"
        )
    att_s_bhw = _attention_map(student_feats)
    att_t_bhw = _attention_map(jax.lax.stop_gradient(teacher_feats))
    if att_s_bhw.shape != att_t_bhw.shape:
        att_s_bhw = jax.image.resize(att_s_bhw, att_t_bhw.shape, "bilinear", antialias=False)
    batch = att_t_bhw.shape[0]
    att_s_bp = _l2_normalize_rows(att_s_bhw.reshape(batch, -1))
    att_t_bp = _l2_normalize_rows(att_t_bhw.reshape(batch, -1))
    return jnp.mean((att_s_bp - att_t_bp) ** 2)


def channel_wise_distillation_loss(
    student_feats: jax.Array, teacher_feats: jax.Array, temperature: float = 4.0
) -> jax.Array:
    """Channel-wise distillation (Shu et al., ICCV 2021).

    Each channel is turned into a distribution over the h*w positions by softmax(F / T); the loss
    is T^2 / (B * c) * sum over images and channels of KL(teacher || student).

    Args:
      student_feats: (B, h, w, c) student features or logits.
      teacher_feats: Teacher tensor of the same shape. CWD compares channel by channel, so the
        channel counts (and spatial sizes) must match; add a 1x1 projection on the student first
        if they do not.
      temperature: T > 0.

    Returns:
      float32 scalar.
    """
    if student_feats.ndim != 4 or teacher_feats.ndim != 4:
        raise ValueError(
            f"channel_wise_distillation_loss: features must be (B, h, w, c), got "
            f"{student_feats.shape} and {teacher_feats.shape}"
        )
    if student_feats.shape[-1] != teacher_feats.shape[-1]:
        raise ValueError(
            "channel_wise_distillation_loss: CWD needs equal channel counts, got student "
            f"{student_feats.shape[-1]} and teacher {teacher_feats.shape[-1]}; project the "
            "student with a 1x1 conv first"
        )
    if student_feats.shape != teacher_feats.shape:
        raise ValueError(
            f"channel_wise_distillation_loss: student {student_feats.shape} and teacher "
            f"{teacher_feats.shape} must have the same (B, h, w, c)"
        )
    temperature = _positive_temperature("channel_wise_distillation_loss", temperature)
    batch, h, w, c = student_feats.shape
    # (B, c, h*w): a distribution over positions per channel.
    s_bcp = student_feats.astype(jnp.float32).reshape(batch, h * w, c).transpose(0, 2, 1)
    t_bcp = (
        jax.lax.stop_gradient(teacher_feats)
        .astype(jnp.float32)
        .reshape(batch, h * w, c)
        .transpose(0, 2, 1)
    )
    log_ps = jax.nn.log_softmax(s_bcp / temperature, axis=-1)
    log_pt = jax.nn.log_softmax(t_bcp / temperature, axis=-1)
    kl_bc = optax.losses.kl_divergence_with_log_targets(log_ps, log_pt, axis=-1)
    return jnp.sum(kl_bc) * temperature**2 / (batch * c)
