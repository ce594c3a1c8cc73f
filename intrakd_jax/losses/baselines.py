"""Baseline distillation terms the paper compares against (METHOD.md section 4).

KD, AT and CWD live here; SKD is in ``skd.py`` and SAD in ``sad.py``. All are computed in float32
(float64 under x64), with the teacher side under stop_gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from intrakd_jax.losses.common import check_feature_pair, safe_norm, upcast

__all__ = [
    "attention_map",
    "attention_transfer_loss",
    "channel_wise_distillation_loss",
    "logit_kd_loss",
    "masked_pixel_mean",
    "resize_maps",
]


def masked_pixel_mean(
    values: jax.Array, mask: jax.Array | None = None, axis_name: str | None = None
) -> jax.Array:
    """Mean of per-pixel values over the pixels where ``mask`` holds; 0 when there are none.

    Args:
      values: Per-pixel values, e.g. (B, H, W).
      mask: Boolean/0-1 array of ``values.shape`` (False/0: the pixel is skipped), or None.
      axis_name: Inside ``shard_map``/``pmap``: the data axis. The sum and the pixel count are
        summed over it before dividing, so the result is the mean over the global batch however
        the valid pixels are spread over devices.

    Returns:
      Scalar in the dtype of ``values``.
    """
    if mask is None:
        total, count = jnp.sum(values), jnp.asarray(values.size, values.dtype)
    else:
        if mask.shape != values.shape:
            raise ValueError(
                f"masked_pixel_mean: mask must have shape {values.shape} (the per-pixel values), "
                f"got {mask.shape}"
            )
        valid = mask.astype(bool)
        # where, not multiply: NaN/inf logits of skipped pixels must not leak through 0 * NaN.
        total = jnp.sum(jnp.where(valid, values, 0.0))
        count = jnp.sum(valid).astype(values.dtype)
    if axis_name is not None:
        total, count = jax.lax.psum((total, count), axis_name)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


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
    axis_name: str | None = None,
) -> jax.Array:
    """Hinton KD: per-pixel KL(softmax(t / T) || softmax(s / T)) * T^2, mean over valid pixels.

    Args:
      student_logits: (..., K) student logits, e.g. (B, H, W, K).
      teacher_logits: Teacher logits of the same shape.
      temperature: Softmax temperature T > 0.
      mask: Optional boolean/0-1 array of shape logits.shape[:-1]; pixels where it is False/0 are
        skipped (e.g. ``labels != ignore_label``). None uses every pixel.
      axis_name: Data axis inside ``shard_map``: the mean is over the global batch's valid
        pixels (see ``masked_pixel_mean``).

    Returns:
      float32 scalar; 0 when no pixel is valid.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit_kd_loss: student_logits {student_logits.shape} and teacher_logits "
            f"{teacher_logits.shape} must have the same shape"
        )
    temperature = _positive_temperature("logit_kd_loss", temperature)
    log_ps = jax.nn.log_softmax(upcast(student_logits) / temperature, axis=-1)
    log_pt = jax.nn.log_softmax(
        upcast(jax.lax.stop_gradient(teacher_logits)) / temperature, axis=-1
    )
    kl_pix = optax.losses.kl_divergence_with_log_targets(log_ps, log_pt, axis=-1)
    return masked_pixel_mean(kl_pix, mask, axis_name) * temperature**2


def attention_map(feats_bhwc: jax.Array, p: float = 2.0) -> jax.Array:
    """Spatial attention map sum_c |F_c|^p of a (B, h, w, c) tap, (B, h, w).

    The map of attention transfer (Zagoruyko & Komodakis; p = 2, where sum and channel mean differ
    only by a scale that its normalisation removes) and of SAD (Hou et al.; p = 2, sum).

    Args:
      feats_bhwc: Features, any float dtype (computed in at least float32).
      p: Power, >= 1 (the gradient of |F|^p is finite at F = 0 only for p >= 1).

    Returns:
      (B, h, w) map in the compute dtype.
    """
    p = float(p)
    if not p >= 1.0:
        raise ValueError(f"attention_map: p must be >= 1, got {p}")
    feats_bhwc = upcast(feats_bhwc)
    # F * F for p = 2: exact and the cheapest gradient.
    powered = feats_bhwc * feats_bhwc if p == 2.0 else jnp.abs(feats_bhwc) ** p
    return jnp.sum(powered, axis=-1)


