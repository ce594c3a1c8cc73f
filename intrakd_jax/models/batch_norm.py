"""BatchNorm fused with channel dropout, a residual and ReLU, for ``conv_impl="onednn"``.

On XLA:CPU a training BatchNorm with its ReLU is many passes over the activation, each on one
thread: two reductions and the normalisation forward, two reductions and the input gradient
backward, plus separate passes for the ReLU, the channel dropout and a residual addition. Here
the forward is two passes (per-channel sums; then ``act(m * (x * a + s) + r)``) and the backward
two (the two per-channel gradient sums; then the input gradient), each split over XLA's intra-op
threads (``onednn/norm_act.cc``); the statistics and gradient sums are summed over the data axis
between the passes, so cross-device BatchNorm is exact.

``FusedBatchNorm`` has the variables of ``flax.linen.BatchNorm`` (``params/{scale,bias}``,
``batch_stats/{mean,var}``), the same statistics (biased variance ``E[x^2] - E[x]^2``, running
averages with ``momentum``) and the same result up to float rounding (sums of 32 rows in
float, added in float64). ``norm_act`` applies either module the same way, so models call one
function whatever the factory (``layers.batch_norm``) chose. Off CPU the same computation runs
as jnp (XLA).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from intrakd_jax.models import onednn
from intrakd_jax.models.conv import same_varying_axes

__all__ = ["FusedBatchNorm", "norm_act"]


def norm_act(
    bn: nn.Module,
    x_bhwc: jax.Array,
    *,
    relu: bool = False,
    multiplier_bc: jax.Array | None = None,
    residual_bhwc: jax.Array | None = None,
) -> jax.Array:
    """``act(m[b, c] * bn(x) + residual)`` with a ``FusedBatchNorm`` or any other norm module.

    Args:
      bn: A bound norm module (``FusedBatchNorm`` fuses; others run the ops one after another).
      x_bhwc: Its input (B, H, W, C).
      relu: Apply ReLU last.
      multiplier_bc: (B, C) per-image channel multiplier (``ChannelDropout.multiplier``), or None.
        A constant for the gradient (a dropout mask): its cotangent is zero in the fused path.
      residual_bhwc: Added after the multiplier and before the activation, or None.
    """
    if isinstance(bn, FusedBatchNorm):
        return bn(x_bhwc, relu=relu, multiplier_bc=multiplier_bc, residual_bhwc=residual_bhwc)
    y = bn(x_bhwc)
    if multiplier_bc is not None:
        y = y * multiplier_bc[:, None, None, :].astype(y.dtype)
    if residual_bhwc is not None:
        y = y + residual_bhwc
    return nn.relu(y) if relu else y


class FusedBatchNorm(nn.Module):
    """BatchNorm over the last axis of NHWC float32 activations, fused with ``norm_act``'s ops.

    Attributes:
      use_running_average: Normalise with the running statistics (evaluation) instead of the
        batch's (training, which also updates them).
      momentum: Running-average decay, as ``flax.linen.BatchNorm``.
      epsilon: Added to the variance.
      axis_name: Data-parallel axis the batch statistics are summed over (inside shard_map).
      dtype: Must be float32 (the kernels' type); kept for the factory's uniform keywords.
    """

    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x_bhwc: jax.Array,
        *,
        relu: bool = False,
        multiplier_bc: jax.Array | None = None,
        residual_bhwc: jax.Array | None = None,
    ) -> jax.Array:
        """Normalises ``x_bhwc`` and applies ``norm_act``'s multiplier, residual and ReLU."""
        if jnp.dtype(self.dtype) != jnp.float32 or x_bhwc.dtype != jnp.float32:
            raise ValueError(
                f"FusedBatchNorm: float32 only, got dtype={jnp.dtype(self.dtype).name} and "
                f"input {x_bhwc.dtype}"
            )
        c = x_bhwc.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if multiplier_bc is not None:
            multiplier_bc = multiplier_bc.astype(jnp.float32)
        if self.use_running_average:
            a = scale * lax.rsqrt(ra_var.value + self.epsilon)
            s = bias - ra_mean.value * a
            x, a, s, m, r = same_varying_axes(x_bhwc, a, s, multiplier_bc, residual_bhwc)
            return _affine_act(x, a, s, m, r, relu)
        # As flax: no cross-device statistics and no running-average update while initialising.
        axis_name = None if self.is_initializing() else self.axis_name
        x, scale_v, bias_v, m, r = same_varying_axes(
            x_bhwc, scale, bias, multiplier_bc, residual_bhwc
        )
        y, mean, var = _train_norm_act(x, scale_v, bias_v, m, r, self.epsilon, axis_name, relu)
        if not self.is_initializing():
            mean, var = lax.stop_gradient((mean, var))
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y


def _cpu_or_jnp(cpu, default, *args):
    """``cpu(*args)`` on CPU (the FFI kernels), ``default(*args)`` on other platforms."""
    return lax.platform_dependent(*args, cpu=cpu, default=default)


def _count(x: jax.Array, axis_name: str | None) -> int:
    """Elements per channel over the whole (global) batch."""
    local = x.size // x.shape[-1]
    return local * (lax.axis_size(axis_name) if axis_name else 1)


def _sums_jnp(x):
    return jnp.stack([jnp.sum(x, axis=(0, 1, 2)), jnp.sum(x * x, axis=(0, 1, 2))])


def _apply_jnp(x, a, s, m, r, relu):
    y = x * a + s
    if m is not None:
        y = y * m[:, None, None, :]
    if r is not None:
        y = y + r
    return jnp.maximum(y, 0.0) if relu else y


def _apply(x, a, s, m, r, relu):
    return _cpu_or_jnp(
        lambda x, a, s, m, r: onednn.norm_act(x, a, s, relu, m, r),
        lambda x, a, s, m, r: _apply_jnp(x, a, s, m, r, relu),
        x,
        a,
        s,
        m,
        r,
    )


def _upstream_jnp(g, y, m, relu):
    u = jnp.where(y > 0, g, 0.0) if relu else g
    return u * m[:, None, None, :] if m is not None else u


def _grad_sums(g, y, x, mean, m, relu):
    # The statistics were summed over the data axis: cast to vary as the kernel's other operands.
    _, mean = same_varying_axes(x, mean)

    def jnp_sums(g, y, x, mean, m):
        u = _upstream_jnp(g, y, m, relu)
        return jnp.stack([jnp.sum(u, axis=(0, 1, 2)), jnp.sum(u * (x - mean), axis=(0, 1, 2))])

    return _cpu_or_jnp(
        lambda g, y, x, mean, m: onednn.norm_act_grad_sums(g, y, x, mean, relu, m),
        jnp_sums,
        g,
        y,
        x,
        mean,
        m,
    )


def _grad_input(g, y, x, coef_4c, m, relu):
    _, coef_4c = same_varying_axes(x, coef_4c)

    def jnp_input(g, y, x, coef_4c, m):
        alpha, beta, delta, mean = coef_4c
        return alpha * _upstream_jnp(g, y, m, relu) + beta * (x - mean) + delta

    return _cpu_or_jnp(
        lambda g, y, x, coef_4c, m: onednn.norm_act_grad_input(g, y, x, coef_4c, relu, m),
        jnp_input,
        g,
        y,
        x,
        coef_4c,
        m,
    )


def _constant_and_residual_grads(g, y, m, relu, has_residual):
    """Cotangents of the multiplier (a dropout mask: zero) and the residual (g through the ReLU)."""
    dm = None if m is None else jnp.zeros_like(m)
    dr = _upstream_jnp(g, y, None, relu) if has_residual else None
    return dm, dr


def _statistics(x, axis_name):
    """Mean and biased variance per channel over the global batch."""
    sums = _cpu_or_jnp(onednn.channel_sums, _sums_jnp, x)
    if axis_name:
        sums = lax.psum(sums, axis_name)
    n = _count(x, axis_name)
    mean = sums[0] / n
    return mean, jnp.maximum(sums[1] / n - mean * mean, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _train_norm_act(x, scale, bias, m, r, epsilon, axis_name, relu):
    """``act(m * bn(x) + r)`` with batch statistics; returns (y, mean, var)."""
    return _train_norm_act_fwd(x, scale, bias, m, r, epsilon, axis_name, relu)[0]


def _train_norm_act_fwd(x, scale, bias, m, r, epsilon, axis_name, relu):
    mean, var = _statistics(x, axis_name)
    invstd = lax.rsqrt(var + epsilon)
    a = scale * invstd
    y = _apply(x, a, bias - mean * a, m, r, relu)
    return (y, mean, var), (x, y, scale, mean, invstd, m, r is not None)


def _train_norm_act_bwd(epsilon, axis_name, relu, residuals, cotangents):
    # The statistics are returned for the running averages only (``stop_gradient``-ed by the
    # module): their cotangents are zero and not propagated.
    del epsilon
    x, y, scale, mean, invstd, m, has_residual = residuals
    g = cotangents[0]
    local = _grad_sums(g, y, x, mean, m, relu)
    total = lax.psum(local, axis_name) if axis_name else local
    n = _count(x, axis_name)
    alpha = scale * invstd
    beta = -alpha * invstd * invstd * total[1] / n
    delta = -alpha * total[0] / n
    dx = _grad_input(g, y, x, jnp.stack([alpha, beta, delta, mean]), m, relu)
    # This device's share of the parameter gradients: scale and bias entered varying, so the
    # transpose of that cast sums the shares over the data axis.
    dscale = local[1] * invstd
    dbias = local[0]
    return dx, dscale, dbias, *_constant_and_residual_grads(g, y, m, relu, has_residual)


_train_norm_act.defvjp(_train_norm_act_fwd, _train_norm_act_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _affine_act(x, a, s, m, r, relu):
    """``act(m * (x * a + s) + r)`` (evaluation: running statistics folded into a and s)."""
    return _apply(x, a, s, m, r, relu)


def _affine_act_fwd(x, a, s, m, r, relu):
    y = _apply(x, a, s, m, r, relu)
    return y, (x, y, a, m, r is not None)


def _affine_act_bwd(relu, residuals, g):
    # Rarely taken (gradients through a model in evaluation mode): plain jnp.
    x, y, a, m, has_residual = residuals
    u = _upstream_jnp(g, y, m, relu)
    da = jnp.sum(u * x, axis=(0, 1, 2))
    ds = jnp.sum(u, axis=(0, 1, 2))
    return a * u, da, ds, *_constant_and_residual_grads(g, y, m, relu, has_residual)


_affine_act.defvjp(_affine_act_fwd, _affine_act_bwd)
