"""oneDNN convolutions for XLA:CPU through the XLA FFI, built on first use.

``onednn_conv.cc`` wraps oneDNN's ``convolution_forward``, ``convolution_backward_data`` and
``convolution_backward_weights`` (NHWC activations, HWIO weights, float32) as XLA FFI handlers;
the forward and backward-weights ones also come with a fused bias (its gradient summed inside the
primitive). ``available()`` compiles it with ``g++`` against the headers of jaxlib
(``jax.ffi.include_dir()``) and of the ``onednn-devel`` wheel, links it to ``libdnnl`` of the
``onednn`` wheel, caches the shared library under ``$XDG_CACHE_HOME/intrakd_jax`` (default
``~/.cache/intrakd_jax``) keyed by a hash of the source, the jaxlib version and the oneDNN version,
loads it and registers the handlers for the CPU platform. When any step fails it returns False
after one warning that says why, and ``models/conv.py`` uses its "fast" formulation instead.

Threading: the PyPI build of oneDNN runs its CPU engine on the SYCL runtime with TBB threads (one
per core of the process's affinity mask; ``OMP_NUM_THREADS`` does not apply). XLA's thread that
issues a custom call blocks until the convolution is done, so the two pools do not compete for
the cores except where XLA runs independent operations side by side.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

__all__ = [
    "available",
    "installed",
    "conv_backward_data",
    "conv_backward_weights",
    "conv_forward",
]

_SOURCES = tuple(Path(__file__).with_name(name) for name in ("onednn_conv.cc", "norm_act.cc"))
_TARGETS = {
    "intrakd_onednn_conv_forward": "IntrakdOnednnConvForward",
    "intrakd_onednn_conv_forward_bias": "IntrakdOnednnConvForwardBias",
    "intrakd_onednn_conv_backward_data": "IntrakdOnednnConvBackwardData",
    "intrakd_onednn_conv_backward_weights": "IntrakdOnednnConvBackwardWeights",
    "intrakd_onednn_conv_backward_weights_bias": "IntrakdOnednnConvBackwardWeightsBias",
    "intrakd_channel_sums": "IntrakdChannelSums",
    "intrakd_norm_act": "IntrakdNormAct",
    "intrakd_norm_act_grad_sums": "IntrakdNormActGradSums",
    "intrakd_norm_act_grad_input": "IntrakdNormActGradInput",
}
Pairs = tuple[tuple[int, int], tuple[int, int]]


class BuildError(RuntimeError):
    """The oneDNN extension cannot be built or loaded here; the message says why."""


def _dist_file(dist: str, suffix: str) -> Path:
    """Absolute path of the file of installed distribution ``dist`` whose path ends in suffix."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError as e:
        raise BuildError(f"the pip package {dist!r} is not installed") from e
    for f in files:
        if str(f).replace("\\", "/").endswith(suffix):
            return Path(f.locate()).resolve()
    raise BuildError(f"the pip package {dist!r} has no file ending in {suffix!r}")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "intrakd_jax"


def _build(verbose: bool = True) -> Path:
    """Compiles the extension unless a build for this source and these versions exists.

    Returns:
      The path of the shared library.

    Raises:
      BuildError: no compiler, no oneDNN, or the compilation failed.
    """
    compiler = os.environ.get("CXX") or shutil.which("g++")
    if not compiler:
        raise BuildError("no C++ compiler (g++ or $CXX) found")
    header = _dist_file("onednn-devel", "oneapi/dnnl/dnnl.hpp")
    library = _dist_file("onednn", "libdnnl.so.3")
    include_dnnl = header.parents[2]
    include_ffi = Path(jax.ffi.include_dir())
    flags = [
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        # -isystem: the headers' own warnings are not ours to print.
        "-isystem",
        str(include_ffi),
        "-isystem",
        str(include_dnnl),
        *map(str, _SOURCES),
        str(library),
        # DT_RPATH rather than DT_RUNPATH: it also resolves libdnnl's own dependencies (TBB,
        # the SYCL runtime), which the wheels put beside it.
        f"-Wl,-rpath,{library.parent}",
        "-Wl,--disable-new-dtags",
    ]
    key = hashlib.sha256(
        b"\0".join(
            [
                *(source.read_bytes() for source in _SOURCES),
                importlib.metadata.version("jaxlib").encode(),
                importlib.metadata.version("onednn").encode(),
                " ".join([compiler, *flags]).encode(),
            ]
        )
    ).hexdigest()[:16]
    out_dir = _cache_dir()
    target = out_dir / f"onednn_conv-{key}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: concurrent processes (pytest workers) may build at
    # once, and a reader must never see a half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    command = [compiler, *flags, "-o", tmp]
    if verbose:
        print("intrakd_jax: building the oneDNN convolution extension:", file=sys.stderr)
        print(" ".join(command), file=sys.stderr)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as e:
        os.unlink(tmp)
        raise BuildError(f"running {compiler} failed: {e}") from e
    if verbose and (proc.stdout or proc.stderr):
        print(proc.stdout + proc.stderr, file=sys.stderr)
    if proc.returncode != 0:
        os.unlink(tmp)
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        tail = [line for line in lines if "error" in line][:3] or lines[-3:]
        raise BuildError(f"{compiler} exited with {proc.returncode}: {' | '.join(tail)}")
    os.replace(tmp, target)
    return target


