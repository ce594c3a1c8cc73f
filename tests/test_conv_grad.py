"""Tests for intrakd_jax.models.conv: custom gradients against float64 XLA references.

Every check compares the "fast" path (custom VJPs, phase-form transposed convolution, reshape max
pooling) with plain ``jax.vjp`` of the corresponding ``lax`` / Flax operation evaluated in float64
(``jax.enable_x64``), or with brute-force numpy. float32 tolerance: 2e-5 of the
largest reference magnitude (sums of at most a few thousand float32 products; XLA's own float32
gradient is held to the same bound as a sanity check of the bound).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P

from intrakd_jax.models import ERFNet, PSPNet, count_params
from intrakd_jax.models import conv as conv_lib

RTOL = 2e-5
_DN = ("NHWC", "HWIO", "NHWC")


def _rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def _rand(rng, shape, relu=False):
    a = rng.normal(size=shape)
    return np.maximum(a, 0.0) if relu else a


def _ref_conv_grads(x, k, g, strides, padding, dilation):
    """float64 (y, dx, dw) of lax.conv_general_dilated via plain jax.vjp."""
    with jax.enable_x64(True):

        def f(a, b):
            return lax.conv_general_dilated(
                a, b, strides, padding, rhs_dilation=dilation, dimension_numbers=_DN
            )

        y, vjp = jax.vjp(f, jnp.asarray(x, jnp.float64), jnp.asarray(k, jnp.float64))
        dx, dw = vjp(jnp.asarray(g, jnp.float64))
        return np.asarray(y), np.asarray(dx), np.asarray(dw)


# (x shape, kernel shape, strides, padding, dilation): 1x1, 3x3, 3x1, 1x3, 7x7 kernels; strides
# 1 and 2; dilations 1, 2, 4, 8, 16; symmetric, asymmetric, zero and negative padding.
CONV_CASES = [
    ((2, 9, 11, 5), (1, 1, 5, 7), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    ((2, 10, 12, 5), (1, 1, 5, 6), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    ((2, 9, 11, 5), (3, 3, 5, 7), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    ((2, 10, 13, 4), (3, 3, 4, 6), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    ((2, 11, 12, 4), (3, 3, 4, 6), (2, 1), ((1, 0), (0, 2)), (1, 1)),
    ((2, 12, 7, 6), (3, 1, 6, 6), (1, 1), ((1, 1), (0, 0)), (1, 1)),
    ((2, 7, 12, 6), (1, 3, 6, 6), (1, 1), ((0, 0), (1, 1)), (1, 1)),
    ((2, 12, 5, 6), (3, 1, 6, 6), (1, 1), ((2, 2), (0, 0)), (2, 1)),
    ((2, 5, 14, 6), (1, 3, 6, 6), (1, 1), ((0, 0), (4, 4)), (1, 4)),
    ((2, 20, 4, 6), (3, 1, 6, 6), (1, 1), ((8, 8), (0, 0)), (8, 1)),
    ((2, 4, 36, 6), (1, 3, 6, 6), (1, 1), ((0, 0), (16, 16)), (1, 16)),
    ((1, 40, 6, 3), (3, 1, 3, 4), (1, 1), ((16, 16), (0, 0)), (16, 1)),
    ((2, 13, 15, 3), (7, 7, 3, 5), (2, 2), ((3, 3), (3, 3)), (1, 1)),
    ((2, 13, 15, 3), (7, 7, 3, 4), (1, 1), ((3, 3), (3, 3)), (1, 1)),
    ((2, 12, 12, 4), (3, 3, 4, 5), (1, 1), ((2, 2), (2, 2)), (2, 2)),
    ((2, 11, 10, 4), (3, 3, 4, 5), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    ((2, 11, 10, 4), (3, 3, 4, 5), (2, 2), ((-1, 2), (0, 1)), (1, 1)),
]


def _conv_out_shape(x, k, strides, padding, dilation):
    return jax.eval_shape(
        lambda a, b: lax.conv_general_dilated(
            a, b, strides, padding, rhs_dilation=dilation, dimension_numbers=_DN
        ),
        x,
        k,
    ).shape


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _fast_conv_grads(x, k, g, strides, padding, dilation):
    """(y, dx, dw) through the public custom VJP, and (dx, dw) of the CPU functions directly."""
    y, vjp = jax.vjp(lambda a, b: conv_lib.conv2d(a, b, strides, padding, dilation, "fast"), x, k)
    dx_cpu = conv_lib._conv_dx_cpu(x, k, g, strides, padding, dilation)
    dw_cpu = conv_lib._conv_dw_cpu(x, k, g, strides, padding, dilation)
    return y, *vjp(g), dx_cpu, dw_cpu


@functools.cache
def _case_data(index):
    """Random inputs and float64 reference (y, dx, dw) of CONV_CASES[index], computed once."""
    xs, ks, strides, padding, dilation = CONV_CASES[index]
    rng = np.random.default_rng(index)
    x = _rand(rng, xs, relu=True)
    k = _rand(rng, ks)
    g = rng.normal(size=_conv_out_shape(x, k, strides, padding, dilation))
    return (x, k, g), _ref_conv_grads(x, k, g, strides, padding, dilation)


# "taps" is the default for most layers and meets every case; the other forms a varied subset.
_METHOD_CASES = {
    "taps": range(len(CONV_CASES)),
    "im2col": (0, 3, 4, 8, 12, 16),
    "xla": (1, 2, 7, 11, 14, 16),
}


@pytest.mark.parametrize("method", sorted(_METHOD_CASES))
def test_conv_cpu_gradients_match_float64_reference(method, monkeypatch):
    # The per-shape method choice is forced so that every formulation meets varied shapes; the
    # public conv2d gradient (which must run the CPU branch here) is checked as well as the
    # internal CPU functions, so a silently skipped branch cannot pass.
    monkeypatch.setattr(conv_lib, "_dw_method", lambda *a: method)
    _fast_conv_grads.clear_cache()  # the method is read at trace time
    for index in _METHOD_CASES[method]:
        _, _, strides, padding, dilation = case = CONV_CASES[index]
        (x, k, g), (y64, dx64, dw64) = _case_data(index)
        x32, k32, g32 = (jnp.asarray(a, jnp.float32) for a in (x, k, g))
        y, dx, dw, dx_cpu, dw_cpu = _fast_conv_grads(x32, k32, g32, strides, padding, dilation)
        assert _rel_err(y, y64) < RTOL, case
        for got in (dx, dx_cpu):
            assert got.dtype == jnp.float32
            assert _rel_err(got, dx64) < RTOL, ("dx", case)
        for got in (dw, dw_cpu):
            assert got.dtype == jnp.float32
            assert _rel_err(got, dw64) < RTOL, ("dw", case)


def test_float32_tolerance_is_met_by_xla_itself():
    rng = np.random.default_rng(1)
    xs, ks, strides, padding, dilation = CONV_CASES[13]  # the 7x7 kernel: the longest sums
    x, k = _rand(rng, xs), _rand(rng, ks)
    g = rng.normal(size=(2, 13, 15, 4))
    _, dx64, dw64 = _ref_conv_grads(x, k, g, strides, padding, dilation)
    _, vjp = jax.vjp(
        lambda a, b: conv_lib.conv2d(a, b, strides, padding, dilation, "xla"),
        jnp.asarray(x, jnp.float32),
        jnp.asarray(k, jnp.float32),
    )
    dx, dw = vjp(jnp.asarray(g, jnp.float32))
    assert _rel_err(dx, dx64) < RTOL and _rel_err(dw, dw64) < RTOL


def test_default_method_choice_is_valid_for_erfnet_and_resnet_shapes():
    shapes = [(3, 3, 3, 13), (3, 1, 64, 64), (1, 3, 128, 128), (1, 1, 1024, 256), (2, 2, 128, 256)]
    for ks in shapes:
        for strides in ((1, 1), (2, 2)):
            assert conv_lib._dw_method(ks, strides) in ("taps", "im2col", "xla")
    assert conv_lib._dw_method((1, 1, 1024, 256), (1, 1)) == "taps"


@pytest.mark.parametrize("impl", ["fast", "onednn"])
def test_conv_gradient_inside_shard_map_sums_over_devices(impl):
    # The train step differentiates replicated params inside shard_map: dW must be the sum of the
    # per-device contributions and dX stay per device, as with XLA's gradient.
    n_dev = 4
    mesh = jax.make_mesh((n_dev,), ("data",), devices=jax.devices()[:n_dev])
    rng = np.random.default_rng(2)
    x = jnp.asarray(_rand(rng, (n_dev * 2, 8, 9, 16), relu=True), jnp.float32)
    k = jnp.asarray(_rand(rng, (3, 1, 16, 128)), jnp.float32)
    b = jnp.asarray(_rand(rng, (128,)), jnp.float32)  # onednn: the fused-bias primitives

    def loss(kernel, bias, xb, impl):
        def per_device(kernel, bias, xb):
            y = conv_lib.conv2d(xb, kernel, 1, ((1, 1), (0, 0)), 1, impl, bias=bias)
            return jax.lax.psum(jnp.sum(y * y), "data")

        specs = (P(), P(), P("data"))
        return jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P())(kernel, bias, xb)

    x = jax.device_put(x, jax.NamedSharding(mesh, P("data")))
    grads = {
        name: jax.jit(jax.grad(functools.partial(loss, impl=name), argnums=(0, 1, 2)))(k, b, x)
        for name in (impl, "xla")
    }
    for a, b in zip(grads[impl], grads["xla"], strict=True):
        assert _rel_err(a, b) < 1e-5


# ---------------------------------------------------------------- transposed convolution


TRANSPOSE_CASES = [
    ((2, 5, 7, 6), (3, 3), (2, 2), ((1, 2), (1, 2))),  # ERFNet upsampler: k3 s2 p1 op1
    ((2, 5, 7, 8), (2, 2), (2, 2), ((1, 1), (1, 1))),  # ERFNet output conv: k2 s2 p0
    ((2, 5, 7, 4), (3, 3), (2, 2), ((2, 2), (2, 2))),  # k3 s2 p0
    ((2, 4, 6, 4), (3, 3), (2, 2), "SAME"),
    ((2, 4, 6, 4), (3, 2), (3, 2), "VALID"),
    ((2, 4, 5, 3), (4, 4), (2, 2), ((0, 3), (2, 1))),
    ((2, 6, 5, 3), (3, 3), (1, 1), ((1, 1), (2, 0))),
]


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _transpose_grads(x, k, g, strides, padding, transpose_kernel, impl):
    y, vjp = jax.vjp(
        lambda a, b: conv_lib.conv_transpose2d(a, b, strides, padding, transpose_kernel, impl),
        x,
        k,
    )
    return y, *vjp(g)


def _ref_transpose_grads(x, k, g, strides, padding, transpose_kernel):
    with jax.enable_x64(True):
        y, vjp = jax.vjp(
            lambda a, b: lax.conv_transpose(
                a, b, strides, padding, dimension_numbers=_DN, transpose_kernel=transpose_kernel
            ),
            jnp.asarray(x, jnp.float64),
            jnp.asarray(k, jnp.float64),
        )
        return (np.asarray(y), *(np.asarray(c) for c in vjp(jnp.asarray(g, jnp.float64))))


@pytest.mark.parametrize("transpose_kernel", [True, False])
def test_conv_transpose_matches_lax_conv_transpose(transpose_kernel):
    rng = np.random.default_rng(3)
    for xs, (kh, kw), strides, padding in TRANSPOSE_CASES:
        cin, cout = xs[-1], 5
        ks = (kh, kw, cout, cin) if transpose_kernel else (kh, kw, cin, cout)
        x, k = _rand(rng, xs), _rand(rng, ks)
        y_shape = jax.eval_shape(
            functools.partial(
                lax.conv_transpose,
                strides=strides,
                padding=padding,
                dimension_numbers=_DN,
                transpose_kernel=transpose_kernel,
            ),
            x,
            k,
        ).shape
        g = rng.normal(size=y_shape)
        y64, dx64, dk64 = _ref_transpose_grads(x, k, g, strides, padding, transpose_kernel)
        y, dx, dk = _transpose_grads(
            *(jnp.asarray(a, jnp.float32) for a in (x, k, g)),
            strides,
            padding,
            transpose_kernel,
            "fast",
        )
        case = (xs, (kh, kw), strides, padding)
        assert _rel_err(y, y64) < RTOL, case
        assert _rel_err(dx, dx64) < RTOL, ("dx", case)
        assert _rel_err(dk, dk64) < RTOL, ("dk", case)


def test_conv_transpose_matches_brute_force_pytorch_formula():
    # Independent of lax: out[s*i - p + t] += x[i] @ w[:, :, t] (PyTorch ConvTranspose2d).
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 3, 4, 2))
    w_torch = rng.normal(size=(2, 3, 3, 3))  # (in, out, kh, kw)
    s, p, op = 2, 1, 1
    full = np.zeros((1, (3 - 1) * s + 3 + op, (4 - 1) * s + 3 + op, 3))
    for i in range(3):
        for j in range(4):
            for a in range(3):
                for b in range(3):
                    full[:, i * s + a, j * s + b] += x[:, i, j] @ w_torch[:, :, a, b]
    want = full[:, p : p + 6, p : p + 8]
    pad = ((3 - 1 - p, 3 - 1 - p + op),) * 2
    got = conv_lib.conv_transpose2d(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(w_torch.transpose(2, 3, 1, 0), jnp.float32),
        (s, s),
        pad,
        True,
        "fast",
    )
    assert _rel_err(got, want) < RTOL


# ---------------------------------------------------------------- max pooling


def _max_pool_grad_numpy(x, g):
    """2x2 max pool gradient routed to the first (row-major) maximum of each window."""
    dx = np.zeros_like(x)
    b, h, w, c = x.shape
    for bi in range(b):
        for i in range(h // 2):
            for j in range(w // 2):
                for ch in range(c):
                    win = x[bi, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, ch].reshape(-1)
                    a = int(np.argmax(win))  # first occurrence
                    dx[bi, 2 * i + a // 2, 2 * j + a % 2, ch] += g[bi, i, j, ch]
    return dx


def test_max_pool_gradient_routes_ties_to_the_first_maximum():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, size=(2, 6, 8, 3)).astype(np.float32)  # many ties, as after ReLU
    g = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
    y, vjp = jax.vjp(lambda a: conv_lib.max_pool(a, (2, 2), impl="fast"), jnp.asarray(x))
    (dx,) = vjp(jnp.asarray(g))
    np.testing.assert_array_equal(np.asarray(y), x.reshape(2, 3, 2, 4, 2, 3).max(axis=(2, 4)))
    np.testing.assert_allclose(np.asarray(dx), _max_pool_grad_numpy(x, g), rtol=0, atol=0)
    # XLA's select-and-scatter gradient agrees, ties included.
    _, vjp_xla = jax.vjp(lambda a: nn.max_pool(a, (2, 2), strides=(2, 2)), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(vjp_xla(jnp.asarray(g))[0]))


def test_max_pool_falls_back_for_windows_that_do_not_tile():
    x = jnp.asarray(np.random.default_rng(6).normal(size=(1, 7, 6, 2)), jnp.float32)
    got = conv_lib.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    want = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# ---------------------------------------------------------------- modules and models


def test_modules_are_drop_ins_for_flax_conv_and_conv_transpose():
    x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 6, 8, 3)), jnp.float32)
    pairs = [
        (
            nn.Conv(4, (3, 1), strides=(2, 1), padding=((1, 1), (0, 0)), kernel_dilation=(1, 1)),
            conv_lib.Conv(4, (3, 1), strides=(2, 1), padding=((1, 1), (0, 0))),
        ),
        (nn.Conv(5, (1, 1), use_bias=False), conv_lib.Conv(5, (1, 1), use_bias=False)),
        (
            nn.ConvTranspose(
                4, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), transpose_kernel=True
            ),
            conv_lib.ConvTranspose(
                4, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), transpose_kernel=True
            ),
        ),
    ]
    for flax_mod, ours in pairs:
        v_flax = flax_mod.init(jax.random.key(0), x)
        v_ours = ours.init(jax.random.key(0), x)
        assert jax.tree.structure(v_flax) == jax.tree.structure(v_ours)
        for a, b in zip(jax.tree.leaves(v_flax), jax.tree.leaves(v_ours), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_allclose(
            np.asarray(ours.apply(v_ours, x)), np.asarray(flax_mod.apply(v_flax, x)), atol=1e-5
        )


def test_bfloat16_inputs_give_bfloat16_gradients():
    x = jnp.ones((1, 6, 6, 16), jnp.bfloat16)
    k = jnp.ones((3, 1, 16, 128), jnp.bfloat16)
    _, vjp = jax.vjp(lambda a, b: conv_lib.conv2d(a, b, 1, ((1, 1), (0, 0))), x, k)
    dx, dw = vjp(jnp.ones((1, 6, 6, 128), jnp.bfloat16))
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    # Interior taps see 6 * 6 = 36 ones; the edge taps 30.
    np.testing.assert_array_equal(np.asarray(dw[:, 0, 0, 0], np.float32), [30.0, 36.0, 30.0])


def test_bad_impl_is_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="ERFNet.conv_impl"):
        ERFNet(num_classes=3, conv_impl="cudnn")
    with pytest.raises(ValueError, match="PSPNet.conv_impl"):
        PSPNet(num_classes=3, conv_impl="fastest")
    with pytest.raises(ValueError, match="conv2d impl"):
        conv_lib.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((1, 1, 2, 2)), impl="slow")
    with pytest.raises(ValueError, match="padding"):
        conv_lib.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((1, 1, 2, 2)), padding="FULL")


def _model_grads(model, variables, x, labels, train):
    @jax.jit
    def grads(params):
        def loss(p):
            (logits, taps), _ = model.apply(
                {"params": p, "batch_stats": variables["batch_stats"]},
                x,
                train=train,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(1)},
            )
            logp = jax.nn.log_softmax(logits)
            ce = -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))
            return ce + sum(jnp.mean(t * t) for t in taps.values())

        return jax.grad(loss)(params)

    return grads(variables["params"])


# The student trains with batch statistics; the teacher's gradient is checked with running
# statistics, because batch statistics over its few 1/8-resolution pixels per channel (tiny test
# inputs) amplify float32 rounding of the forward pass far beyond the convolutions' own error.
@pytest.mark.parametrize(
    "make,train",
    [
        (
            lambda impl: ERFNet(
                num_classes=3,
                channels=(4, 8, 12),
                num_stage1_blocks=1,
                num_stage2_repeats=1,
                stage2_dilations=(2,),
                conv_impl=impl,
            ),
            True,
        ),
        (
            lambda impl: PSPNet(
                num_classes=3, depth=18, base_width=4, head_channels=8, bins=(1, 2), conv_impl=impl
            ),
            False,
        ),
    ],
    ids=["erfnet", "pspnet18"],
)
def test_model_gradients_fast_equal_xla(make, train, monkeypatch):
    # Tiny widths would all pick XLA's dW; force the matrix-product forms to run.
    monkeypatch.setattr(conv_lib, "_dw_method", lambda *a: "taps")
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(2, 16, 24, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=(2, 16, 24)), jnp.int32)
    fast, xla = make("fast"), make("xla")
    # Same parameter tree (names, shapes, count); the initial values are the same too (checked
    # per module in test_modules_are_drop_ins_for_flax_conv_and_conv_transpose).
    shapes_fast = jax.eval_shape(fast.init, jax.random.key(0), x)
    shapes_xla = jax.eval_shape(xla.init, jax.random.key(0), x)
    assert jax.tree.structure(shapes_fast) == jax.tree.structure(shapes_xla)
    assert count_params(shapes_fast) == count_params(shapes_xla)
    for a, b in zip(jax.tree.leaves(shapes_fast), jax.tree.leaves(shapes_xla), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    variables = jax.jit(xla.init)(jax.random.key(0), x)
    g_fast = _model_grads(fast, variables, x, labels, train)
    g_xla = _model_grads(xla, variables, x, labels, train)
    scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(g_xla))
    for path, a in jax.tree_util.tree_leaves_with_path(g_fast):
        b = functools.reduce(lambda t, k: t[k.key], path, g_xla)
        err = float(jnp.max(jnp.abs(a - b))) / scale
        assert err < 1e-4, (jax.tree_util.keystr(path), err)


@pytest.fixture
def xla_optimizations():
    """XLA's fusion passes on, as in training (conftest.py turns most off for compile time)."""
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", True)