def resize_maps(maps_bhw: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """Bilinear resize of (B, h, w) maps: half-pixel centres, no antialiasing; no-op at size."""
    if maps_bhw.shape[1:] == tuple(hw):
        return maps_bhw
    return jax.image.resize(maps_bhw, (maps_bhw.shape[0], *hw), "bilinear", antialias=False)


def _l2_normalize_rows(x_bp: jax.Array, eps: float = 1e-12) -> jax.Array:
    # max(norm, eps) as torch.nn.functional.normalize.
    return x_bp / jnp.maximum(safe_norm(x_bp, axis=-1, keepdims=True), eps)


def attention_transfer_loss(
    student_feats: jax.Array, teacher_feats: jax.Array, p: float = 2.0
) -> jax.Array:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017).

    The attention map of a (B, h, w, c) tap is ``attention_map`` (sum over channels of |F|^p).
    If the student map's (h, w) differ from the teacher's it is resized (bilinear, half-pixel
    centres, no antialiasing) to the teacher's size; both are then flattened and L2-normalised
    per image. The loss is the mean over batch and positions of the squared difference of the
    normalised maps (the release's ``(at(x) - at(y)).pow(2).mean()``). Channel counts may differ.

    Args:
      student_feats: (B, hs, ws, cs) student features.
      teacher_feats: (B, ht, wt, ct) teacher features.
      p: Power of the attention map (2 in the paper's experiments).

    Returns:
      float32 scalar.
    """
    check_feature_pair("attention_transfer_loss", student_feats, teacher_feats)
    att_t_bhw = attention_map(jax.lax.stop_gradient(teacher_feats), p)
    att_s_bhw = resize_maps(attention_map(student_feats, p), att_t_bhw.shape[1:])
    batch = att_t_bhw.shape[0]
    att_s_bp = _l2_normalize_rows(att_s_bhw.reshape(batch, -1))
    att_t_bp = _l2_normalize_rows(att_t_bhw.reshape(batch, -1))
    return jnp.mean((att_s_bp - att_t_bp) ** 2)


def channel_wise_distillation_loss(
    student_feats: jax.Array, teacher_feats: jax.Array, temperature: float = 1.0
) -> jax.Array:
    """Channel-wise distillation (Shu et al., ICCV 2021).

    Each channel is turned into a distribution over the h*w positions by softmax(F / T); the loss
    is T^2 / (B * c) * sum over images and channels of KL(teacher || student).

    Args:
      student_feats: (B, h, w, c) student features or logits.
      teacher_feats: Teacher tensor of the same shape. CWD compares channel by channel, so the
        channel counts (and spatial sizes) must match; add a 1x1 projection on the student first
        if they do not.
      temperature: T > 0 (1 in the authors' segmentation configs).

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
    s_bcp = upcast(student_feats).reshape(batch, h * w, c).transpose(0, 2, 1)
    t_bcp = upcast(jax.lax.stop_gradient(teacher_feats)).reshape(batch, h * w, c).transpose(0, 2, 1)
    log_ps = jax.nn.log_softmax(s_bcp / temperature, axis=-1)
    log_pt = jax.nn.log_softmax(t_bcp / temperature, axis=-1)
    kl_bc = optax.losses.kl_divergence_with_log_targets(log_ps, log_pt, axis=-1)
    return jnp.sum(kl_bc) * temperature**2 / (batch * c)