def _point_opencl_at_the_wheel() -> None:
    """Lets the SYCL runtime of the oneDNN wheel find its OpenCL CPU device.

    The ``intel-opencl-rt`` wheel's ICD file names a placeholder prefix that only conda rewrites,
    so under pip no OpenCL CPU device is found and oneDNN cannot create a CPU engine; the ICD
    loader also takes the driver from ``OCL_ICD_FILENAMES``.
    """
    try:
        driver = str(_dist_file("intel-opencl-rt", "libintelocl.so"))
    except BuildError:
        return
    current = os.environ.get("OCL_ICD_FILENAMES", "")
    if driver not in current.split(os.pathsep):
        os.environ["OCL_ICD_FILENAMES"] = os.pathsep.join(p for p in (driver, current) if p)


def _load(path: Path) -> None:
    """Loads the library, checks that oneDNN gets a CPU engine, registers the FFI targets."""
    _point_opencl_at_the_wheel()
    try:
        lib = ctypes.CDLL(str(path))
        check = lib.IntrakdOnednnCheck
    except (OSError, AttributeError) as e:
        raise BuildError(f"loading {path.name} failed: {e}") from e
    message = ctypes.create_string_buffer(512)
    if check(message, len(message)) != 0:
        raise BuildError(f"oneDNN has no CPU engine here: {message.value.decode(errors='replace')}")
    for target, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")


_lock = threading.Lock()
_state: dict[str, object] = {}  # "ok": bool once decided, "why": the reason when not


@functools.cache
def installed() -> bool:
    """Whether the ``onednn`` and ``onednn-devel`` pip packages are installed (nothing is built).

    Asked at every convolution's trace; the installed packages do not change within a process.
    """
    for dist in ("onednn", "onednn-devel"):
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return False
    return True


def available() -> bool:
    """Builds, loads and registers the extension on first call; False (one warning) if it can't.

    Thread-safe; the outcome is kept for the process.
    """
    with _lock:
        if "ok" not in _state:
            try:
                _load(_build())
                _state["ok"] = True
            except (BuildError, OSError) as e:  # OSError: e.g. an unwritable cache directory
                _state["ok"] = False
                _state["why"] = str(e)
                warnings.warn(
                    f'conv_impl="onednn" is unavailable ({e}); using the "fast" convolutions',
                    RuntimeWarning,
                    stacklevel=3,
                )
        return bool(_state["ok"])


def _attrs(strides: Sequence[int], padding: Pairs, dilation: Sequence[int]) -> dict:
    (pt, pb), (pl, pr) = padding
    values = dict(
        sh=strides[0], sw=strides[1], pt=pt, pb=pb, pl=pl, pr=pr, dh=dilation[0], dw=dilation[1]
    )
    # numpy int64 scalars become 64-bit attributes, as the handlers bind them.
    return {k: np.int64(v) for k, v in values.items()}


def _result(shape: Sequence[int], like: jax.Array) -> jax.ShapeDtypeStruct:
    """float32 result type varying over the shard_map axes of ``like`` (the operands share them)."""
    aval = jax.typeof(like)
    if not aval.manual_axis_type.varying:
        return jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    # Inside shard_map: the result varies over the manual axes as the operands do. A sharding
    # spec (the operand's, which is manual-axis only) must come with the axis type.
    return jax.ShapeDtypeStruct(
        tuple(shape),
        jnp.float32,
        sharding=jax.sharding.NamedSharding(aval.sharding.mesh, P()),
        manual_axis_type=aval.manual_axis_type,
    )


def _out_hw(in_hw, kernel_hw, strides, padding, dilation) -> tuple[int, int]:
    return tuple(
        (n + lo + hi - ((k - 1) * d + 1)) // s + 1
        for n, k, s, (lo, hi), d in zip(in_hw, kernel_hw, strides, padding, dilation, strict=True)
    )


def conv_forward(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Pairs,
    dilation: Sequence[int],
    bias: jax.Array | None = None,
    relu: bool = False,
) -> jax.Array:
    """Forward convolution in oneDNN, NHWC x HWIO -> NHWC, float32, non-negative padding.

    Args:
      x: (B, H, W, Cin).
      kernel: (kh, kw, Cin, Cout).
      strides: (sh, sw).
      padding: ((top, bottom), (left, right)), each >= 0.
      dilation: (dh, dw), 1 = dense.
      bias: (Cout,) added to every output position inside the primitive, or None.
      relu: Apply ReLU inside the primitive (an eltwise post-op).

    Returns:
      (B, Ho, Wo, Cout) as ``lax.conv_general_dilated`` (plus the bias, then the ReLU).
    """
    ho, wo = _out_hw(x.shape[1:3], kernel.shape[:2], strides, padding, dilation)
    out = _result((x.shape[0], ho, wo, kernel.shape[3]), x)
    attrs = {**_attrs(strides, padding, dilation), "relu": np.int64(relu)}
    if bias is None:
        call = jax.ffi.ffi_call("intrakd_onednn_conv_forward", out, vmap_method="sequential")
        return call(x, kernel, **attrs)
    call = jax.ffi.ffi_call("intrakd_onednn_conv_forward_bias", out, vmap_method="sequential")
    return call(x, kernel, bias, **attrs)


