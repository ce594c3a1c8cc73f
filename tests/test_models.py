"""Tests for intrakd_jax.models: shapes, param counts, pooling, BN/dropout, bf16, registry."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intrakd_jax.models import (
    ERFNet,
    PSPNet,
    adaptive_avg_pool2d,
    count_params,
    get_model,
    list_models,
)
from intrakd_jax.models.erfnet import torch_conv_transpose_2d

# Tiny widths keep compute negligible; compile time dominates, so each tiny model is initialised
# once per module (eagerly, which also warms the per-op cache for the eager applies below) and
# reused at one input size. Params do not depend on the input size, dtype or dropout rates.
# Other sizes and depth 50 are checked with jax.eval_shape (same tracing, no compile).
TINY_ERF = dict(channels=(4, 8, 12), num_stage1_blocks=1, num_stage2_repeats=1)
TINY_PSP = dict(base_width=4, head_channels=8, bins=(1, 2, 3, 6))
ERF_X = (2, 16, 24, 3)
PSP_X = (2, 27, 37, 3)  # not a multiple of 8: logits must still come back at this size


def _rand_images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _torch_out(n, k, s=1, p=0, d=1):
    """PyTorch conv/pool output length: floor((n + 2p - d(k-1) - 1) / s) + 1."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _quarter(n):
    # 7x7/2 pad 3 stem conv, then 3x3/2 pad 1 max pool.
    return _torch_out(_torch_out(n, 7, 2, 3), 3, 2, 1)


def _eighth(n):
    # layer2's first 3x3 conv: stride 2, pad 1.
    return _torch_out(_quarter(n), 3, 2, 1)


@pytest.fixture(scope="module")
def erf():
    model = ERFNet(num_classes=5, **TINY_ERF)
    return model, model.init(jax.random.key(0), _rand_images(ERF_X))


@pytest.fixture(scope="module")
def psp18():
    model = PSPNet(num_classes=3, depth=18, **TINY_PSP)
    return model, model.init(jax.random.key(0), _rand_images(PSP_X))


# ---------------------------------------------------------------- shapes


def test_erfnet_output_and_tap_shapes(erf):
    model, variables = erf
    logits, taps = model.apply(variables, _rand_images(ERF_X))
    assert logits.shape == (2, 16, 24, 5) and logits.dtype == jnp.float32
    assert set(taps) == {"stage1", "stage2_mid", "encoder"}
    assert taps["stage1"].shape == (2, 4, 6, 8)
    assert taps["encoder"].shape == (2, 2, 3, 12)
    assert np.isfinite(np.asarray(logits)).all()
    # Another size divisible by 8, shape-only (no compile).
    logits, taps = jax.eval_shape(model.apply, variables, jnp.zeros((1, 40, 8, 3)))
    assert logits.shape == (1, 40, 8, 5) and taps["encoder"].shape == (1, 5, 1, 12)


def test_erfnet_rejects_sizes_not_divisible_by_8():
    model = ERFNet(num_classes=5, **TINY_ERF)
    with pytest.raises(ValueError, match="divisible by 8"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 20, 24, 3)))


def test_pspnet_forward_at_odd_size(psp18):
    model, variables = psp18
    logits, taps = model.apply(variables, _rand_images(PSP_X))
    assert logits.shape == (*PSP_X[:3], 3) and logits.dtype == jnp.float32
    assert set(taps) == {"layer1", "layer2", "layer3", "layer4", "psp"}
    assert taps["layer1"].shape == (2, _quarter(27), _quarter(37), 4)
    assert taps["psp"].shape == (2, _eighth(27), _eighth(37), 8)
    assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("hw", [(32, 40), (27, 37), (9, 64)])
@pytest.mark.parametrize("depth", [18, 50])
def test_pspnet_shapes_at_several_sizes(depth, hw):
    model = PSPNet(num_classes=3, depth=depth, **TINY_PSP)
    x = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    logits, taps = jax.eval_shape(model.apply, variables, x)
    expansion = 4 if depth == 50 else 1
    assert logits.shape == (2, *hw, 3)
    assert taps["layer1"].shape == (2, _quarter(hw[0]), _quarter(hw[1]), 4 * expansion)
    assert taps["psp"].shape == (2, _eighth(hw[0]), _eighth(hw[1]), 8)


