"""Inter-Region Affinity Distillation (IntRA-KD, Hou et al., CVPR 2020).

Pipeline for one feature tap of each network (METHOD.md section 2):

1. ``aoi_maps``: soft per-class "area of interest" maps from the labels, at the feature resolution.
2. ``moment_pool``: per-class, per-channel mean / variance / skewness of the features under the AOI.
3. ``affinity_graph``: cosine similarity between the class descriptors, an (n, n) graph per moment.
4. ``intra_kd_loss``: squared difference of the student's and the (frozen) teacher's graphs.

Everything is jit-compatible; shapes, class counts and kernel sizes are static.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from intrakd_jax.losses.common import compute_dtype, safe_norm, weighted_tap_sum

__all__ = [
    "affinity_graph",
    "aoi_maps",
    "moment_pool",
    "intra_kd_loss",
    "multi_tap_intra_kd_loss",
]

_NORMALIZERS = ("soft_mass", "count", "area")
_SKEW_DENOMINATORS = ("std_cubed", "var")
# The moment sums are matmuls; TPU/GPU default f32 matmul precision (bf16 / tf32 passes) would
# undo the care taken against cancellation, so ask for full precision. No-op on CPU.
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# AOI maps
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def _band_matrix(in_size: int, out_size: int, kernel_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Banded form of the 1-D map "box mean (in-image normaliser), then bilinear resize".

    The dense map is A = R @ B with B (in, in) the k-tap box mean that averages over the in-image
    part of the window and R (out, in) the half-pixel bilinear resampler with clamped edges (no
    antialiasing). Each row of A is non-zero on at most k + 1 consecutive inputs, so it is stored
    as a start-aligned window of T taps.

    Args:
      in_size: Label resolution along this axis.
      out_size: Feature resolution along this axis.
      kernel_size: Box filter size k; even k covers offsets -(k // 2) .. k - 1 - k // 2.

    Returns:
      (idx_oT int32, w_oT float32): A[o, idx[o, t]] == w[o, t] and A is zero elsewhere.
    """
    left = kernel_size // 2
    right = kernel_size - 1 - left
    # Half-pixel centres; clamping the source coordinate equals PyTorch align_corners=False and
    # jax.image.resize(antialias=False) at the borders.
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    src = np.clip(src, 0.0, in_size - 1)
    tap0 = np.floor(src).astype(np.int64)
    tap1 = np.minimum(tap0 + 1, in_size - 1)
    frac = src - tap0
    dense_oi = np.zeros((out_size, in_size), np.float64)
    for tap, weight in ((tap0, 1.0 - frac), (tap1, frac)):
        lo = np.maximum(tap - left, 0)
        hi = np.minimum(tap + right, in_size - 1)
        for o in range(out_size):
            dense_oi[o, lo[o] : hi[o] + 1] += weight[o] / (hi[o] - lo[o] + 1)
    nonzero = dense_oi != 0.0
    first = nonzero.argmax(axis=1)
    last = in_size - 1 - nonzero[:, ::-1].argmax(axis=1)
    taps = int((last - first + 1).max())
    # Shift windows that would run past the end back inside; the extra taps carry weight 0.
    start = np.minimum(first, in_size - taps)
    idx_ot = start[:, None] + np.arange(taps)[None, :]
    w_ot = dense_oi[np.arange(out_size)[:, None], idx_ot]
    return idx_ot.astype(np.int32), w_ot.astype(np.float32)


def _check_kernel_size(kernel_size: int) -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int | np.integer):
        raise TypeError(f"kernel_size must be a Python int >= 1, got {kernel_size!r}")
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")


