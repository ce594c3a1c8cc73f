"""Self-attention distillation (SAD, Hou et al., ICCV 2019): a network teaches itself.

The attention map of a block is its output squared and summed over channels
(``baselines.attention_map``), bilinearly resized to a common size and turned into a distribution
over positions by a spatial softmax. Block i's map is trained towards block i+1's (the deeper
block is the target, under stop_gradient) with a mean squared error. No teacher network is needed.
The authors' release adds the pairs' errors and weights the sum by 0.1, and switches the term on
part-way through training; both are the caller's (``terms.SAD``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from intrakd_jax.losses.baselines import attention_map, resize_maps

__all__ = ["sad_loss", "spatial_softmax"]


def spatial_softmax(maps_bhw: jax.Array) -> jax.Array:
    """Softmax over all positions of each (h, w) map, (B, h, w)."""
    batch = maps_bhw.shape[0]
    return jax.nn.softmax(maps_bhw.reshape(batch, -1), axis=-1).reshape(maps_bhw.shape)


def sad_loss(block_feats: Sequence[jax.Array]) -> jax.Array:
    """Sum over consecutive blocks (i, i+1) of mean((A_i - stop_gradient(A_{i+1}))^2).

    A_k = spatial_softmax(resize(attention_map(F_k))). Each pair's maps are resized (bilinear,
    half-pixel centres) to the larger of the two sizes, rows and columns separately; the release
    upsamples the deeper, smaller map to the earlier one's size. Channel counts may differ.

    Args:
      block_feats: The blocks' (B, h, w, c) outputs, earliest first; at least two.

    Returns:
      Scalar in at least float32 (unweighted: the release's 0.1 is the caller's weight).
    """
    feats = list(block_feats)
    if len(feats) < 2:
        raise ValueError(f"sad_loss: needs at least two block outputs, got {len(feats)}")
    for i, f in enumerate(feats):
        if f.ndim != 4 or f.shape[0] != feats[0].shape[0]:
            raise ValueError(
                f"sad_loss: block {i} must be (B, h, w, c) with B = {feats[0].shape[0]}, got "
                f"{f.shape}"
            )
    maps = [attention_map(f) for f in feats]
    total = None
    for early_bhw, late_bhw in zip(maps[:-1], maps[1:], strict=True):
        hw = tuple(max(a, b) for a, b in zip(early_bhw.shape[1:], late_bhw.shape[1:], strict=True))
        student_bhw = spatial_softmax(resize_maps(early_bhw, hw))
        target_bhw = jax.lax.stop_gradient(spatial_softmax(resize_maps(late_bhw, hw)))
        term = jnp.mean((student_bhw - target_bhw) ** 2)
        total = term if total is None else total + term
    return total