def test_pspnet_deep_stem_shapes():
    model = PSPNet(num_classes=3, depth=18, deep_stem=True, **TINY_PSP)
    x = jax.ShapeDtypeStruct((1, 24, 32, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    backbone = variables["params"]["backbone"]
    assert backbone["conv1"]["kernel"].shape == (3, 3, 3, 4)
    assert backbone["conv3"]["kernel"].shape == (3, 3, 4, 8)
    assert backbone["layer1_0"]["conv1"]["kernel"].shape == (3, 3, 8, 4)
    logits, taps = jax.eval_shape(model.apply, variables, x)
    assert logits.shape == (1, 24, 32, 3)
    assert taps["psp"].shape == (1, 3, 4, 8)


# ---------------------------------------------------------------- parameter counts


def _erfnet_param_count_by_hand(k):
    def conv(cin, cout, kh, kw, bias=True):
        return cin * cout * kh * kw + (cout if bias else 0)

    def down(cin, cout):
        return conv(cin, cout - cin, 3, 3) + 2 * cout

    def nb(c):
        return 2 * (conv(c, c, 3, 1) + conv(c, c, 1, 3)) + 2 * 2 * c

    def up(cin, cout):
        return conv(cin, cout, 3, 3) + 2 * cout

    enc = down(3, 16) + down(16, 64) + 5 * nb(64) + down(64, 128) + 8 * nb(128)
    dec = up(128, 64) + 2 * nb(64) + up(64, 16) + 2 * nb(16) + conv(16, k, 2, 2)
    return enc + dec


def test_param_counts_at_37_classes():
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    erf = jax.eval_shape(get_model("erfnet", num_classes=37).init, jax.random.key(0), x)
    psp = jax.eval_shape(get_model("pspnet_resnet101", num_classes=37).init, jax.random.key(0), x)
    n_erf, n_psp = count_params(erf), count_params(psp)
    assert abs(n_erf - 2.07e6) / 2.07e6 < 0.01, n_erf
    assert abs(n_psp - 65.6e6) / 65.6e6 < 0.01, n_psp
    # Exact breakdowns: torchvision ResNet-101 is 44,549,160 params incl. a 2048x1000 fc.
    assert n_erf == _erfnet_param_count_by_hand(37)
    resnet101_no_fc = 44_549_160 - (2048 * 1000 + 1000)
    assert count_params(psp["params"]["backbone"]) == resnet101_no_fc
    ppm = 4 * (2048 * 512 + 2 * 512)
    head = 4096 * 512 * 9 + 2 * 512 + 512 * 37 + 37
    assert n_psp == resnet101_no_fc + ppm + head


def test_count_params_ignores_batch_stats():
    model = ERFNet(num_classes=5, **TINY_ERF)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    assert "batch_stats" in variables
    n_stats = sum(math.prod(v.shape) for v in jax.tree.leaves(variables["batch_stats"]))
    assert n_stats > 0
    assert count_params(variables) == count_params(variables["params"])
    n_all = sum(math.prod(v.shape) for v in jax.tree.leaves(variables))
    assert count_params(variables) == n_all - n_stats


# ---------------------------------------------------------------- building blocks


def _adaptive_avg_pool_loop(x, out_h, out_w):
    b, h, w, c = x.shape
    out = np.zeros((b, out_h, out_w, c), np.float64)
    for i in range(out_h):
        h0, h1 = math.floor(i * h / out_h), math.ceil((i + 1) * h / out_h)
        for j in range(out_w):
            w0, w1 = math.floor(j * w / out_w), math.ceil((j + 1) * w / out_w)
            out[:, i, j] = x[:, h0:h1, w0:w1].astype(np.float64).mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("out_hw", [(1, 1), (3, 4), (6, 6), (9, 13)])
def test_adaptive_avg_pool_matches_pytorch_bins(out_hw):
    x = np.random.default_rng(1).normal(size=(2, 7, 10, 3)).astype(np.float32)
    got = np.asarray(adaptive_avg_pool2d(jnp.asarray(x), out_hw))
    np.testing.assert_allclose(got, _adaptive_avg_pool_loop(x, *out_hw), rtol=1e-5, atol=1e-6)


def _torch_conv_transpose_ref(x_bhwc, w_io_kk, bias, stride, padding, output_padding):
    """Scatter form of torch.nn.functional.conv_transpose2d, float64, NHWC in/out."""
    b, h, w, _ = x_bhwc.shape
    _, cout, k, _ = w_io_kk.shape
    full_h = (h - 1) * stride + k + output_padding
    full_w = (w - 1) * stride + k + output_padding
    full = np.zeros((b, full_h, full_w, cout))
    for i in range(h):
        for j in range(w):
            for ki in range(k):
                for kj in range(k):
                    full[:, i * stride + ki, j * stride + kj] += (
                        x_bhwc[:, i, j] @ w_io_kk[:, :, ki, kj]
                    )
    out_h = (h - 1) * stride - 2 * padding + k + output_padding
    out_w = (w - 1) * stride - 2 * padding + k + output_padding
    return full[:, padding : padding + out_h, padding : padding + out_w] + bias


@pytest.mark.parametrize("k,s,p,op", [(3, 2, 1, 1), (2, 2, 0, 0), (3, 2, 0, 0)])
def test_conv_transpose_matches_pytorch_semantics(k, s, p, op):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 4, 5))
    w_torch = rng.normal(size=(5, 6, k, k))  # PyTorch ConvTranspose2d weight (in, out, kh, kw)
    bias = rng.normal(size=(6,))
    layer = torch_conv_transpose_2d(6, k, s, padding=p, output_padding=op)
    params = {"kernel": jnp.asarray(w_torch.transpose(2, 3, 1, 0), jnp.float32)}
    params["bias"] = jnp.asarray(bias, jnp.float32)
    got = np.asarray(layer.apply({"params": params}, jnp.asarray(x, jnp.float32)))
    want = _torch_conv_transpose_ref(x, w_torch, bias, s, p, op)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if (k, p, op) != (3, 0, 0):
        assert got.shape[1:3] == (2 * x.shape[1], 2 * x.shape[2])