@functools.partial(
    jax.jit, static_argnames=("num_classes", "out_hw", "kernel_size", "ignore_label")
)
def _aoi_maps_jit(labels_bhw, num_classes, out_hw, kernel_size, ignore_label):
    batch, height, width = labels_bhw.shape
    out_h, out_w = out_hw
    idx_h, w_h = _band_matrix(height, out_h, kernel_size)  # (h, Th)
    idx_w, w_w = _band_matrix(width, out_w, kernel_size)  # (w, Tw)
    taps_h, taps_w = idx_h.shape[1], idx_w.shape[1]

    labels_bhw = labels_bhw.astype(jnp.int32)
    # Ignore pixels must give all-zero rows; -1 never matches a class id.
    labels_bhw = jnp.where(labels_bhw == ignore_label, -1, labels_bhw)
    # Only label pixels inside some output's (Th x Tw) support matter: gather those once.
    rows = labels_bhw[:, idx_h.reshape(-1), :]  # (B, h*Th, W)
    gathered = rows[:, :, idx_w.reshape(-1)].reshape(batch, out_h, taps_h, out_w, taps_w)

    classes_n = jnp.arange(num_classes, dtype=jnp.int32)
    aoi_bhwn = jnp.zeros((batch, out_h, out_w, num_classes), jnp.float32)
    # A static loop over the (k+1)^2 filter offsets: each step is one fused (B, h, w, n) update,
    # so no (B, H, W, n) one-hot and no (B, h, Th, w, Tw, n) intermediate is ever built.
    for t in range(taps_h):
        for s in range(taps_w):
            weight_hw = jnp.asarray(np.outer(w_h[:, t], w_w[:, s]))
            hit_bhwn = gathered[:, :, t, :, s][..., None] == classes_n
            aoi_bhwn = aoi_bhwn + jnp.where(hit_bhwn, weight_hw[None, :, :, None], 0.0)
    return aoi_bhwn