def conv_backward_data(
    g: jax.Array,
    kernel: jax.Array,
    x_shape: Sequence[int],
    strides: Sequence[int],
    padding: Pairs,
    dilation: Sequence[int],
) -> jax.Array:
    """Gradient of ``conv_forward`` (oneDNN) with respect to x, given the output cotangent g."""
    out = _result(x_shape, g)
    call = jax.ffi.ffi_call("intrakd_onednn_conv_backward_data", out, vmap_method="sequential")
    return call(g, kernel, **_attrs(strides, padding, dilation))


def conv_backward_weights(
    x: jax.Array,
    g: jax.Array,
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    padding: Pairs,
    dilation: Sequence[int],
    with_bias: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Gradient of ``conv_forward`` (oneDNN) with respect to the kernel (HWIO).

    With ``with_bias`` also the bias gradient (the sum of g over batch and positions, computed in
    the same primitive): returns (dW, db).
    """
    out = _result(kernel_shape, x)
    attrs = _attrs(strides, padding, dilation)
    if not with_bias:
        call = jax.ffi.ffi_call(
            "intrakd_onednn_conv_backward_weights", out, vmap_method="sequential"
        )
        return call(x, g, **attrs)
    outs = (out, _result(kernel_shape[3:], x))
    call = jax.ffi.ffi_call(
        "intrakd_onednn_conv_backward_weights_bias", outs, vmap_method="sequential"
    )
    return tuple(call(x, g, **attrs))


def _optional(a: jax.Array | None, like: jax.Array) -> jax.Array:
    """``a``, or the empty array the norm_act handlers read as "none".

    Sliced from ``like``, so inside shard_map it varies over the same axes as the other operands.
    """
    return like.reshape(-1)[:0] if a is None else a


def channel_sums(x: jax.Array) -> jax.Array:
    """Per-channel sums of an NHWC float32 array, in one pass on XLA's threads.

    Returns:
      (2, C): the sum of x and the sum of x**2 over every axis but the last (float partial sums
      of 32 rows added in float64, rounded to float32).
    """
    out = _result((2, x.shape[-1]), x)
    return jax.ffi.ffi_call("intrakd_channel_sums", out, vmap_method="sequential")(x)


def norm_act(
    x: jax.Array,
    scale_c: jax.Array,
    shift_c: jax.Array,
    relu: bool,
    multiplier_bc: jax.Array | None = None,
    residual: jax.Array | None = None,
) -> jax.Array:
    """``act(m[b, c] * (x * scale[c] + shift[c]) + residual)`` in one pass on XLA's threads.

    Like the convolution calls here, the operands must vary over the same shard_map axes
    (``conv.same_varying_axes``).

    Args:
      x: (B, H, W, C) float32.
      scale_c: (C,) factor.
      shift_c: (C,) offset.
      relu: ReLU when True, else the identity.
      multiplier_bc: (B, C) per-image channel multiplier (channel dropout), or None.
      residual: Like ``x``, added before the activation, or None.
    """
    coef = jnp.stack([scale_c, shift_c])
    m, r = _optional(multiplier_bc, x), _optional(residual, x)
    call = jax.ffi.ffi_call("intrakd_norm_act", _result(x.shape, x), vmap_method="sequential")
    return call(x, coef, m, r, relu=np.int64(relu))


def norm_act_grad_sums(
    g: jax.Array,
    y: jax.Array,
    x: jax.Array,
    mean_c: jax.Array,
    relu: bool,
    multiplier_bc: jax.Array | None = None,
) -> jax.Array:
    """(2, C) sums ``[sum u, sum u * (x - mean)]``, ``u = m * g * [y > 0]`` (``relu``) or ``m * g``.

    ``y`` is ``norm_act``'s output and ``g`` its cotangent; one pass on XLA's threads.
    """
    out = _result((2, x.shape[-1]), x)
    call = jax.ffi.ffi_call("intrakd_norm_act_grad_sums", out, vmap_method="sequential")
    return call(g, y, x, mean_c, _optional(multiplier_bc, x), relu=np.int64(relu))


def norm_act_grad_input(
    g: jax.Array,
    y: jax.Array,
    x: jax.Array,
    coef_4c: jax.Array,
    relu: bool,
    multiplier_bc: jax.Array | None = None,
) -> jax.Array:
    """The BatchNorm input gradient ``alpha * u + beta * (x - mean) + delta`` per channel.

    ``coef_4c = [alpha, beta, delta, mean]``; ``u`` as in ``norm_act_grad_sums``; one pass on
    XLA's threads.
    """
    call = jax.ffi.ffi_call(
        "intrakd_norm_act_grad_input", _result(x.shape, x), vmap_method="sequential"
    )
    return call(g, y, x, coef_4c, _optional(multiplier_bc, x), relu=np.int64(relu))
