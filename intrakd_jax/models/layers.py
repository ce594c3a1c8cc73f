"""Building blocks shared by the models."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from intrakd_jax.models import onednn
from intrakd_jax.models.batch_norm import FusedBatchNorm
from intrakd_jax.models.conv import resolve_conv_impl


def batch_norm(module: Any, train: bool) -> functools.partial:
    """A BatchNorm factory configured from a model's ``bn_*``, ``dtype`` and ``conv_impl`` fields.

    Training mode uses batch statistics synced over ``module.bn_axis_name`` (the data axis inside
    the shard_map step); evaluation uses the running averages. Where the model's convolutions run
    in oneDNN (``conv_impl`` resolving to "onednn", float32, the extension built) the factory
    makes ``batch_norm.FusedBatchNorm`` (same variables; passes over the activation fused and
    threaded on CPU), else ``flax.linen.BatchNorm``. Apply either with ``batch_norm.norm_act``.
    """
    fused = (
        resolve_conv_impl(getattr(module, "conv_impl", "xla")) == "onednn"
        and jnp.dtype(module.dtype) == jnp.float32
        and onednn.available()
    )
    return functools.partial(
        FusedBatchNorm if fused else nn.BatchNorm,
        use_running_average=not train,
        momentum=module.bn_momentum,
        epsilon=module.bn_epsilon,
        axis_name=module.bn_axis_name,
        dtype=module.dtype,
    )


def norm_axis_name(norm: Any) -> str | None:
    """The cross-device axis of a ``batch_norm`` factory (None outside a data-parallel step)."""
    return norm.keywords.get("axis_name") if isinstance(norm, functools.partial) else None


class ChannelDropout(nn.Module):
    """Channel dropout (PyTorch ``Dropout2d``) whose masks do not depend on the device count.

    Example ``i`` of the global batch keeps channel ``c`` by a draw from ``fold_in(key, i)``,
    where ``key`` is the step's one dropout key (the same on every device) and, inside
    ``shard_map`` over ``axis_name``, ``i = axis_index * local_batch + local index``. A batch split
    over 1, 2 or 4 devices therefore drops the same channels of the same images, so a run resumed
    on another device count continues as the uninterrupted run would (up to float rounding).

    Attributes:
      rate: Probability of dropping a channel.
      axis_name: The data-parallel axis (the model's ``bn_axis_name``), or None.
    """

    rate: float
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x_bhwc: jax.Array, deterministic: bool) -> jax.Array:
        """Drops whole channels of each image (B, H, W, C) with probability ``rate`` in training."""
        if deterministic or self.rate == 0.0:
            return x_bhwc
        if self.rate == 1.0:
            return jnp.zeros_like(x_bhwc)
        keep_b11c = self._keep_bc(x_bhwc.shape)[:, None, None, :]
        scaled = x_bhwc / jnp.asarray(1.0 - self.rate, x_bhwc.dtype)
        return jnp.where(keep_b11c, scaled, jnp.zeros_like(x_bhwc))

    def multiplier(self, x_bhwc: jax.Array, deterministic: bool) -> jax.Array | None:
        """The same drop as a (B, C) factor, 0 or ``1 / (1 - rate)``; None when nothing drops.

        For ``batch_norm.norm_act``, which applies it inside the fused BatchNorm pass. Draws the
        masks ``__call__`` would draw (same key, same example indices).
        """
        if deterministic or self.rate == 0.0:
            return None
        b, c = x_bhwc.shape[0], x_bhwc.shape[-1]
        if self.rate == 1.0:
            return jnp.zeros((b, c), x_bhwc.dtype)
        scale = jnp.asarray(1.0 / (1.0 - self.rate), x_bhwc.dtype)
        return jnp.where(self._keep_bc(x_bhwc.shape), scale, jnp.zeros((), x_bhwc.dtype))

    def _keep_bc(self, shape_bhwc: tuple[int, ...]) -> jax.Array:
        """(B, C) booleans: channel c of local example b is kept."""
        key = self.make_rng("dropout")
        local = shape_bhwc[0]
        first = 0 if self.axis_name is None else jax.lax.axis_index(self.axis_name) * local
        keep_prob = 1.0 - self.rate

        def keep(i):
            # Drawn as (1, 1, C), as before the fused path existed: the same masks as earlier runs.
            shape = (1, 1, shape_bhwc[-1])
            return jax.random.bernoulli(jax.random.fold_in(key, i), keep_prob, shape)[0, 0]

        return jax.vmap(keep)(first + jnp.arange(local))