def aoi_maps(
    labels: jax.Array,
    num_classes: int,
    out_hw: tuple[int, int],
    kernel_size: int = 5,
    ignore_label: int = 255,
) -> jax.Array:
    """Soft per-class area-of-interest maps at feature resolution.

    One-hot over ``num_classes`` (ignore pixels, and any value outside [0, num_classes), give
    all-zero rows), a k x k box mean filter at label resolution whose border average is taken
    over the in-image part of the window only, then bilinear resizing to ``out_hw`` with
    half-pixel centres, clamped edges and no antialiasing (PyTorch ``align_corners=False``).

    Implemented as AOI[b, :, :, k] = A_h @ onehot_k @ A_w^T with banded A_h, A_w precomputed in
    numpy at trace time; only the label pixels under the bands are gathered.

    Args:
      labels: (B, H, W) integer labels.
      num_classes: Number of classes n (static).
      out_hw: (h, w) of the feature map (static).
      kernel_size: Box filter size k (static, >= 1). Even k covers offsets
        -(k // 2) .. k - 1 - k // 2 (same anchor as OpenCV's ``cv2.blur``).
      ignore_label: Label value that marks unlabelled pixels.

    Returns:
      float32 (B, h, w, n) AOI maps; each pixel's row sums to the fraction of labelled pixels
      under its (resampled) window.

    Raises:
      ValueError / TypeError: on a wrong label rank, dtype or a bad size argument.
    """
    if labels.ndim != 3:
        raise ValueError(f"aoi_maps: labels must be (B, H, W), got shape {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"aoi_maps: labels must be an integer array, got dtype {labels.dtype}")
    if int(num_classes) < 1:
        raise ValueError(f"aoi_maps: num_classes must be >= 1, got {num_classes}")
    out_hw = tuple(int(s) for s in out_hw)
    if len(out_hw) != 2 or min(out_hw) < 1:
        raise ValueError(f"aoi_maps: out_hw must be two positive ints (h, w), got {out_hw}")
    _check_kernel_size(kernel_size)
    return _aoi_maps_jit(labels, int(num_classes), out_hw, int(kernel_size), int(ignore_label))


# ----------------------------------------------------------------------------------------------
# Moment pooling
# ----------------------------------------------------------------------------------------------


def moment_pool(
    features: jax.Array,
    aoi: jax.Array,
    eps: float = 1e-6,
    normalizer: str = "soft_mass",
    skew_denominator: str = "std_cubed",
    *,
    min_mass: float = 0.0,
    skew_floor: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """First three moments of the features inside each class's AOI (METHOD.md 2.2).

    With Z_k = sum_ij M(i,j,k) (or the count of non-zero M, or h*w) and D_k = max(Z_k, eps):
    mean = sum M F / D, var = sum M (F - mean)^2 / D,
    skew = sum M ((F - mean) / s)^3 / D with s^3 = sqrt(var + eps)^3 ("std_cubed") or var + eps
    ("var").

    Two guards the paper does not have (both off by default; README "Which distillation
    method?" explains why they matter): ``min_mass`` treats a class whose soft mass Z_k is below
    it as absent (all-zero descriptors): a node of a fraction of a pixel at the tap's resolution
    has moments of one pixel. ``skew_floor`` adds ``skew_floor * v_c`` to the variance inside the
    skewness's denominator, with v_c the channel's variance over the whole map (per image): a
    channel that is nearly constant inside a region (a ReLU channel off
    there) then has a skewness near 0 instead of a ratio of two vanishing numbers, which reaches
    1e6 at initialisation and dominates the skewness graph and its gradient.

    The sums are formed about a per-(batch, channel) global shift (held under stop_gradient; the
    centred moments do not depend on it), so a large feature mean does not cancel catastrophically.
    Memory is O(B*h*w*(n + c) + B*n*c); nothing of size n*c*h*w is formed.

    Args:
      features: (B, h, w, c) features, any float dtype (computed in at least float32).
      aoi: (B, h, w, n) non-negative AOI maps, e.g. from ``aoi_maps``.
      eps: Floor of the normaliser and the variance offset inside the skewness.
      normalizer: "soft_mass" (default), "count" or "area".
      skew_denominator: "std_cubed" (default) or "var".
      min_mass: Classes with soft mass below this (AOI pixels at this resolution) count as
        absent; 0 keeps every class with any mass.
      skew_floor: Relative variance floor of the skewness's denominator (dimensionless, >= 0).

    Returns:
      (mean, var, skew), each (B, n, c) in the compute dtype (float32 for f32/bf16 inputs).
      Classes whose AOI column is all zero (or below ``min_mass``) get exact zeros.
    """
    if features.ndim != 4 or aoi.ndim != 4:
        raise ValueError(
            f"moment_pool: features must be (B, h, w, c) and aoi (B, h, w, n), got "
            f"{features.shape} and {aoi.shape}"
        )
    if features.shape[:3] != aoi.shape[:3]:
        raise ValueError(
            f"moment_pool: features {features.shape} and aoi {aoi.shape} differ in (B, h, w)"
        )
    if normalizer not in _NORMALIZERS:
        raise ValueError(
            f"moment_pool: normalizer must be one of {_NORMALIZERS}, got {normalizer!r}"
        )
    if skew_denominator not in _SKEW_DENOMINATORS:
        raise ValueError(
            f"moment_pool: skew_denominator must be one of {_SKEW_DENOMINATORS}, "
            f"got {skew_denominator!r}"
        )
    if not (min_mass >= 0.0 and skew_floor >= 0.0):
        raise ValueError(
            f"moment_pool: min_mass and skew_floor must be >= 0, got {min_mass} and {skew_floor}"
        )
    return _moment_pool_jit(
        features, aoi, float(eps), normalizer, skew_denominator, float(min_mass), float(skew_floor)
    )


@functools.partial(
    jax.jit,
    static_argnames=("eps", "normalizer", "skew_denominator", "min_mass", "skew_floor"),
)
def _moment_pool_jit(features, aoi, eps, normalizer, skew_denominator, min_mass, skew_floor):
    dtype = compute_dtype(features.dtype, aoi.dtype)
    feats_bhwc = features.astype(dtype)
    aoi_bhwn = aoi.astype(dtype)
    _, h, w, c = feats_bhwc.shape

    shift_b11c = jax.lax.stop_gradient(jnp.mean(feats_bhwc, axis=(1, 2), keepdims=True))
    g_bhwc = feats_bhwc - shift_b11c

    # Three matmuls rather than one over a concatenated (B, h, w, 3c) operand: no concatenated
    # copy, and each power can be freed after its matmul (loss+grad temp memory at ApolloScape
    # size measured 328 MiB this way vs 592 MiB concatenated).
    def pooled_sum(x_bhwc):
        return jnp.einsum("bhwn,bhwc->bnc", aoi_bhwn, x_bhwc, precision=_HIGHEST)

    s1_bnc = pooled_sum(g_bhwc)
    s2_bnc = pooled_sum(g_bhwc * g_bhwc)
    s3_bnc = pooled_sum(g_bhwc * g_bhwc * g_bhwc)
    s0_bn1 = jnp.sum(aoi_bhwn, axis=(1, 2))[..., None]

    if normalizer == "soft_mass":
        z_bn1 = s0_bn1
    elif normalizer == "count":
        z_bn1 = jnp.sum((aoi_bhwn != 0).astype(dtype), axis=(1, 2))[..., None]
    else:
        z_bn1 = jnp.full_like(s0_bn1, float(h * w))
    denom_bn1 = jnp.maximum(z_bn1, eps)

    # Centre a = mean - shift in shifted coordinates. For "soft_mass", s0 / denom is exactly 1
    # whenever the class is present, so a = s1 / s0 with no large shift term to cancel.
    shift_b1c = shift_b11c[:, 0]
    a = s1_bnc / denom_bn1 + shift_b1c * (s0_bn1 / denom_bn1 - 1.0)
    mean_bnc = a + shift_b1c
    central2_bnc = s2_bnc - 2.0 * a * s1_bnc + a * a * s0_bn1
    central3_bnc = s3_bnc - 3.0 * a * s2_bnc + 3.0 * a * a * s1_bnc - a * a * a * s0_bn1
    # Rounding can leave a tiny negative variance; sqrt below needs >= 0.
    var_bnc = jnp.maximum(central2_bnc / denom_bn1, 0.0)
    skew_var_bnc = var_bnc + eps
    if skew_floor:
        # g is centred per (image, channel), so its mean square is the map's variance (and its
        # gradient through g is the variance's: the stopped shift's term sums to zero).
        map_var_b1c = jnp.mean(g_bhwc * g_bhwc, axis=(1, 2))[:, None]
        skew_var_bnc = skew_var_bnc + skew_floor * map_var_b1c
    if skew_denominator == "std_cubed":
        skew_scale_bnc = jnp.sqrt(skew_var_bnc) ** 3
    else:
        skew_scale_bnc = skew_var_bnc
    skew_bnc = central3_bnc / denom_bn1 / skew_scale_bnc

    present_bn1 = (s0_bn1 > 0) & (s0_bn1 >= min_mass)
    zero = jnp.zeros((), dtype)
    return (
        jnp.where(present_bn1, mean_bnc, zero),
        jnp.where(present_bn1, var_bnc, zero),
        jnp.where(present_bn1, skew_bnc, zero),
    )


# ----------------------------------------------------------------------------------------------
# Affinity graph and loss
# ----------------------------------------------------------------------------------------------


def affinity_graph(moment: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Cosine-similarity graph between class descriptors.

    C(i, j) = <m_i, m_j> / (||m_i|| ||m_j|| + eps). All-zero descriptors (absent classes) give
    zero rows and columns, and gradients stay finite there.

    Args:
      moment: (B, n, c) per-class descriptors.
      eps: Added to the product of norms.

    Returns:
      (B, n, n) affinity graphs in the compute dtype (at least float32).
    """
    if moment.ndim != 3:
        raise ValueError(f"affinity_graph: moment must be (B, n, c), got shape {moment.shape}")
    return _affinity_graph_jit(moment, float(eps))


@functools.partial(jax.jit, static_argnames=("eps",))
def _affinity_graph_jit(moment, eps):
    m_bnc = moment.astype(compute_dtype(moment.dtype))
    norm_bn = safe_norm(m_bnc, axis=-1)
    dots_bnn = jnp.einsum("bic,bjc->bij", m_bnc, m_bnc, precision=_HIGHEST)
    return dots_bnn / (norm_bn[:, :, None] * norm_bn[:, None, :] + eps)


def _check_feats(name: str, feats: jax.Array, labels: jax.Array) -> None:
    if feats.ndim != 4:
        raise ValueError(f"intra_kd_loss: {name} must be (B, h, w, c), got shape {feats.shape}")
    if feats.shape[0] != labels.shape[0]:
        raise ValueError(
            f"intra_kd_loss: {name} batch {feats.shape[0]} != labels batch {labels.shape[0]}"
        )


def intra_kd_loss(
    student_feats: jax.Array,
    teacher_feats: jax.Array,
    labels: jax.Array,
    num_classes: int,
    kernel_size: int = 5,
    moment_weights: Sequence[float] = (1.0, 1.0, 1.0),
    ignore_label: int = 255,
    *,
    normalizer: str = "soft_mass",
    skew_denominator: str = "std_cubed",
    min_mass: float = 0.0,
    skew_floor: float = 0.0,
) -> jax.Array:
    """IntRA-KD loss for one tap of each network (without the global weight lambda).

    L = sum_m alpha_m * mean_{b, i, j} (C_m^S(b, i, j) - C_m^T(b, i, j))^2 over moments m =
    mean, variance, skewness. The teacher side is under stop_gradient. Student and teacher may
    differ in spatial size and channel count; each gets AOI maps at its own size.

    Args:
      student_feats: (B, hs, ws, cs) student features (any float dtype).
      teacher_feats: (B, ht, wt, ct) teacher features (any float dtype).
      labels: (B, H, W) integer labels.
      num_classes: n (static).
      kernel_size: AOI box filter size.
      moment_weights: (alpha_mean, alpha_var, alpha_skew).
      ignore_label: Label value of unlabelled pixels.
      normalizer: Passed to ``moment_pool``.
      skew_denominator: Passed to ``moment_pool``.
      min_mass: Passed to ``moment_pool``.
      skew_floor: Passed to ``moment_pool``.

    Returns:
      Scalar loss (float32, or float64 for float64 inputs under x64).
    """
    if labels.ndim != 3:
        raise ValueError(f"intra_kd_loss: labels must be (B, H, W), got shape {labels.shape}")
    _check_feats("student_feats", student_feats, labels)
    _check_feats("teacher_feats", teacher_feats, labels)
    alphas = tuple(float(a) for a in moment_weights)
    if len(alphas) != 3:
        raise ValueError(
            f"intra_kd_loss: moment_weights must have 3 entries (mean, var, skew), got {alphas}"
        )
    teacher_feats = jax.lax.stop_gradient(teacher_feats)

    aoi_cache: dict[tuple[int, int], jax.Array] = {}

    def aoi_for(feats: jax.Array) -> jax.Array:
        hw = (int(feats.shape[1]), int(feats.shape[2]))
        if hw not in aoi_cache:
            aoi_cache[hw] = aoi_maps(labels, num_classes, hw, kernel_size, ignore_label)
        return aoi_cache[hw]

    pool = functools.partial(
        moment_pool,
        normalizer=normalizer,
        skew_denominator=skew_denominator,
        min_mass=min_mass,
        skew_floor=skew_floor,
    )
    student_moments = pool(student_feats, aoi_for(student_feats))
    teacher_moments = pool(teacher_feats, aoi_for(teacher_feats))
    total = jnp.zeros((), compute_dtype(student_feats.dtype))
    for alpha, m_s, m_t in zip(alphas, student_moments, teacher_moments, strict=True):
        if alpha == 0.0:
            continue
        diff_bnn = affinity_graph(m_s) - jax.lax.stop_gradient(affinity_graph(m_t))
        total = total + alpha * jnp.mean(diff_bnn * diff_bnn)
    return total


def multi_tap_intra_kd_loss(
    student_taps: Mapping[str, jax.Array],
    teacher_taps: Mapping[str, jax.Array],
    labels: jax.Array,
    num_classes: int,
    pairs: Sequence[tuple[str, str, float]],
    **kw,
) -> jax.Array:
    """Weighted sum of ``intra_kd_loss`` over (student tap, teacher tap, weight) pairs.

    Args:
      student_taps: Tap name -> (B, h, w, c) student features.
      teacher_taps: Tap name -> (B, h, w, c) teacher features.
      labels: (B, H, W) integer labels.
      num_classes: n (static).
      pairs: Sequence of (student_tap_name, teacher_tap_name, weight).
      **kw: Passed to ``intra_kd_loss`` (kernel_size, moment_weights, ignore_label, normalizer,
        skew_denominator, min_mass, skew_floor).

    Returns:
      Scalar loss.

    Raises:
      KeyError: a named tap is missing (the message lists the available taps).
      ValueError: ``pairs`` is empty or malformed.
    """
    loss_fn = lambda s, t: intra_kd_loss(s, t, labels, num_classes, **kw)
    return weighted_tap_sum(loss_fn, student_taps, teacher_taps, pairs, "multi_tap_intra_kd_loss")
