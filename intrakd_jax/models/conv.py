"""Convolution, transposed convolution and 2x2 max pooling, fast on CPU, with custom gradients.

XLA:CPU computes a convolution's weight gradient (dW) as a convolution with the batch as the
contraction axis, which runs 3 to 15 times slower than the forward convolution of the same size;
the transposed convolution is an input-dilated convolution (three of four multiply-adds hit
inserted zeros) whose dW takes seconds at ERFNet's decoder sizes; max pooling's gradient is a
select-and-scatter that costs 30x its forward; and 1x1 convolutions with thousands of input
channels run at a third of matrix-product speed. This module computes the same functions in
other formulations:

* ``conv2d``: a ``jax.custom_vjp``. Forward: a matrix product for 1x1 kernels, a sum over
  512-channel slices for kernels with >= 2048 input channels, XLA's convolution otherwise. dW: a
  sum over kernel taps of 2-D products ``x_tap (N, Cin)^T @ dy (N, Cout)`` with N = B*Ho*Wo
  (each tap a strided slice of the padded input), or XLA's own for few channels (``_dw_method``).
  dX: a product for 1x1, XLA's transposed convolution for stride 1, and the phase form below for
  strided kernels.
* ``conv_transpose2d``: a stride-1 convolution producing the ``s*s`` output phases as channels,
  then depth-to-space, i.e. no inserted zeros; its gradients are those of ``conv2d`` (plus a
  gather of the kernel), so no input-dilated convolution appears anywhere.
* ``max_pool``: non-overlapping windows as a reshape and max, with a gradient that routes each
  window's cotangent to its first maximum (row-major), as XLA's select-and-scatter and PyTorch do.

The replacements are used on CPU only, selected inside the compiled program with
``jax.lax.platform_dependent``; elsewhere (GPU/TPU) XLA's convolution and gradients run.
``impl="xla"`` gives the plain Flax/XLA computation everywhere, e.g. to compare. Results agree
with XLA's to float32 rounding (tests/test_conv_grad.py).

``impl="onednn"`` runs ``conv2d``'s forward pass, dX and dW as oneDNN primitives (XLA FFI custom
calls, ``models/onednn``; the extension is compiled on first use) on CPU for float32 operands,
and the phase-form transposed convolution on top of them; max pooling is the "fast" one. Other
dtypes, and machines where the extension cannot be built (one warning says why), get "fast";
GPU/TPU get XLA's (tests/test_onednn_conv.py). ``impl="auto"``, the models' default, is
"onednn" where its pip packages are installed and "fast" otherwise (``resolve_conv_impl``).

The modules ``Conv`` and ``ConvTranspose`` are drop-ins for the ``nn.Conv`` / ``nn.ConvTranspose``
uses in this package: the same parameter names, shapes, initialisers and RNG use, so checkpoints
and parameter counts do not depend on ``impl``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax

# Light: the extension is built only when available() is first called.
from intrakd_jax.models import onednn

__all__ = [
    "CONV_IMPLS",
    "Conv",
    "ConvImpl",
    "ConvTranspose",
    "check_conv_impl",
    "resolve_conv_impl",
    "conv2d",
    "conv_transpose2d",
    "max_pool",
]

ConvImpl = Literal["auto", "fast", "xla", "onednn"]
CONV_IMPLS = ("auto", "fast", "xla", "onednn")

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
Pairs = tuple[tuple[int, int], tuple[int, int]]


def check_conv_impl(where: str, impl: Any) -> None:
    """Raises ValueError unless ``impl`` is one of ``CONV_IMPLS``; ``where`` names the field."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"{where} must be one of {CONV_IMPLS}, got {impl!r}")


def resolve_conv_impl(impl: ConvImpl) -> ConvImpl:
    """``impl`` with "auto" made concrete: "onednn" where its pip packages are installed, else fast.

    "onednn" was the fastest CPU step in every measurement (BENCHMARKS.md, issue 16) but its
    runtimes take about 2 GB, so it is used when the user installed it; without it the "fast"
    path runs and one log line says how to get oneDNN. GPU/TPU run XLA's convolutions either way.
    """
    check_conv_impl("conv_impl", impl)
    if impl != "auto":
        return impl
    if onednn.installed():
        return "onednn"
    _log_auto_without_onednn()
    return "fast"


@functools.cache
def _log_auto_without_onednn() -> None:
    if jax.default_backend() == "cpu":
        logging.info(
            'conv_impl="auto": oneDNN is not installed, using the "fast" convolutions; '
            "pip install onednn==2026.1.0 onednn-devel==2026.1.0 for 1.2-1.9x faster CPU steps"
        )


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return (int(value), int(value))
    values = tuple(int(v) for v in value)
    if len(values) != 2:
        raise ValueError(f"conv: {name} must be an int or 2 ints, got {value!r}")
    return values  # type: ignore[return-value]


