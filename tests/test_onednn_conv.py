"""Tests for conv_impl="onednn": oneDNN convolutions behind XLA FFI custom calls.

Every primitive (forward, backward-data, backward-weights) is checked against a float64 numpy
reference written here (a loop over kernel taps) and against XLA's convolution, with values and
gradients, under ``jax.jit``, ``jax.vmap`` and ``jax.shard_map`` over the four simulated CPU
devices of conftest.py; then a few ERFNet training steps against ``conv_impl="xla"``, and the
fallback to "fast" when the extension cannot be built. The extension is built (or taken from the
cache) at import: these tests fail, not skip, where it cannot be, so CI always runs them.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intrakd_jax import models, optim, parallel, steps
from intrakd_jax.models import conv as conv_lib
from intrakd_jax.models import onednn

RTOL = 2e-5  # as tests/test_conv_grad.py: float32 sums of at most a few hundred products


def setup_module():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed build must fail here with its reason
        assert onednn.available()


def _rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def _explicit(padding, x_shape, k_shape, strides, dilation):
    return conv_lib._padding_pairs(
        padding,
        x_shape[1:3],
        [(k - 1) * d + 1 for k, d in zip(k_shape[:2], dilation, strict=True)],
        strides,
    )


def _numpy_conv(x, k, strides, pads, dilation, g=None):
    """float64 y, and (dx, dw) for cotangent g: a direct sum over kernel taps.

    y[b, o, p, :] = sum_{i, j} xp[b, o*sh + i*dh, p*sw + j*dw, :] @ k[i, j] with xp the input
    padded by ``pads`` (negative values crop).
    """
    (sh, sw), (dh, dw) = strides, dilation
    kh, kw, _, cout = k.shape
    (pt, pb), (pl, pr) = pads
    b, h, w, c = x.shape
    xp = np.zeros((b, h + max(pt, 0) + max(pb, 0), w + max(pl, 0) + max(pr, 0), c))
    xp[:, max(pt, 0) : max(pt, 0) + h, max(pl, 0) : max(pl, 0) + w] = x
    xp = xp[:, max(-pt, 0) : xp.shape[1] - max(-pb, 0), max(-pl, 0) : xp.shape[2] - max(-pr, 0)]
    ho = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1

    def tap(i, j):
        return (
            slice(None),
            slice(i * dh, i * dh + (ho - 1) * sh + 1, sh),
            slice(j * dw, j * dw + (wo - 1) * sw + 1, sw),
        )

    y = np.zeros((b, ho, wo, cout))
    for i in range(kh):
        for j in range(kw):
            y += np.einsum("bhwc,co->bhwo", xp[tap(i, j)], k[i, j])
    if g is None:
        return y
    dxp = np.zeros_like(xp)
    dw_ = np.zeros_like(k)
    for i in range(kh):
        for j in range(kw):
            dw_[i, j] = np.einsum("bhwc,bhwo->co", xp[tap(i, j)], g)
            dxp[tap(i, j)] += np.einsum("bhwo,co->bhwc", g, k[i, j])
    # Undo the padding / crop: padded rows get no gradient, cropped rows get zero.
    dx = np.zeros_like(x)
    full = np.zeros((b, h + max(pt, 0) + max(pb, 0), w + max(pl, 0) + max(pr, 0), c))
    full[
        :,
        max(-pt, 0) : full.shape[1] - max(-pb, 0),
        max(-pl, 0) : full.shape[2] - max(-pr, 0),
    ] = dxp
    dx[:] = full[:, max(pt, 0) : max(pt, 0) + h, max(pl, 0) : max(pl, 0) + w]
    return y, dx, dw_


# (x shape, kernel shape, strides, padding, dilation): 1x1, 3x3, 3x1, 1x3 kernels; strides 1 and
# 2; dilations 1, 2, 4; SAME, VALID, symmetric, asymmetric and negative (cropping) padding.
CASES = [
    ((2, 7, 9, 5), (1, 1, 5, 6), (1, 1), "VALID", (1, 1)),
    ((2, 8, 10, 5), (1, 1, 5, 4), (2, 2), "SAME", (1, 1)),
    ((2, 7, 9, 4), (3, 3, 4, 6), (1, 1), "SAME", (1, 1)),
    ((2, 9, 11, 4), (3, 3, 4, 5), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    ((2, 9, 10, 4), (3, 3, 4, 5), (2, 1), ((1, 0), (0, 2)), (1, 1)),
    ((2, 8, 9, 3), (3, 3, 3, 4), (1, 1), "VALID", (2, 2)),
    ((2, 10, 6, 6), (3, 1, 6, 6), (1, 1), ((1, 1), (0, 0)), (1, 1)),
    ((2, 6, 10, 6), (1, 3, 6, 6), (1, 1), ((0, 0), (1, 1)), (1, 1)),
    ((2, 12, 5, 6), (3, 1, 6, 6), (1, 1), ((4, 4), (0, 0)), (4, 1)),
    ((2, 5, 12, 6), (1, 3, 6, 6), (1, 1), ((0, 0), (2, 2)), (1, 2)),
    ((2, 11, 10, 4), (3, 3, 4, 5), (2, 2), ((-1, 2), (0, 1)), (1, 1)),
    ((1, 9, 8, 3), (3, 3, 3, 13), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # ERFNet's first layer
]


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _conv_and_grads(x, k, g, strides, padding, dilation, impl):
    y, vjp = jax.vjp(lambda a, b: conv_lib.conv2d(a, b, strides, padding, dilation, impl), x, k)
    return y, *vjp(g)


@functools.cache
def _case(index):
    xs, ks, strides, padding, dilation = CASES[index]
    rng = np.random.default_rng(index)
    x = np.maximum(rng.normal(size=xs), 0.0)  # post-ReLU activations, as in the models
    k = rng.normal(size=ks)
    pads = _explicit(padding, xs, ks, strides, dilation)
    g = rng.normal(size=_numpy_conv(x, k, strides, pads, dilation).shape)
    return (x, k, g), _numpy_conv(x, k, strides, pads, dilation, g)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_conv_values_and_gradients_match_numpy_and_xla(index):
    xs, ks, strides, padding, dilation = case = CASES[index]
    (x, k, g), (y64, dx64, dw64) = _case(index)
    args = [jnp.asarray(a, jnp.float32) for a in (x, k, g)]
    got = _conv_and_grads(*args, strides, padding, dilation, "onednn")
    xla = _conv_and_grads(*args, strides, padding, dilation, "xla")
    for name, a, b, ref in zip(("y", "dx", "dw"), got, xla, (y64, dx64, dw64), strict=True):
        assert a.dtype == jnp.float32
        assert _rel_err(a, ref) < RTOL, (name, case)
        assert _rel_err(a, b) < RTOL, (name, case)


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7))
def _biased_conv_and_grads(x, k, b, g, strides, padding, dilation, impl):
    def f(x, k, b):
        return conv_lib.conv2d(x, k, strides, padding, dilation, impl, bias=b)

    y, vjp = jax.vjp(f, x, k, b)
    return y, *vjp(g)


@pytest.mark.parametrize("index", [3, 8, 9, 10, 11])
def test_the_fused_bias_and_its_gradient_match_numpy(index):
    # The bias is added inside oneDNN's forward primitive and its gradient summed inside the
    # backward-weights primitive: reference y + b and db = sum of g over batch and positions.
    xs, ks, strides, padding, dilation = case = CASES[index]
    (x, k, g), (y64, dx64, dw64) = _case(index)
    b = np.random.default_rng(100 + index).normal(size=ks[3])
    want = (y64 + b, dx64, dw64, g.sum(axis=(0, 1, 2)))
    args = [jnp.asarray(a, jnp.float32) for a in (x, k, b, g)]
    for impl in ("onednn", "xla"):
        got = _biased_conv_and_grads(*args, strides, padding, dilation, impl)
        for name, a, ref in zip(("y", "dx", "dw", "db"), got, want, strict=True):
            assert _rel_err(a, ref) < RTOL, (impl, name, case)
    lowered = _biased_conv_and_grads.lower(*args, strides, padding, dilation, "onednn").as_text()
    assert "intrakd_onednn_conv_forward_bias" in lowered
    assert "intrakd_onednn_conv_backward_weights_bias" in lowered


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7))
def _conv_relu_and_grads(x, k, b, g, strides, padding, dilation, impl):
    def f(x, k, b):
        return conv_lib.conv2d(x, k, strides, padding, dilation, impl, bias=b, relu=True)

    y, vjp = jax.vjp(f, x, k, b)
    return y, *vjp(g)


@pytest.mark.parametrize("index", [3, 8, 10])
def test_the_fused_relu_and_its_gradient_match_numpy(index):
    # ReLU is a post-op of oneDNN's forward primitive; the gradient is masked by the output
    # before the backward primitives. Reference: relu(y + b) and the gradients of g * [y + b > 0].
    xs, ks, strides, padding, dilation = case = CASES[index]
    (x, k, g), _ = _case(index)
    b = np.random.default_rng(200 + index).normal(size=ks[3])
    pads = _explicit(padding, xs, ks, strides, dilation)
    y64 = _numpy_conv(x, k, strides, pads, dilation) + b
    g_masked = np.where(y64 > 0, g, 0.0)
    _, dx64, dw64 = _numpy_conv(x, k, strides, pads, dilation, g_masked)
    want = (np.maximum(y64, 0.0), dx64, dw64, g_masked.sum(axis=(0, 1, 2)))
    args = [jnp.asarray(a, jnp.float32) for a in (x, k, b, g)]
    for impl in ("onednn", "xla", "fast"):
        got = _conv_relu_and_grads(*args, strides, padding, dilation, impl)
        for name, a, ref in zip(("y", "dx", "dw", "db"), got, want, strict=True):
            assert _rel_err(a, ref) < RTOL, (impl, name, case)
    lowered = _conv_relu_and_grads.lower(*args, strides, padding, dilation, "onednn").as_text()
    assert "relu = 1" in lowered and "intrakd_onednn_conv_forward_bias" in lowered


def test_a_bias_of_the_wrong_shape_is_named():
    x, k = jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 4, 5))
    with pytest.raises(ValueError, match=r"bias of shape \(5,\), got \(4,\)"):
        conv_lib.conv2d(x, k, 1, "SAME", 1, "onednn", bias=jnp.ones(4))


def test_the_custom_calls_are_in_the_compiled_program():
    # Guards against a silent fallback: the forward and both gradients must be oneDNN's.
    x, k = jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 4, 5))

    def f(x, k):
        return jnp.sum(conv_lib.conv2d(x, k, 1, "SAME", 1, "onednn") ** 2)

    text = jax.jit(jax.grad(f, argnums=(0, 1))).lower(x, k).as_text()
    for target in (
        "intrakd_onednn_conv_forward",
        "intrakd_onednn_conv_backward_data",
        "intrakd_onednn_conv_backward_weights",
    ):
        assert target in text
    # Float64 / bfloat16 operands are not oneDNN's here: they take the "fast" path.
    text16 = jax.jit(f).lower(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)).as_text()
    assert "intrakd_onednn" not in text16


def test_vmap_matches_xla():
    rng = np.random.default_rng(20)
    x = jnp.asarray(rng.normal(size=(3, 2, 6, 7, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 3, 4, 5)), jnp.float32)

    def f(impl):
        conv = functools.partial(conv_lib.conv2d, strides=1, padding="SAME", impl=impl)
        return jax.jit(jax.vmap(lambda a, b: jax.grad(lambda b: jnp.sum(conv(a, b) ** 2))(b)))

    assert _rel_err(f("onednn")(x, k), f("xla")(x, k)) < RTOL


# Gradients inside shard_map: tests/test_conv_grad.py::test_conv_gradient_inside_shard_map_...


@pytest.mark.parametrize(
    "x_shape,k_shape,padding",
    [
        ((2, 4, 6, 6), (3, 3, 4, 6), ((1, 2), (1, 2))),  # ERFNet upsampler: k3 s2 p1 op1
        ((2, 4, 6, 4), (2, 2, 3, 4), ((1, 1), (1, 1))),  # ERFNet output: k2 s2 p0
    ],
)
def test_transposed_convolution_matches_xla(x_shape, k_shape, padding):
    rng = np.random.default_rng(22)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=k_shape), jnp.float32)

    @functools.partial(jax.jit, static_argnums=2)
    def run(x, k, impl):
        def f(a, b):
            return conv_lib.conv_transpose2d(a, b, 2, padding, True, impl)

        y, vjp = jax.vjp(f, x, k)
        return y, *vjp(jnp.sin(y))

    assert "intrakd_onednn_conv_backward_weights" in run.lower(x, k, "onednn").as_text()
    for a, b in zip(run(x, k, "onednn"), run(x, k, "xla"), strict=True):
        assert _rel_err(a, b) < RTOL


def _erfnet_steps(conv_impl: str, batch: dict, num_steps: int = 3):
    mesh = parallel.make_data_mesh(4)
    kwargs = dict(
        num_classes=3,
        channels=(4, 8, 12),
        num_stage1_blocks=1,
        num_stage2_repeats=1,
        stage2_dilations=(2,),
        stage1_dropout=0.0,
        stage2_dropout=0.0,
        conv_impl=conv_impl,
    )
    model = models.get_model("erfnet", bn_axis_name=parallel.DATA_AXIS, **kwargs)
    eval_model = models.get_model("erfnet", **kwargs)
    hw = batch["image"].shape[1:3]
    params_shape = jax.eval_shape(
        lambda: eval_model.init(jax.random.key(0), jnp.zeros((1, *hw, 3)))
    )["params"]
    tx = optim.make_optimizer(params_shape, learning_rate=0.05, num_steps=10, head_lr_mult=1.0)
    state = jax.jit(
        lambda key: steps.create_train_state(eval_model, tx, key, hw),
        out_shardings=parallel.replicated(mesh),
    )(jax.random.key(3))
    step = steps.make_train_step(model, tx, mesh, 3, (0.5, 1.0, 1.0))
    losses = []
    for _ in range(num_steps):
        state, metrics = step(state, {}, parallel.to_global(batch, mesh))
        losses.append(float(metrics["loss"]))
    return jax.device_get(state), losses


def test_erfnet_training_steps_equal_xla():
    rng = np.random.default_rng(23)
    batch = {
        "image": rng.normal(size=(8, 16, 32, 3)).astype(np.float32),
        "label": rng.integers(0, 3, size=(8, 16, 32)).astype(np.int32),
    }
    s_onednn, l_onednn = _erfnet_steps("onednn", batch)
    s_xla, l_xla = _erfnet_steps("xla", batch)
    np.testing.assert_allclose(l_onednn, l_xla, rtol=2e-5)
    assert l_onednn[-1] < l_onednn[0]  # it trains
    flat = dict(jax.tree_util.tree_leaves_with_path(s_xla.params))
    for path, a in jax.tree_util.tree_leaves_with_path(s_onednn.params):
        np.testing.assert_allclose(a, flat[path], rtol=1e-4, atol=1e-6, err_msg=str(path))
    for a, b in zip(
        jax.tree.leaves(s_onednn.batch_stats), jax.tree.leaves(s_xla.batch_stats), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_failed_build_falls_back_to_fast_with_one_warning(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise onednn.BuildError("no C++ compiler (g++ or $CXX) found")

    monkeypatch.setattr(onednn, "_build", no_compiler)
    monkeypatch.setattr(onednn, "_state", {})  # forget the real build for this test only
    _conv_and_grads.clear_cache()  # traced with the real extension by the tests above
    try:
        _check_fallback()
    finally:
        _conv_and_grads.clear_cache()


def _check_fallback():
    rng = np.random.default_rng(24)
    x = jnp.asarray(rng.normal(size=(2, 6, 7, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 1, 4, 5)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(2, 6, 7, 5)), jnp.float32)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler") as record:
        got = _conv_and_grads(x, k, g, 1, "SAME", 1, "onednn")
        again = _conv_and_grads(x, k, g, 1, "SAME", 2, "onednn")
    assert len(record) == 1
    fast = _conv_and_grads(x, k, g, 1, "SAME", 1, "fast")
    fast2 = _conv_and_grads(x, k, g, 1, "SAME", 2, "fast")
    for a, b in zip((*got, *again), (*fast, *fast2), strict=True):
        np.testing.assert_array_equal(a, b)
    text = jax.jit(lambda a, b: conv_lib.conv2d(a, b, 1, "SAME", 1, "onednn")).lower(x, k)
    assert "intrakd_onednn" not in text.as_text()


def test_onednn_is_an_accepted_conv_impl():
    conv_lib.check_conv_impl("conv_impl", "onednn")
    assert "onednn" in conv_lib.CONV_IMPLS
    with pytest.raises(ValueError, match="must be one of"):
        conv_lib.check_conv_impl("conv_impl", "mkldnn")


def test_auto_is_onednn_where_installed_and_fast_otherwise(monkeypatch, caplog):
    # CI installs oneDNN (requirements-test.txt), so "auto", the models' default, runs it there.
    assert onednn.installed()
    assert conv_lib.resolve_conv_impl("auto") == "onednn"
    x = jnp.asarray(np.random.default_rng(25).normal(size=(2, 6, 7, 4)), jnp.float32)
    k = jnp.ones((3, 3, 4, 5), jnp.float32)
    text = jax.jit(lambda a, b: conv_lib.conv2d(a, b, 1, "SAME")).lower(x, k).as_text()
    assert "intrakd_onednn_conv_forward" in text

    monkeypatch.setattr(onednn, "installed", lambda: False)
    conv_lib._log_auto_without_onednn.cache_clear()
    with caplog.at_level("INFO"):
        assert conv_lib.resolve_conv_impl("auto") == "fast"
        text = jax.jit(lambda a, b: conv_lib.conv2d(a, b, 1, "SAME", 1, "auto")).lower(x, k)
    assert "intrakd_onednn" not in text.as_text()
    said = [r.getMessage() for r in caplog.records if "oneDNN is not installed" in r.getMessage()]
    assert len(said) == 1 and "pip install onednn" in said[0]  # once, with the way to get it
    for impl in ("fast", "xla", "onednn"):
        assert conv_lib.resolve_conv_impl(impl) == impl
    with pytest.raises(ValueError, match="must be one of"):
        conv_lib.resolve_conv_impl("cudnn")