@pytest.mark.parametrize("impl", ["fast", "onednn"])
def test_erfnet_gradients_with_dropout_equal_xla(impl, xla_optimizations):
    # Dropout scales by 1 / keep_prob before the downsampler's max pooling. The pooling gradient
    # once compared its input with the forward's max; XLA recomputed that input in another fusion
    # with another rounding, whole windows lost their gradient, and the encoder's kernels got
    # gradients up to 25 % off (global norm 1.996 against 2.067 here) in every training step.
    rng = np.random.default_rng(23)
    x = jnp.asarray(rng.normal(size=(4, 16, 32, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=(4, 16, 32)), jnp.int32)

    def make(conv_impl):
        return ERFNet(
            num_classes=3,
            channels=(4, 8, 12),
            num_stage1_blocks=1,
            num_stage2_repeats=1,
            stage2_dilations=(2,),
            stage1_dropout=0.3,
            stage2_dropout=0.3,
            conv_impl=conv_impl,
        )

    variables = jax.jit(make("xla").init)(jax.random.key(0), x[:1])

    def grads(model):
        def loss(p):
            (logits, _), _ = model.apply(
                {"params": p, "batch_stats": variables["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(5)},
            )
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))

        return jax.jit(jax.grad(loss))(variables["params"])

    want, got = grads(make("xla")), grads(make(impl))
    scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(want))
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
    ):
        err = float(jnp.max(jnp.abs(a - b))) / scale
        assert err < 1e-4, (jax.tree_util.keystr(path), err)