def _padding_pairs(
    padding: str | int | Sequence[Any],
    in_hw: Sequence[int],
    window_hw: Sequence[int],
    strides: Sequence[int],
) -> Pairs:
    """Explicit ((lo, hi), (lo, hi)) padding from 'SAME' / 'VALID' / int / pairs."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"conv: padding must be 'SAME', 'VALID' or pairs, got {padding!r}")
        pads = lax.padtype_to_pads(tuple(in_hw), tuple(window_hw), tuple(strides), padding.upper())
        return tuple((int(lo), int(hi)) for lo, hi in pads)  # type: ignore[return-value]
    if isinstance(padding, int | np.integer):
        return ((int(padding), int(padding)),) * 2  # type: ignore[return-value]
    pairs = []
    for p in padding:
        lo, hi = (p, p) if isinstance(p, int | np.integer) else p
        pairs.append((int(lo), int(hi)))
    if len(pairs) != 2:
        raise ValueError(f"conv: padding must give 2 spatial axes, got {padding!r}")
    return tuple(pairs)  # type: ignore[return-value]


def _xla_conv(x, kernel, strides, padding, dilation):
    return lax.conv_general_dilated(
        x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=_DIMENSION_NUMBERS
    )


# ----------------------------------------------------------------------------------------------
# conv2d with a custom gradient
# ----------------------------------------------------------------------------------------------


def conv2d(
    x_bhwc: jax.Array,
    kernel_hwio: jax.Array,
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence[Any] = "VALID",
    dilation: int | Sequence[int] = 1,
    impl: ConvImpl = "auto",
    bias: jax.Array | None = None,
    relu: bool = False,
) -> jax.Array:
    """2-D convolution (cross-correlation), NHWC / HWIO, as ``lax.conv_general_dilated``.

    Args:
      x_bhwc: Input (B, H, W, Cin).
      kernel_hwio: Kernel (kh, kw, Cin, Cout), same dtype as the input.
      strides: Window strides.
      padding: 'SAME', 'VALID', an int or ((lo, hi), (lo, hi)); negative values crop.
      dilation: Kernel (atrous) dilation.
      impl: "auto" (``resolve_conv_impl``: "onednn" where installed, else "fast"), "fast" for
        the CPU-tuned gradient, "xla" for XLA's, "onednn" for oneDNN's
        convolutions (forward, dX and dW) on CPU through the XLA FFI; "onednn" computes float32
        only and uses "fast" for other dtypes or where the extension cannot be built.
      bias: (Cout,) added to the output, or None. oneDNN adds it inside the convolution and sums
        its gradient inside the backward-weights primitive, saving two passes over the output.
      relu: Apply ReLU to the result. oneDNN applies it inside the convolution (a post-op),
        saving a pass over the output; its gradient is masked by the output before the
        backward primitives.

    Returns:
      (B, Ho, Wo, Cout) in the input dtype. Forward values are XLA's in "fast" and "xla" mode.
    """
    check_conv_impl("conv2d impl", impl)
    impl = resolve_conv_impl(impl)
    if x_bhwc.ndim != 4 or kernel_hwio.ndim != 4 or x_bhwc.shape[-1] != kernel_hwio.shape[2]:
        raise ValueError(
            f"conv2d: expected x (B, H, W, C) and kernel (kh, kw, C, Cout), got {x_bhwc.shape} "
            f"and {kernel_hwio.shape}"
        )
    s = _pair(strides, "strides")
    d = _pair(dilation, "dilation")
    window = [(k - 1) * di + 1 for k, di in zip(kernel_hwio.shape[:2], d, strict=True)]
    pads = _padding_pairs(padding, x_bhwc.shape[1:3], window, s)
    if bias is not None and bias.shape != kernel_hwio.shape[3:]:
        raise ValueError(
            f"conv2d: expected a bias of shape ({kernel_hwio.shape[3]},), got {bias.shape}"
        )
    if impl == "onednn" and _onednn_applies(x_bhwc, kernel_hwio, bias):
        # oneDNN takes non-negative padding only: a negative pad is a crop, done here so that
        # its gradient (a pad) comes from JAX.
        x_bhwc = x_bhwc[
            :,
            max(-pads[0][0], 0) : x_bhwc.shape[1] - max(-pads[0][1], 0),
            max(-pads[1][0], 0) : x_bhwc.shape[2] - max(-pads[1][1], 0),
        ]
        pads = tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads)
        x_bhwc, kernel_hwio, bias = same_varying_axes(x_bhwc, kernel_hwio, bias)
        return _conv_onednn(x_bhwc, kernel_hwio, bias, s, pads, d, relu)
    if impl == "xla":
        y = _xla_conv(x_bhwc, kernel_hwio, s, pads, d)
    else:
        x_bhwc, kernel_hwio = same_varying_axes(x_bhwc, kernel_hwio)
        y = _conv_fast(x_bhwc, kernel_hwio, s, pads, d)
    y = y if bias is None else y + bias
    return jax.nn.relu(y) if relu else y


def _onednn_applies(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> bool:
    """Whether ``impl="onednn"`` runs oneDNN: float32 operands and a built extension.

    The extension is built (or found in the cache) on the first call; when that fails,
    ``onednn.available`` warns once and every "onednn" convolution runs the "fast" formulation.
    """
    if any(a is not None and a.dtype != jnp.float32 for a in (x, kernel, bias)):
        return False
    if jax.default_backend() != "cpu":
        # On GPU/TPU the CPU branch never runs: no build, no warning about a missing oneDNN.
        return False
    return onednn.available()


def _varying_axes(a: jax.Array) -> frozenset:
    """shard_map manual axes over which ``a`` varies (empty outside shard_map)."""
    return jax.typeof(a).manual_axis_type.varying


def same_varying_axes(*arrays: jax.Array | None) -> list[jax.Array | None]:
    """Casts arrays (None entries pass through) to vary over the union of their shard_map axes.

    Inside ``shard_map`` the (replicated) kernel does not vary over the data axis while the
    activations do. A custom gradient must return each cotangent with its primal's type, so the
    kernel is made varying before entering ``_conv_fast`` (whose dW is then per device) and the
    transpose of this cast sums dW over devices, exactly as XLA's own gradient would.
    """
    axes = set().union(*(_varying_axes(a) for a in arrays if a is not None))
    out = []
    for a in arrays:
        if a is None:
            out.append(a)
            continue
        missing = tuple(sorted(axes - _varying_axes(a)))
        out.append(lax.pcast(a, missing, to="varying") if missing else a)
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_fast(x, kernel, strides, padding, dilation):
    return lax.platform_dependent(
        x,
        kernel,
        cpu=functools.partial(
            _conv_forward_cpu, strides=strides, padding=padding, dilation=dilation
        ),
        default=functools.partial(_xla_conv, strides=strides, padding=padding, dilation=dilation),
    )


def _conv_fast_fwd(x, kernel, strides, padding, dilation):
    return _conv_fast(x, kernel, strides, padding, dilation), (x, kernel)


def _is_pointwise(kernel_shape, padding) -> bool:
    """1x1 kernel without padding: the convolution is a matrix product over channels."""
    return kernel_shape[0] == kernel_shape[1] == 1 and padding == ((0, 0), (0, 0))


# Input channels per convolution above which the CPU forward pass splits the channels (see
# _conv_forward_cpu).
_SPLIT_CHANNELS = 2048
_SPLIT_CHUNK = 512


def _conv_forward_cpu(x, kernel, strides, padding, dilation):
    """Forward convolution in the fastest measured CPU form.

    XLA:CPU's convolution runs 1x1 kernels with many input channels at a third of its matrix
    product speed (2048 -> 512 channels at 26x122, batch 4: 834 ms as a convolution, 247 ms as a
    product), and kernels with thousands of input channels faster as a sum of convolutions over
    512-channel slices (PSPNet's 3x3 4096 -> 512 head: 4.6 s whole, 3.2 s in eight slices).
    """
    if _is_pointwise(kernel.shape, padding):
        xs = x[:, :: strides[0], :: strides[1]]
        b, h, w, cin = xs.shape
        y = jnp.dot(xs.reshape(b * h * w, cin), kernel[0, 0], preferred_element_type=jnp.float32)
        return y.reshape(b, h, w, -1).astype(x.dtype)
    cin = kernel.shape[2]
    if cin < _SPLIT_CHANNELS:
        return _xla_conv(x, kernel, strides, padding, dilation)
    total = None
    for start in range(0, cin, _SPLIT_CHUNK):
        part = _xla_conv(
            x[..., start : start + _SPLIT_CHUNK],
            kernel[:, :, start : start + _SPLIT_CHUNK],
            strides,
            padding,
            dilation,
        )
        total = part if total is None else total + part
    return total


def _conv_fast_bwd(strides, padding, dilation, residuals, g):
    x, kernel = residuals

    def xla_grads(x, kernel, g):
        _, vjp = jax.vjp(lambda a, b: _xla_conv(a, b, strides, padding, dilation), x, kernel)
        return vjp(g)

    def cpu_grads(x, kernel, g):
        dx = _conv_dx_cpu(x, kernel, g, strides, padding, dilation)
        dw = _conv_dw_cpu(x, kernel, g, strides, padding, dilation)
        return dx, dw

    return lax.platform_dependent(x, kernel, g, cpu=cpu_grads, default=xla_grads)


_conv_fast.defvjp(_conv_fast_fwd, _conv_fast_bwd)


# ----------------------------------------------------------------------------------------------
# conv2d through oneDNN (XLA FFI custom calls, CPU only)
# ----------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _conv_onednn(x, kernel, bias, strides, padding, dilation, relu):
    """The convolution (plus ``bias`` unless None, then ReLU if ``relu``) in oneDNN on CPU."""

    def cpu(x, kernel, bias):
        return onednn.conv_forward(x, kernel, strides, padding, dilation, bias, relu)

    def default(x, kernel, bias):
        y = _xla_conv(x, kernel, strides, padding, dilation)
        y = y if bias is None else y + bias
        return jax.nn.relu(y) if relu else y

    return lax.platform_dependent(x, kernel, bias, cpu=cpu, default=default)


def _conv_onednn_fwd(x, kernel, bias, strides, padding, dilation, relu):
    y = _conv_onednn(x, kernel, bias, strides, padding, dilation, relu)
    # The output is kept only for the ReLU mask (it is the next layer's input, kept anyway).
    return y, (x, kernel, bias, y if relu else None)


def _conv_onednn_bwd(strides, padding, dilation, relu, residuals, g):
    x, kernel, bias, y = residuals
    no_bias = bias is None
    if relu:
        g = jnp.where(y > 0, g, jnp.zeros_like(g))

    def xla_grads(x, kernel, g):
        _, vjp = jax.vjp(lambda a, b: _xla_conv(a, b, strides, padding, dilation), x, kernel)
        dx, dw = vjp(g)
        return dx, dw, None if no_bias else jnp.sum(g, axis=(0, 1, 2))

    def cpu_grads(x, kernel, g):
        # Inside shard_map x, kernel, bias and g vary over the same axes (conv2d casts them), so
        # dW and db are per device here and the transpose of conv2d's cast sums them, as for
        # "fast".
        dx = onednn.conv_backward_data(g, kernel, x.shape, strides, padding, dilation)
        if no_bias:
            dw = onednn.conv_backward_weights(x, g, kernel.shape, strides, padding, dilation)
            return dx, dw, None
        dw, db = onednn.conv_backward_weights(
            x, g, kernel.shape, strides, padding, dilation, with_bias=True
        )
        return dx, dw, db

    return lax.platform_dependent(x, kernel, g, cpu=cpu_grads, default=xla_grads)


_conv_onednn.defvjp(_conv_onednn_fwd, _conv_onednn_bwd)


def _tap_slices(x_bhwc, kernel_hw, out_hw, strides, padding, dilation):
    """Yields ((i, j), x_tap (B, Ho, Wo, Cin)): the input pixels that meet kernel tap (i, j)."""
    x_pad = lax.pad(
        x_bhwc,
        jnp.zeros((), x_bhwc.dtype),
        ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)),
    )
    b, _, _, c = x_pad.shape
    (sh, sw), (dh, dw) = strides, dilation
    ho, wo = out_hw
    for i in range(kernel_hw[0]):
        for j in range(kernel_hw[1]):
            start = (0, i * dh, j * dw, 0)
            limit = (b, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c)
            yield (i, j), lax.slice(x_pad, start, limit, (1, sh, sw, 1))


def _dw_method(kernel_shape: Sequence[int], strides: Sequence[int]) -> str:
    """Fastest dW formulation for a kernel shape ("taps", "im2col" or "xla") on CPU.

    From per-layer measurements (BENCHMARKS.md, ERFNet layers at CULane size, batch 4, 2-core
    x86-64). A tap's dW is a (Cin, N) x (N, Cout) product with N = B*Ho*Wo, which runs far from
    matmul speed when Cin*Cout is small; XLA's own dW convolution degrades as the channels grow
    and, inside a whole training step, adds two layout transposes of the activations (C, H, W, B)
    that cost as much as the convolution. So: the products from 48x48 channels on (and for 1x1
    kernels, a single product without slicing, from 8x8), XLA below. "im2col" (one product of
    the concatenated taps) measured no faster than "taps" and is kept for tests.
    """
    del strides
    kh, kw, cin, cout = kernel_shape
    channels = cin * cout
    if kh * kw == 1:
        return "taps" if channels >= 64 else "xla"
    return "taps" if channels >= 48 * 48 else "xla"


def _conv_dw_cpu(x, kernel, g, strides, padding, dilation):
    # The primals passed to jax.vjp below are the real arrays, not zeros of their shape: inside
    # shard_map they carry the varying-axes type that the cotangent must match. The forward
    # convolution that jax.vjp traces is unused and removed by XLA.
    method = _dw_method(kernel.shape, strides)
    kh, kw, cin, cout = kernel.shape
    if method == "xla":
        _, vjp = jax.vjp(lambda k: _xla_conv(x, k, strides, padding, dilation), kernel)
        return vjp(g)[0]
    g_nd = g.reshape(-1, cout)
    contract_rows = (((0,), (0,)), ((), ()))
    taps = _tap_slices(x, (kh, kw), g.shape[1:3], strides, padding, dilation)
    if method == "im2col":
        patches = jnp.concatenate([t for _, t in taps], axis=-1).reshape(-1, kh * kw * cin)
        dw = lax.dot_general(patches, g_nd, contract_rows, preferred_element_type=jnp.float32)
        return dw.reshape(kh, kw, cin, cout).astype(x.dtype)
    per_tap = [
        lax.dot_general(t.reshape(-1, cin), g_nd, contract_rows, preferred_element_type=jnp.float32)
        for _, t in taps
    ]
    return jnp.stack(per_tap).reshape(kh, kw, cin, cout).astype(x.dtype)


def _conv_dx_cpu(x, kernel, g, strides, padding, dilation):
    """dX: a product for 1x1, XLA's transposed convolution for stride 1, else the phase form."""
    if _is_pointwise(kernel.shape, padding):
        b, ho, wo, cout = g.shape
        dx = jnp.dot(
            g.reshape(-1, cout), kernel[0, 0].T, preferred_element_type=jnp.float32
        ).astype(x.dtype)
        dx = dx.reshape(b, ho, wo, -1)
        if strides == (1, 1):
            return dx
        # Strided 1x1: the gradient lands on every stride-th pixel, zeros elsewhere.
        (sh, sw), (h, w) = strides, x.shape[1:3]
        return lax.pad(
            dx,
            jnp.zeros((), dx.dtype),
            (
                (0, 0, 0),
                (0, h - 1 - (ho - 1) * sh, sh - 1),
                (0, w - 1 - (wo - 1) * sw, sw - 1),
                (0, 0, 0),
            ),
        )
    if strides == (1, 1) or dilation != (1, 1):
        _, vjp = jax.vjp(lambda a: _xla_conv(a, kernel, strides, padding, dilation), x)
        return vjp(g)[0]
    # dX[i] = sum over (o, t) with s*o - lo + t = i of g[o] K[t]^T: a transposed convolution of g
    # with PyTorch padding lo, whose output length is the input's.
    taps_kernel = jnp.swapaxes(kernel, 2, 3)  # (kh, kw, Cout, Cin): g channels -> x channels
    return _transposed_conv_phases(
        g,
        taps_kernel,
        strides,
        (padding[0][0], padding[1][0]),
        x.shape[1:3],
        "fast",
    )


# ----------------------------------------------------------------------------------------------
# Transposed convolution as a stride-1 convolution over phases
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _phase_plan(kernel: int, stride: int, pad: int, in_len: int, out_len: int):
    """Index plan of one axis of a transposed convolution in phase form.

    Output o = stride * m + a (phase a) receives x[i] K[t] for stride * i - pad + t = o, i.e.
    i = m + delta with delta = (a + pad - t) / stride when that is an integer. The combined
    stride-1 convolution has one kernel position per delta in [delta_min, delta_max].

    Returns:
      (tap_da int array (D, stride): K tap for (delta, phase) or -1, padding (lo, hi) of the
      stride-1 convolution, number of phase rows M).
    """
    deltas = {}
    for a in range(stride):
        for t in range(kernel):
            num = a + pad - t
            if num % stride == 0:
                deltas[(num // stride, a)] = t
    if not deltas:
        raise ValueError("conv_transpose2d: no kernel tap reaches the output")
    d_min = min(d for d, _ in deltas)
    d_max = max(d for d, _ in deltas)
    tap_da = -np.ones((d_max - d_min + 1, stride), np.int64)
    for (d, a), t in deltas.items():
        tap_da[d - d_min, a] = t
    rows = -(-out_len // stride)  # ceil
    # Phase row m reads x[m + delta]: pad so that m + d_min .. m + d_max is always in range.
    lo = -d_min
    hi = (rows - 1 + d_max) - (in_len - 1)
    return tap_da, (lo, hi), rows


def _transposed_conv_phases(x, taps_kernel, strides, pads, out_hw, impl):
    """y[o] = sum over (i, t) with s*i - p + t = o of x[i] @ taps_kernel[t], per spatial axis.

    Args:
      x: (B, H, W, Cx).
      taps_kernel: (kh, kw, Cx, Cy).
      strides: (sh, sw).
      pads: PyTorch-style (ph, pw), may be negative.
      out_hw: output (Ho, Wo).
      impl: passed to ``conv2d`` for the stride-1 convolution.

    Returns:
      (B, Ho, Wo, Cy).
    """
    kh, kw, cx, cy = taps_kernel.shape
    (sh, sw), (ph, pw) = strides, pads
    tap_h, pad_h, rows = _phase_plan(kh, sh, ph, x.shape[1], out_hw[0])
    tap_w, pad_w, cols = _phase_plan(kw, sw, pw, x.shape[2], out_hw[1])
    dh, dw = tap_h.shape[0], tap_w.shape[0]
    # Combined kernel (Dh, Dw, Cx, sh, sw, Cy): a zero where a (delta, phase) pair has no tap.
    th = tap_h[:, None, :, None]  # (Dh, 1, sh, 1)
    tw = tap_w[None, :, None, :]  # (1, Dw, 1, sw)
    valid = (th >= 0) & (tw >= 0)
    gathered = taps_kernel[np.maximum(th, 0), np.maximum(tw, 0)]  # (Dh, Dw, sh, sw, Cx, Cy)
    gathered = jnp.where(valid[..., None, None], gathered, jnp.zeros((), gathered.dtype))
    combined = gathered.transpose(0, 1, 4, 2, 3, 5).reshape(dh, dw, cx, sh * sw * cy)
    y = conv2d(x, combined, 1, (pad_h, pad_w), 1, impl)  # (B, rows, cols, sh*sw*Cy)
    b = x.shape[0]
    y = y.reshape(b, rows, cols, sh, sw, cy).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(b, rows * sh, cols * sw, cy)
    return y[:, : out_hw[0], : out_hw[1]]


def _transpose_string_padding(kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """(lo, hi) padding of the dilated input that ``lax.conv_transpose`` uses for SAME / VALID."""
    mode = padding.upper()
    if mode == "SAME":
        total = kernel + stride - 2
        lo = kernel - 1 if stride > kernel - 1 else -(-total // 2)
    elif mode == "VALID":
        total = kernel + stride - 2 + max(kernel - stride, 0)
        lo = kernel - 1
    else:
        raise ValueError(
            f"conv_transpose2d: padding must be 'SAME', 'VALID' or pairs, got {padding!r}"
        )
    return lo, total - lo


def conv_transpose2d(
    x_bhwc: jax.Array,
    kernel: jax.Array,
    strides: int | Sequence[int],
    padding: str | int | Sequence[Any],
    transpose_kernel: bool = True,
    impl: ConvImpl = "auto",
) -> jax.Array:
    """``lax.conv_transpose`` (NHWC, no kernel dilation) without input dilation in "fast" mode.

    Args:
      x_bhwc: Input (B, H, W, Cin).
      kernel: (kh, kw, Cout, Cin) with ``transpose_kernel=True`` (PyTorch ``ConvTranspose2d``
        weights (Cin, Cout, kh, kw) transposed by (2, 3, 1, 0)), else (kh, kw, Cin, Cout).
      strides: Strides (the upsampling factors).
      padding: 'SAME', 'VALID', an int or explicit ((lo, hi), (lo, hi)) padding of the
        stride-dilated input, as ``lax.conv_transpose``.
      transpose_kernel: As ``lax.conv_transpose``.
      impl: "auto", "fast" (phase form with ``conv2d`` gradients), "onednn" (the same phase
        form with its convolution in oneDNN) or "xla" (``lax.conv_transpose``).

    Returns:
      (B, Ho, Wo, Cout) with Ho = (H - 1) * sh + lo + hi - kh + 2 for explicit padding.
    """
    check_conv_impl("conv_transpose2d impl", impl)
    impl = resolve_conv_impl(impl)
    s = _pair(strides, "strides")
    kh, kw = kernel.shape[:2]
    if isinstance(padding, str):
        pairs = tuple(
            _transpose_string_padding(k, st, padding) for k, st in zip((kh, kw), s, strict=True)
        )
    else:
        pairs = _padding_pairs(padding, x_bhwc.shape[1:3], (kh, kw), s)
    if impl == "xla":
        return lax.conv_transpose(
            x_bhwc,
            kernel,
            s,
            pairs,
            dimension_numbers=_DIMENSION_NUMBERS,
            transpose_kernel=transpose_kernel,
        )
    # taps_kernel[t] maps input channels to output channels with o = s*i - p + t.
    if transpose_kernel:
        taps_kernel = jnp.swapaxes(kernel, 2, 3)  # (kh, kw, Cin, Cout)
    else:
        taps_kernel = kernel[::-1, ::-1]  # lax correlates the dilated input with the unflipped K
    in_hw = x_bhwc.shape[1:3]
    out_hw = tuple(
        (n - 1) * st + lo + hi - k + 2
        for n, st, (lo, hi), k in zip(in_hw, s, pairs, (kh, kw), strict=True)
    )
    torch_pads = tuple(k - 1 - lo for k, (lo, _) in zip((kh, kw), pairs, strict=True))
    # "onednn": the phase form's stride-1 convolution and its gradients run in oneDNN.
    return _transposed_conv_phases(x_bhwc, taps_kernel, s, torch_pads, out_hw, impl)


# ----------------------------------------------------------------------------------------------
# Max pooling
# ----------------------------------------------------------------------------------------------


def max_pool(
    x_bhwc: jax.Array,
    window: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    impl: ConvImpl = "auto",
) -> jax.Array:
    """``nn.max_pool``; non-overlapping VALID windows that tile the input get a cheap gradient.

    Args:
      x_bhwc: Input (B, H, W, C).
      window: (wh, ww).
      strides: Defaults to the window.
      padding: As ``nn.max_pool``.
      impl: "auto", "fast" and "onednn" use the reshape form where it applies (on CPU; elsewhere the
        plain gradient); "xla" always ``nn.max_pool``.

    Returns:
      The pooled features.
    """
    check_conv_impl("max_pool impl", impl)
    impl = resolve_conv_impl(impl)
    window = tuple(int(w) for w in window)
    strides = window if strides is None else tuple(int(s) for s in strides)
    tiles = (
        strides == window
        and isinstance(padding, str)
        and padding.upper() == "VALID"
        and x_bhwc.ndim == 4
        and x_bhwc.shape[1] % window[0] == 0
        and x_bhwc.shape[2] % window[1] == 0
    )
    if impl == "xla" or not tiles:
        return nn.max_pool(x_bhwc, window, strides=strides, padding=padding)
    return _max_pool_tiles(x_bhwc, window)


def _window_view(x_bhwc, window):
    b, h, w, c = x_bhwc.shape
    wh, ww = window
    return x_bhwc.reshape(b, h // wh, wh, w // ww, ww, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_tiles(x_bhwc, window):
    return jnp.max(_window_view(x_bhwc, window), axis=(2, 4))


def _window_positions(view_shape, window):
    """Row-major position i * ww + j inside the window, over a ``_window_view`` shape (int32)."""
    return lax.broadcasted_iota(jnp.int32, view_shape, 2) * window[1] + lax.broadcasted_iota(
        jnp.int32, view_shape, 4
    )


def _window_argmax(x_bhwc, window):
    """Row-major position (i * ww + j) of each window's first maximum, (B, h, w, C) int32.

    One variadic reduction computes it from the values it compares, so every window gets exactly
    one position. (Comparing the input with the forward's max instead lost the gradient of whole
    windows when XLA recomputed the input in another fusion with another rounding, e.g. the
    1 / keep_prob scaling of dropout before an ERFNet downsampler.)
    """
    xv = _window_view(x_bhwc, window)  # (B, h, wh, w, ww, C)
    pos = _window_positions(xv.shape, window)

    def first_max(a, b):
        (av, ai), (bv, bi) = a, b
        take_a = (av > bv) | ((av == bv) & (ai < bi)) | jnp.isnan(av)
        return jnp.where(take_a, av, bv), jnp.where(take_a, ai, bi)

    init = (jnp.array(-jnp.inf, x_bhwc.dtype), jnp.array(np.iinfo(np.int32).max, jnp.int32))
    _, index = lax.reduce((xv, pos), init, first_max, (2, 4))
    return index


def _max_pool_tiles_fwd(x_bhwc, window):
    y = _max_pool_tiles(x_bhwc, window)
    index = lax.platform_dependent(
        x_bhwc,
        cpu=lambda x: _window_argmax(x, window),
        # Unused (XLA's gradient off CPU); derived from x so that it varies over shard_map axes
        # as the CPU branch's result does.
        default=lambda x: x[:, :: window[0], :: window[1], :].astype(jnp.int32) * 0,
    )
    return y, (x_bhwc, index)


def _max_pool_tiles_bwd(window, residuals, g):
    x_bhwc, index = residuals

    def xla_grad(x_bhwc, index, g):
        _, vjp = jax.vjp(lambda a: nn.max_pool(a, window, strides=window), x_bhwc)
        return vjp(g)[0]

    def cpu_grad(x_bhwc, index, g):
        # Each window's cotangent goes to its first maximum (row-major), as select-and-scatter.
        wh, ww = window
        shape = (*index.shape[:2], wh, index.shape[2], ww, index.shape[3])
        pos = _window_positions(shape, window)
        hit = pos == index[:, :, None, :, None, :]
        dx = jnp.where(hit, g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
        return dx.reshape(x_bhwc.shape)

    return (lax.platform_dependent(x_bhwc, index, g, cpu=cpu_grad, default=xla_grad),)


_max_pool_tiles.defvjp(_max_pool_tiles_fwd, _max_pool_tiles_bwd)


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------

_default_kernel_init = nn.initializers.lecun_normal()


class Conv(nn.Module):
    """Drop-in for ``nn.Conv`` (2-D, NHWC, no groups) with ``conv2d``'s gradients.

    Parameters ``kernel`` (kh, kw, Cin, features) and ``bias`` (features,) as in ``nn.Conv``.

    Attributes:
      features: Output channels.
      kernel_size: (kh, kw).
      strides: Window strides.
      padding: 'SAME', 'VALID', an int or ((lo, hi), (lo, hi)).
      kernel_dilation: Atrous dilation.
      use_bias: Whether to add a bias.
      dtype: Compute dtype (None: inferred from input and params, as Flax).
      param_dtype: Parameter dtype.
      kernel_init: Kernel initialiser.
      bias_init: Bias initialiser.
      impl: "auto", "fast" (CPU-tuned gradients), "onednn" (oneDNN on CPU) or "xla".
      relu: Apply ReLU to the output (inside the convolution with "onednn").
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | int | Sequence[Any] = "SAME"
    kernel_dilation: int | Sequence[int] = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable[..., Any] = _default_kernel_init
    bias_init: Callable[..., Any] = nn.initializers.zeros_init()
    impl: ConvImpl = "auto"
    relu: bool = False

    @nn.compact
    def __call__(self, x_bhwc: jax.Array) -> jax.Array:
        """Applies the convolution to (B, H, W, Cin) inputs."""
        check_conv_impl(f"Conv({self.name}).impl", self.impl)
        if x_bhwc.ndim != 4:
            raise ValueError(f"Conv({self.name}): expected (B, H, W, C) input, got {x_bhwc.shape}")
        kh, kw = _pair(self.kernel_size, "kernel_size")
        kernel = self.param(
            "kernel", self.kernel_init, (kh, kw, x_bhwc.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x_bhwc, kernel, bias = nn.dtypes.promote_dtype(x_bhwc, kernel, bias, dtype=self.dtype)
        return conv2d(
            x_bhwc,
            kernel,
            self.strides,
            self.padding,
            self.kernel_dilation,
            self.impl,
            bias,
            self.relu,
        )


class ConvTranspose(nn.Module):
    """Drop-in for ``nn.ConvTranspose`` (2-D, NHWC, no kernel dilation), phase form when fast.

    Parameters ``kernel`` ((kh, kw, features, Cin) with ``transpose_kernel``, else
    (kh, kw, Cin, features)) and ``bias`` (features,) as in ``nn.ConvTranspose``.

    Attributes:
      features: Output channels.
      kernel_size: (kh, kw).
      strides: Upsampling strides.
      padding: 'SAME', 'VALID', an int or explicit ((lo, hi), (lo, hi)) (of the dilated input).
      use_bias: Whether to add a bias.
      dtype: Compute dtype (None: inferred).
      param_dtype: Parameter dtype.
      kernel_init: Kernel initialiser.
      bias_init: Bias initialiser.
      transpose_kernel: As ``nn.ConvTranspose``.
      impl: "auto", "fast", "onednn" or "xla".
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | int | Sequence[Any] = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable[..., Any] = _default_kernel_init
    bias_init: Callable[..., Any] = nn.initializers.zeros_init()
    transpose_kernel: bool = False
    impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x_bhwc: jax.Array) -> jax.Array:
        """Applies the transposed convolution to (B, H, W, Cin) inputs."""
        check_conv_impl(f"ConvTranspose({self.name}).impl", self.impl)
        if x_bhwc.ndim != 4:
            raise ValueError(
                f"ConvTranspose({self.name}): expected (B, H, W, C) input, got {x_bhwc.shape}"
            )
        kh, kw = _pair(self.kernel_size, "kernel_size")
        cin = x_bhwc.shape[-1]
        shape = (
            (kh, kw, self.features, cin) if self.transpose_kernel else (kh, kw, cin, self.features)
        )
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x_bhwc, kernel, bias = nn.dtypes.promote_dtype(x_bhwc, kernel, bias, dtype=self.dtype)
        y = conv_transpose2d(
            x_bhwc, kernel, self.strides, self.padding, self.transpose_kernel, self.impl
        )
        if bias is not None:
            y = y + bias
        return y
