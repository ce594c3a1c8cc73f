"""Structured knowledge distillation (Liu et al., CVPR 2019): pixel-wise and pair-wise terms.

Definitions follow the authors' release (irfanICMLL/structure_knowledge_distillation,
``utils/criterion.py``; METHOD.md section 4):

- pixel-wise: cross entropy between the teacher's and the student's softmax on the final logits,
  no temperature, averaged over pixels (here over valid pixels; the release divides the sum over
  the batch by h * w only, i.e. sums the per-image means: with weight 10 and batch 8 that is 8x
  this mean);
- pair-wise: both feature maps max-pooled to a coarse grid of nodes, cosine similarity between
  every pair of nodes, sum over pairs of the squared difference / N_nodes^2 / batch.

The holistic term (a WGAN-GP discriminator on image + prediction, weight 0.1) is left out: it
needs a second trained network and its own optimiser, which the comparison harness does not have.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from intrakd_jax.losses.baselines import masked_pixel_mean
from intrakd_jax.losses.common import check_feature_pair, safe_norm, upcast
from intrakd_jax.models.pspnet import adaptive_pool_matrix

__all__ = ["adaptive_max_pool2d", "node_grid", "skd_pair_loss", "skd_pixel_loss"]


def skd_pixel_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    mask: jax.Array | None = None,
    axis_name: str | None = None,
) -> jax.Array:
    """SKD pixel-wise term: mean over valid pixels of -sum_k p_t(k) log p_s(k).

    It differs from ``logit_kd_loss`` at T = 1 by the teacher's entropy, a constant for the
    student, so the two give the same gradient; the values differ.

    Args:
      student_logits: (B, H, W, K) student logits.
      teacher_logits: Teacher logits of the same shape.
      mask: Optional (B, H, W) boolean/0-1 array, False/0 at pixels to skip (ignore labels).
      axis_name: Data axis inside ``shard_map`` (global-batch mean; see ``masked_pixel_mean``).

    Returns:
      Scalar in at least float32; 0 when no pixel is valid.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"skd_pixel_loss: student_logits {student_logits.shape} and teacher_logits "
            f"{teacher_logits.shape} must have the same shape"
        )
    log_ps = jax.nn.log_softmax(upcast(student_logits), axis=-1)
    p_t = jax.nn.softmax(upcast(jax.lax.stop_gradient(teacher_logits)), axis=-1)
    ce_pix = -jnp.sum(p_t * log_ps, axis=-1)
    return masked_pixel_mean(ce_pix, mask, axis_name)


def node_grid(hw: tuple[int, int], node_fraction: float) -> tuple[int, int]:
    """The release's node grid of a (h, w) map: kernel = stride = int(size * fraction), ceil mode.

    Args:
      hw: (h, w) of the teacher's feature map.
      node_fraction: Fraction of the map one node covers, in (0, 1] (0.5 -> 2 x 2 nodes).

    Returns:
      (rows, cols) of nodes.
    """
    fraction = float(node_fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"node_grid: node_fraction must be in (0, 1], got {node_fraction}")
    grid = []
    for size in hw:
        kernel = max(1, int(size * fraction))
        grid.append(math.ceil(size / kernel))
    return grid[0], grid[1]


def _bins(in_size: int, out_size: int) -> list[tuple[int, int]]:
    # PyTorch AdaptiveMaxPool bins, the same as AdaptiveAvgPool's (one definition of the bins).
    member = adaptive_pool_matrix(in_size, out_size) > 0
    return [(int(np.argmax(row)), int(in_size - np.argmax(row[::-1]))) for row in member]


def adaptive_max_pool2d(x_bhwc: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """PyTorch ``AdaptiveMaxPool2d`` on NHWC input (separable: rows, then columns).

    Bin i of n inputs into b bins covers floor(i n / b) <= j < ceil((i + 1) n / b). When n is a
    multiple of b this is max pooling with kernel = stride = n / b.

    Args:
      x_bhwc: (B, H, W, C).
      out_hw: (rows, cols) of the output.

    Returns:
      (B, rows, cols, C) in the input dtype.
    """
    _, h, w, _ = x_bhwc.shape
    rows_bhwc = jnp.stack([jnp.max(x_bhwc[:, a:b], axis=1) for a, b in _bins(h, out_hw[0])], 1)
    return jnp.stack([jnp.max(rows_bhwc[:, :, a:b], axis=2) for a, b in _bins(w, out_hw[1])], 2)


def _node_similarity(nodes_bnc: jax.Array, detach_norm: bool) -> jax.Array:
    norm_bn1 = safe_norm(nodes_bnc, axis=-1, keepdims=True) + 1e-8
    if detach_norm:
        norm_bn1 = jax.lax.stop_gradient(norm_bn1)
    unit_bnc = nodes_bnc / norm_bn1
    return jnp.einsum("bic,bjc->bij", unit_bnc, unit_bnc, precision=jax.lax.Precision.HIGHEST)


def skd_pair_loss(
    student_feats: jax.Array,
    teacher_feats: jax.Array,
    node_fraction: float = 0.5,
    detach_norm: bool = True,
) -> jax.Array:
    """SKD pair-wise term on one tap of each network.

    The node grid comes from the teacher's map (``node_grid``); both maps are max-pooled to it
    (``adaptive_max_pool2d``, which is the release's kernel = stride pooling whenever the size is
    a multiple of the kernel), so student and teacher may differ in size and channel count. Node
    features are divided by (||f|| + 1e-8) and a_ij = <f_i, f_j>;
    loss = sum_b,i,j (a_T - a_S)^2 / N_nodes^2 / B.

    Args:
      student_feats: (B, hs, ws, cs) student features.
      teacher_feats: (B, ht, wt, ct) teacher features.
      node_fraction: Fraction of the teacher map one node covers (0.5 -> 2 x 2 nodes).
      detach_norm: Hold the norms under stop_gradient, as the release does (its ``L2(feat)
        .detach()``): the value is the same, the gradient lacks the term through the norm.
        False gives the gradient of the cosine similarity itself.

    Returns:
      Scalar in at least float32.
    """
    check_feature_pair("skd_pair_loss", student_feats, teacher_feats)
    grid = node_grid(teacher_feats.shape[1:3], node_fraction)
    batch, num_nodes = teacher_feats.shape[0], grid[0] * grid[1]

    def similarity(feats_bhwc):
        nodes_bnc = adaptive_max_pool2d(upcast(feats_bhwc), grid).reshape(batch, num_nodes, -1)
        return _node_similarity(nodes_bnc, detach_norm)

    sim_t = jax.lax.stop_gradient(similarity(teacher_feats))
    sim_s = similarity(student_feats)
    return jnp.sum((sim_t - sim_s) ** 2) / num_nodes**2 / batch