# ---------------------------------------------------------------- BN and dropout modes


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_pspnet_bn_running_stats_follow_pytorch_momentum(psp18):
    model, variables = psp18
    model = model.clone(dropout_rate=0.0)
    x = _rand_images(PSP_X, seed=3)
    (_, _), state = model.apply(
        variables,
        x,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=True,
    )
    bn_in = np.asarray(state["intermediates"]["backbone"]["conv1"]["__call__"][0], np.float64)
    old = variables["batch_stats"]["backbone"]["bn1"]
    new = state["batch_stats"]["backbone"]["bn1"]
    # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch (Flax uses the biased variance).
    want_mean = 0.9 * np.asarray(old["mean"]) + 0.1 * bn_in.mean(axis=(0, 1, 2))
    want_var = 0.9 * np.asarray(old["var"]) + 0.1 * bn_in.var(axis=(0, 1, 2))
    np.testing.assert_allclose(np.asarray(new["mean"]), want_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new["var"]), want_var, rtol=1e-4, atol=1e-6)
    # Every BN layer (backbone, pyramid, head) is in train mode.
    changed = [
        not np.allclose(a, b)
        for a, b in zip(
            jax.tree.leaves(state["batch_stats"]),
            jax.tree.leaves(variables["batch_stats"]),
            strict=True,
        )
    ]
    assert all(changed)

    # Eval mode leaves every running statistic untouched.
    (_, _), eval_state = model.apply(variables, x, train=False, mutable=["batch_stats"])
    _assert_trees_equal(eval_state["batch_stats"], variables["batch_stats"])


def test_erfnet_bn_updates_only_in_train_mode(erf):
    model, variables = erf
    x = _rand_images(ERF_X, seed=4)
    (_, _), st_train = model.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}
    )
    (_, _), st_eval = model.apply(variables, x, train=False, mutable=["batch_stats"])
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(st_train["batch_stats"])
    assert all(not np.allclose(a, b) for a, b in zip(new, old, strict=True))
    _assert_trees_equal(st_eval["batch_stats"], variables["batch_stats"])


def _train_logits(model, variables, x, seed):
    (logits, _), _ = model.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(seed)}
    )
    return np.asarray(logits)


@pytest.mark.parametrize(
    "fixture,x_shape,off_kwargs",
    [
        ("erf", ERF_X, dict(stage1_dropout=0.0, stage2_dropout=0.0)),
        ("psp18", PSP_X, dict(dropout_rate=0.0)),
    ],
    ids=["erfnet", "pspnet"],
)
def test_dropout_only_in_train_mode(request, fixture, x_shape, off_kwargs):
    model, variables = request.getfixturevalue(fixture)
    x = _rand_images(x_shape, seed=5)
    # Eval: deterministic, needs no rng, and ignores one if given.
    a, _ = model.apply(variables, x)
    b, _ = model.apply(variables, x, rngs={"dropout": jax.random.key(7)})
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Train with dropout on: the mask depends on the rng.
    on1, on2 = (_train_logits(model, variables, x, s) for s in (1, 2))
    assert not np.allclose(on1, on2)
    # Train with the rates switched off: rng-independent.
    model_off = model.clone(**off_kwargs)
    off1, off2 = (_train_logits(model_off, variables, x, s) for s in (1, 2))
    np.testing.assert_array_equal(off1, off2)


def test_sync_bn_under_shard_map_matches_global_batch(erf):
    model, variables = erf
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    P = jax.sharding.PartitionSpec
    x = _rand_images((8, *ERF_X[1:]), seed=6)
    x = x.at[:2].add(3.0)  # per-device statistics differ from the global ones
    single = model.clone(stage1_dropout=0.0, stage2_dropout=0.0)
    synced = single.clone(bn_axis_name="data")

    def step(v, xb):
        (_, _), st = synced.apply(v, xb, train=True, mutable=["batch_stats"])
        return st["batch_stats"]

    sharded = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))
    got = sharded(variables, x)
    (_, _), want = single.apply(variables, x, train=True, mutable=["batch_stats"])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want["batch_stats"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("fixture,x_shape", [("erf", ERF_X), ("psp18", PSP_X)], ids=["erf", "psp"])
def test_bf16_compute_keeps_float32_params_and_logits(request, fixture, x_shape):
    model, variables = request.getfixturevalue(fixture)
    model = model.clone(dtype=jnp.bfloat16)
    x = _rand_images(x_shape, seed=8)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(abstract))
    # One-off configurations compile faster as one jitted program than op by op.
    train_apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    (logits, taps), _ = train_apply(variables, x, rngs={"dropout": jax.random.key(0)})
    assert logits.dtype == jnp.float32 and logits.shape == (*x_shape[:3], model.num_classes)
    assert all(t.dtype == jnp.bfloat16 for t in taps.values())
    assert np.isfinite(np.asarray(logits)).all()
    # Eval mode with the same params stays close to float32. (Train mode is no good for this:
    # at random init, train-mode BN makes these nets chaotic, so even a 0.1% input change in
    # float32 moves the logits by ~20%.)
    ref, _ = model.clone(dtype=jnp.float32).apply(variables, x)
    got, _ = jax.jit(model.apply)(variables, x)
    assert got.dtype == jnp.float32
    scale = np.abs(np.asarray(ref)).max()
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=0.03 * scale)


# ---------------------------------------------------------------- registry


def test_registry_names_and_aliases():
    assert list_models() == sorted(
        [
            "enet",
            "erfnet",
            "resnet18",
            "resnet34",
            "resnet_student",
            "pspnet",
            "pspnet_resnet18",
            "pspnet_resnet34",
            "pspnet_resnet50",
            "pspnet_resnet101",
        ]
    )
    assert isinstance(get_model("erfnet", num_classes=5), ERFNet)
    assert get_model("pspnet", num_classes=5, depth=34).depth == 34
    assert get_model("pspnet_resnet50", num_classes=5).depth == 50
    assert get_model("pspnet_resnet18", num_classes=5, depth=18).depth == 18


def test_registry_errors():
    with pytest.raises(ValueError, match=r"'resnet9000'.*erfnet.*pspnet_resnet101"):
        get_model("resnet9000", num_classes=5)
    with pytest.raises(TypeError, match="unknown argument.*'widht'"):
        get_model("erfnet", num_classes=5, widht=3)
    with pytest.raises(ValueError, match="depth=101 contradicts"):
        get_model("pspnet_resnet50", num_classes=5, depth=101)
    with pytest.raises(ValueError, match="depth"):
        get_model("pspnet", num_classes=5, depth=42)
    with pytest.raises(ValueError, match="num_classes"):
        get_model("erfnet", num_classes=0)
    with pytest.raises(ValueError, match="bins"):
        get_model("pspnet", num_classes=5, bins=())


def test_erfnet_remat_keeps_parameters_outputs_and_gradients(erf):
    """Rematerialised blocks change what is stored for the backward pass, nothing else."""
    model, variables = erf
    remat_model = ERFNet(num_classes=5, remat=True, **TINY_ERF)
    remat_vars = remat_model.init(jax.random.key(0), _rand_images(ERF_X))
    _assert_trees_equal(remat_vars, variables)
    x = _rand_images(ERF_X, seed=5)
    labels = jnp.asarray(np.random.default_rng(5).integers(0, 5, ERF_X[:3]))

    def loss(m, params):
        (logits, taps), new_state = m.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(2)},
        )
        onehot = jax.nn.one_hot(labels, 5)
        ce = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1))
        return ce + 0.1 * jnp.mean(taps["encoder"] ** 2), new_state

    (l_ref, st_ref), g_ref = jax.value_and_grad(functools.partial(loss, model), has_aux=True)(
        variables["params"]
    )
    (l_rem, st_rem), g_rem = jax.value_and_grad(functools.partial(loss, remat_model), has_aux=True)(
        variables["params"]
    )
    np.testing.assert_allclose(l_rem, l_ref, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(st_rem), jax.tree.leaves(st_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_rem), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_ref))
    # ... and the remat version really is checkpointed (one remat region per residual block).
    jaxpr = str(jax.make_jaxpr(functools.partial(loss, remat_model))(variables["params"]))
    blocks = TINY_ERF["num_stage1_blocks"] + 4 * TINY_ERF["num_stage2_repeats"] + 4
    assert len(re.findall(r"\bremat\d*\[", jaxpr)) == blocks
    plain = str(jax.make_jaxpr(functools.partial(loss, model))(variables["params"]))
    assert not re.search(r"\bremat\d*\[", plain)
