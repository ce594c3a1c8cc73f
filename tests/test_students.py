"""Tests for the students (ENet, ResNet-18/34) and the tap contract every model shares."""

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intrakd_jax.models import (
    ENet,
    ERFNet,
    PSPNet,
    ResNetStudent,
    count_params,
    get_model,
    list_models,
)
from intrakd_jax.models.enet import DecoderBottleneck, EncoderBottleneck, PReLU, max_unpool_2x2

# Tiny widths; compile time dominates, so each compiled program is built once per module.
TINY_ENET = dict(
    channels=(8, 16, 32),
    num_stage1_blocks=1,
    stage_blocks=("asymmetric3",),  # the other kinds: E1 (regular) and the numpy tests
    stage1_dropout=0.2,
    dropout=0.3,
)
TINY_RESNET = dict(depth=18, base_width=4, head_channels=8, dropout_rate=0.3)
NO_DROPOUT = {"enet": dict(stage1_dropout=0.0, dropout=0.0), "resnet18": dict(dropout_rate=0.0)}
X_SHAPE = (8, 32, 64, 3)  # 8 images: 2 per simulated device
NUM_CLASSES = 3


def _images(shape=X_SHAPE, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _tiny(name, **kwargs):
    if name == "enet":
        return ENet(num_classes=NUM_CLASSES, **{**TINY_ENET, **kwargs})
    return ResNetStudent(num_classes=NUM_CLASSES, **{**TINY_RESNET, **kwargs})


@functools.cache
def _tiny_variables(name):
    """Variables of the tiny model (jit-initialised once; the same for any conv_impl)."""
    return jax.jit(_tiny(name).init)(jax.random.key(0), _images())


@functools.cache
def _single_device_train_forward(name, impl):
    """((logits, taps), {"batch_stats": new stats}) of the tiny model: train mode, dropout off."""
    apply = _tiny(name, conv_impl=impl, **NO_DROPOUT[name]).apply
    return jax.jit(functools.partial(apply, train=True, mutable=["batch_stats"]))(
        _tiny_variables(name), _train_images()
    )


def _train_images():
    # The first device's images are brighter: per-device statistics differ from the global ones.
    return _images(seed=1).at[:2].add(3.0)


def _assert_trees_close(a, b, rtol, atol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ---------------------------------------------------------------- tap contract (all models)

# Per model: the tiny instance and, by hand from each class docstring, tap -> (stride, channels),
# the expected sad_taps and tap_levels.
CONTRACT_CASES = {
    "enet": (
        _tiny("enet"),
        {"e1": (4, 16), "e2": (8, 32), "e3": (8, 32), "e4": (8, 32)},
        ("e2", "e3", "e4"),
        {"high": "e4", "mid": "e1"},
    ),
    "resnet18": (
        _tiny("resnet18"),
        {"layer1": (4, 4), "layer2": (8, 8), "layer3": (8, 16), "layer4": (8, 32), "head": (8, 8)},
        ("layer2", "layer3", "layer4"),
        {"high": "head", "mid": "layer1"},
    ),
    "resnet34": (
        _tiny("resnet18", depth=34),
        {"layer1": (4, 4), "layer2": (8, 8), "layer3": (8, 16), "layer4": (8, 32), "head": (8, 8)},
        ("layer2", "layer3", "layer4"),
        {"high": "head", "mid": "layer1"},
    ),
    "erfnet": (
        ERFNet(num_classes=NUM_CLASSES, channels=(4, 8, 12), num_stage1_blocks=1),
        {"stage1": (4, 8), "stage2_mid": (8, 12), "encoder": (8, 12)},
        ("stage1", "stage2_mid", "encoder"),
        {"high": "encoder", "mid": "stage1"},
    ),
    "pspnet18": (
        PSPNet(num_classes=NUM_CLASSES, depth=18, base_width=4, head_channels=8),
        {"layer1": (4, 4), "layer2": (8, 8), "layer3": (8, 16), "layer4": (8, 32), "psp": (8, 8)},
        ("layer2", "layer3", "layer4"),
        {"high": "psp", "mid": "layer1"},
    ),
    "pspnet50": (
        PSPNet(num_classes=NUM_CLASSES, depth=50, base_width=4, head_channels=8),
        {
            "layer1": (4, 16),
            "layer2": (8, 32),
            "layer3": (8, 64),
            "layer4": (8, 128),
            "psp": (8, 8),
        },
        ("layer2", "layer3", "layer4"),
        {"high": "psp", "mid": "layer1"},
    ),
}


@pytest.mark.parametrize("case", sorted(CONTRACT_CASES))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_tap_contract_shapes_and_dtypes(case, dtype):
    model, want_taps, want_sad, want_levels = CONTRACT_CASES[case]
    model = model.clone(dtype=dtype)
    x = jax.ShapeDtypeStruct((2, 32, 64, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    logits, taps = jax.eval_shape(model.apply, variables, x)
    assert logits.shape == (2, 32, 64, NUM_CLASSES) and logits.dtype == jnp.float32
    got = {name: (32 // t.shape[1], t.shape[-1]) for name, t in taps.items()}
    assert got == want_taps
    for t in taps.values():
        assert t.dtype == dtype and t.shape[0] == 2 and t.shape[1] * 2 == t.shape[2]
    # The contract: class attributes (not constructor fields) naming taps at the right strides.
    cls = type(model)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert "tap_levels" not in fields and "sad_taps" not in fields
    assert cls.tap_levels == want_levels and cls.sad_taps == want_sad
    assert got[cls.tap_levels["high"]][0] == 8 and got[cls.tap_levels["mid"]][0] == 4
    assert set(cls.sad_taps) <= set(taps) and len(set(cls.sad_taps)) == len(cls.sad_taps) >= 2
    # Every tap is declared, so a config may name any of them (losses.terms checks names).
    assert set(taps) == set(cls.tap_levels.values()) | set(cls.sad_taps)


def test_erfnet_stage2_mid_is_the_first_dilation_group_output():
    # One repeat of dilations (2, 4): encoder layers_3 and layers_4 are the 1/8 blocks, so the
    # middle tap is layers_3's output.
    model = ERFNet(
        num_classes=NUM_CLASSES,
        channels=(4, 8, 12),
        num_stage1_blocks=1,
        num_stage2_repeats=1,
        stage2_dilations=(2, 4),
    )
    x = _images((2, 16, 24, 3))

    @jax.jit
    def run(key, images):
        variables = model.init(key, images)
        return model.apply(variables, images, capture_intermediates=True, mutable=["intermediates"])

    (_, taps), state = run(jax.random.key(0), x)
    inter = state["intermediates"]["encoder"]
    np.testing.assert_array_equal(taps["stage2_mid"], inter["layers_3"]["__call__"][0])
    np.testing.assert_array_equal(taps["encoder"], inter["layers_4"]["__call__"][0])
    assert not np.allclose(taps["stage2_mid"], taps["encoder"])


# ---------------------------------------------------------------- parameter counts


def _conv(cin, cout, kh, kw, bias):
    return cin * cout * kh * kw + (cout if bias else 0)


def _enet_encoder_bottleneck(cin, cout, spec, down=False):
    # Torch ENet: width cout/4; 1x1 (2x2 when downsampling) no bias, BN, PReLU; 3x3 with bias or
    # 5x1 (no bias) + 1x5 (bias); BN, PReLU; 1x1 no bias; BN; PReLU after the sum.
    i = cout // 4
    k = 2 if down else 1
    n = _conv(cin, i, k, k, False) + 2 * i + i
    n += (
        _conv(i, i, 5, 1, False) + _conv(i, i, 1, 5, True)
        if spec == "asym"
        else _conv(i, i, 3, 3, True)
    )
    return n + 2 * i + i + _conv(i, cout, 1, 1, False) + 2 * cout + cout


def _enet_decoder_bottleneck(cin, cout, up=False):
    # 1x1 no bias, BN; 3x3 (or 3x3 transposed) with bias, BN; 1x1 no bias, BN; shortcut 1x1 + BN
    # when upsampling. ReLUs have no parameters.
    i = cout // 4
    n = _conv(cin, i, 1, 1, False) + 2 * i + _conv(i, i, 3, 3, True) + 2 * i
    n += _conv(i, cout, 1, 1, False) + 2 * cout
    return n + (_conv(cin, cout, 1, 1, False) + 2 * cout if up else 0)


def _enet_param_count_by_hand(k):
    initial = _conv(3, 13, 3, 3, True) + 2 * 16 + 16
    e1 = _enet_encoder_bottleneck(16, 64, "reg", down=True) + 4 * _enet_encoder_bottleneck(
        64, 64, "reg"
    )
    # Each 1/8 stage: regular, dilated 2, asym 5, dilated 4, regular, dilated 8, asym 5, dilated 16.
    stage = 6 * _enet_encoder_bottleneck(128, 128, "reg") + 2 * _enet_encoder_bottleneck(
        128, 128, "asym"
    )
    e2 = _enet_encoder_bottleneck(64, 128, "reg", down=True) + stage
    decoder = (
        _enet_decoder_bottleneck(128, 64, up=True)
        + 2 * _enet_decoder_bottleneck(64, 64)
        + _enet_decoder_bottleneck(64, 16, up=True)
        + _enet_decoder_bottleneck(16, 16)
        + _conv(16, k, 2, 2, True)
    )
    return initial + e1 + e2 + 2 * stage + decoder


def _abstract_params(model, hw=(64, 64)):
    x = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)


@pytest.mark.parametrize("k,documented", [(5, 509_577), (37, 511_657)])
def test_enet_param_count_at_full_width(k, documented):
    variables = _abstract_params(get_model("enet", num_classes=k))
    assert count_params(variables) == _enet_param_count_by_hand(k) == documented
    # E4 alone is one 1/8 stage (what ENet-SAD adds to ENet).
    e4 = sum(
        count_params(v)
        for name, v in variables["params"].items()
        if re.fullmatch(r"(regular|dilated|asymmetric)4_\d+", name)
    )
    assert e4 == 146_176


@pytest.mark.parametrize(
    "name,torchvision_params", [("resnet18", 11_689_512), ("resnet34", 21_797_672)]
)
def test_resnet_student_param_count_at_full_width(name, torchvision_params):
    variables = _abstract_params(get_model(name, num_classes=5))
    backbone = torchvision_params - (512 * 1000 + 1000)  # torchvision's fc is not used
    assert count_params(variables["params"]["backbone"]) == backbone
    head = 512 * 128 * 9 + 2 * 128 + 128 * 5 + 5
    assert count_params(variables) == backbone + head


# ---------------------------------------------------------------- ENet layers vs float64 numpy


def _np_conv(x, w_hwio, stride=1, pad=((0, 0), (0, 0)), dilation=(1, 1), bias=None):
    x = np.pad(x, ((0, 0), *pad, (0, 0)))
    kh, kw, _, cout = w_hwio.shape
    dh, dw = dilation
    ho = (x.shape[1] - dh * (kh - 1) - 1) // stride + 1
    wo = (x.shape[2] - dw * (kw - 1) - 1) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, cout))
    for i in range(kh):
        for j in range(kw):
            patch = x[
                :, i * dh : i * dh + stride * ho : stride, j * dw : j * dw + stride * wo : stride
            ]
            out += patch @ w_hwio[i, j]
    return out if bias is None else out + bias


def _np_bn(x, p, s, eps=1e-3):
    return (x - s["mean"]) / np.sqrt(s["var"] + eps) * p["scale"] + p["bias"]


def _np_prelu(x, p):
    return np.where(x >= 0, x, p["negative_slope"] * x)


def _np_first_max_mask(x):
    """1 at the first (row-major) maximum of each 2x2 window of x (B, H, W, C), else 0."""
    b, h, w, c = x.shape
    win = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    onehot = np.eye(4)[np.argmax(win, axis=1)]  # argmax returns the first maximum
    onehot = onehot.reshape(b, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return onehot.reshape(b, h, w, c)


def _np_unpool(y, pool_input):
    return _np_first_max_mask(pool_input) * np.repeat(np.repeat(y, 2, axis=1), 2, axis=2)


def _randomized(variables, seed):
    """Random params, running means and positive running variances (float32 values)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key == "var":
            return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), jnp.float32)
        return jnp.asarray(rng.normal(scale=0.5, size=leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, variables)


def _f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


EVAL_NORM = functools.partial(nn.BatchNorm, use_running_average=True, epsilon=1e-3)


@pytest.mark.parametrize("spec", ["downsample", "asymmetric5", "dilated2"])
def test_enet_encoder_bottleneck_matches_numpy(spec):
    down = spec == "downsample"
    kind, size = ("regular", 1) if down else (spec[:-1], int(spec[-1]))
    cin, cout = (4, 12) if down else (12, 12)
    block = EncoderBottleneck(cout, kind, size, down, 0.5, 4, EVAL_NORM)
    x = np.random.default_rng(3).normal(size=(2, 8, 6, cin))
    variables = _randomized(block.init(jax.random.key(0), jnp.asarray(x, jnp.float32), False), 4)
    got = block.apply(variables, jnp.asarray(x, jnp.float32), False)

    p, s = _f64(variables["params"]), _f64(variables["batch_stats"])
    y = _np_conv(x, p["conv1"]["kernel"], stride=2 if down else 1)
    y = _np_prelu(_np_bn(y, p["bn1"], s["bn1"]), p["prelu1"])
    if kind == "asymmetric":
        y = _np_conv(y, p["conv2a"]["kernel"], pad=((2, 2), (0, 0)))
        y = _np_conv(y, p["conv2b"]["kernel"], pad=((0, 0), (2, 2)), bias=p["conv2b"]["bias"])
    else:
        d = size
        y = _np_conv(
            y, p["conv2"]["kernel"], pad=((d, d), (d, d)), dilation=(d, d), bias=p["conv2"]["bias"]
        )
    y = _np_prelu(_np_bn(y, p["bn2"], s["bn2"]), p["prelu2"])
    y = _np_bn(_np_conv(y, p["conv3"]["kernel"]), p["bn3"], s["bn3"])
    shortcut = x
    if down:
        shortcut = x.reshape(2, 4, 2, 3, 2, cin).max(axis=(2, 4))
        shortcut = np.concatenate([shortcut, np.zeros((2, 4, 3, cout - cin))], axis=-1)
    want = _np_prelu(y + shortcut, p["prelu_out"])
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def _np_conv_transpose_3x3_s2(x, kernel_hwoi, bias):
    """PyTorch ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1), scatter form."""
    b, h, w, _ = x.shape
    w_torch = kernel_hwoi.transpose(3, 2, 0, 1)  # (in, out, kh, kw)
    full = np.zeros((b, 2 * h + 2, 2 * w + 2, w_torch.shape[1]))
    for i in range(h):
        for j in range(w):
            for ki in range(3):
                for kj in range(3):
                    full[:, 2 * i + ki, 2 * j + kj] += x[:, i, j] @ w_torch[:, :, ki, kj]
    return full[:, 1 : 1 + 2 * h, 1 : 1 + 2 * w] + bias


@pytest.mark.parametrize("impl", ["fast", "xla"])
def test_enet_upsampling_bottleneck_matches_numpy(impl):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 4, 16))
    pool_input = rng.normal(size=(2, 6, 8, 8))
    pool_input[0, 0, :2, 0] = pool_input[0, 1, :2, 0] = 7.0  # a tie: the first maximum wins
    block = DecoderBottleneck(8, True, 4, EVAL_NORM, conv_impl=impl)
    args = (jnp.asarray(x, jnp.float32), jnp.asarray(pool_input, jnp.float32))
    variables = _randomized(block.init(jax.random.key(0), *args), 6)
    got = block.apply(variables, *args)

    p, s = _f64(variables["params"]), _f64(variables["batch_stats"])
    y = np.maximum(_np_bn(_np_conv(x, p["conv1"]["kernel"]), p["bn1"], s["bn1"]), 0)
    y = _np_conv_transpose_3x3_s2(y, p["conv2"]["kernel"], p["conv2"]["bias"])
    y = np.maximum(_np_bn(y, p["bn2"], s["bn2"]), 0)
    y = _np_bn(_np_conv(y, p["conv3"]["kernel"]), p["bn3"], s["bn3"])
    shortcut = _np_bn(_np_conv(x, p["main_conv"]["kernel"]), p["main_bn"], s["main_bn"])
    want = np.maximum(y + _np_unpool(shortcut, pool_input), 0)
    assert got.shape == want.shape == (2, 6, 8, 8)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["fast", "xla"])
def test_max_unpool_values_ties_and_gradient(impl):
    rng = np.random.default_rng(7)
    pool_input = rng.integers(0, 3, size=(2, 4, 6, 3)).astype(np.float32)  # many ties
    y = rng.normal(size=(2, 2, 3, 3)).astype(np.float32)
    got = max_unpool_2x2(jnp.asarray(y), jnp.asarray(pool_input), impl)
    np.testing.assert_array_equal(np.asarray(got), _np_unpool(y, pool_input).astype(np.float32))
    # Gradient: the values flow back from their positions; the pool input gets none.
    cot = rng.normal(size=pool_input.shape).astype(np.float32)
    gy, gx = jax.grad(lambda a, b: jnp.sum(max_unpool_2x2(a, b, impl) * cot), argnums=(0, 1))(
        jnp.asarray(y), jnp.asarray(pool_input)
    )
    want_gy = (_np_first_max_mask(pool_input) * cot).reshape(2, 2, 2, 3, 2, 3).sum(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(gy), want_gy, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(gx), 0.0)


def test_prelu_is_per_channel_and_starts_at_quarter():
    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 3, 3, 5)), jnp.float32)
    variables = PReLU().init(jax.random.key(0), x)
    np.testing.assert_array_equal(variables["params"]["negative_slope"], np.full(5, 0.25))
    slopes = np.arange(5, dtype=np.float32) - 2.0
    got = PReLU().apply({"params": {"negative_slope": jnp.asarray(slopes)}}, x)
    xn = np.asarray(x, np.float64)
    np.testing.assert_allclose(np.asarray(got), np.where(xn >= 0, xn, slopes * xn), rtol=1e-6)


# ---------------------------------------------------------------- conv_impl, BN, dropout


@pytest.mark.parametrize("name", ["enet", "resnet18"])
def test_fast_and_xla_give_same_parameters_and_outputs(name):
    # The gradients of the fast forms are covered per operation (test_conv_grad.py and the
    # max-unpool test above); here the assembled model's train-mode forward pass.
    x = jax.ShapeDtypeStruct(X_SHAPE, jnp.float32)
    tree = {}
    for impl in ("fast", "xla"):
        shapes = jax.eval_shape(_tiny(name, conv_impl=impl).init, jax.random.key(0), x)
        tree[impl] = jax.tree.map(lambda a: (a.shape, a.dtype), shapes)
    assert tree["fast"] == tree["xla"]
    fast = _single_device_train_forward(name, "fast")
    (logits, _), _ = fast
    assert logits.shape == (*X_SHAPE[:3], NUM_CLASSES) and np.isfinite(logits).all()
    _assert_trees_close(fast, _single_device_train_forward(name, "xla"), rtol=1e-3, atol=1e-4)


MESH_AXIS = "data"


def _mesh():
    return jax.make_mesh((4,), (MESH_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


@pytest.mark.parametrize("name", ["enet", "resnet18"])
def test_synced_batch_norm_under_shard_map_matches_global_batch(name):
    P = jax.sharding.PartitionSpec
    model = _tiny(name, bn_axis_name=MESH_AXIS, **NO_DROPOUT[name])
    variables = _tiny_variables(name)
    x = _train_images()

    def per_device(v, xb):
        return model.apply(v, xb, train=True, mutable=["batch_stats"])

    sharded = jax.jit(
        jax.shard_map(
            per_device,
            mesh=_mesh(),
            in_specs=(P(), P(MESH_AXIS)),
            out_specs=((P(MESH_AXIS), P(MESH_AXIS)), P()),
        )
    )
    got = sharded(variables, x)
    want = _single_device_train_forward(name, "fast")
    _assert_trees_close(got, want, rtol=1e-3, atol=1e-4)
    (_, _), state = got
    old = jax.tree.leaves(variables["batch_stats"])
    assert all(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state), old, strict=True))


@pytest.mark.parametrize("name", ["enet", "resnet18"])
def test_dropout_and_gradients_under_shard_map(name):
    P = jax.sharding.PartitionSpec
    model = _tiny(name, bn_axis_name=MESH_AXIS)
    variables = _tiny_variables(name)

    def per_device(params, batch_stats, xb, key):
        # As the train step: per-device masks, loss averaged over the global batch.
        key = jax.random.fold_in(key, jax.lax.axis_index(MESH_AXIS))

        def loss_fn(p):
            (logits, taps), new = model.apply(
                {"params": p, "batch_stats": batch_stats},
                xb,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": key},
            )
            loss = jnp.mean(logits**2) + sum(jnp.mean(t**2) for t in taps.values())
            return jax.lax.pmean(loss, MESH_AXIS), (logits, new["batch_stats"])

        (_, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return logits, stats, grads

    sharded = jax.jit(
        jax.shard_map(
            per_device,
            mesh=_mesh(),
            in_specs=(P(), P(), P(MESH_AXIS), P()),
            out_specs=(P(MESH_AXIS), P(), P()),
        )
    )
    x = _images(seed=2)
    params, stats = variables["params"], variables["batch_stats"]
    a, new_stats, grads = sharded(params, stats, x, jax.random.key(1))
    b, _, _ = sharded(params, stats, x, jax.random.key(2))
    a2, _, _ = sharded(params, stats, x, jax.random.key(1))
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert not np.allclose(a, b)  # the masks follow the key ...
    np.testing.assert_array_equal(a, a2)  # ... and only the key
    # Each device draws its own masks: the per-device logits differ even for equal images.
    c, _, _ = sharded(params, stats, jnp.tile(x[:2], (4, 1, 1, 1)), jax.random.key(1))
    assert not np.allclose(c[:2], c[2:4])
    assert all(np.isfinite(v).all() for v in jax.tree.leaves(new_stats))
    # Gradients reach every parameter (ENet's unpooling included) and are finite.
    assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in jax.tree.leaves(grads))


# ---------------------------------------------------------------- registry and bad arguments


def test_registry_builds_the_students():
    assert {"enet", "resnet18", "resnet34", "resnet_student"} <= set(list_models())
    assert isinstance(get_model("enet", num_classes=5), ENet)
    assert get_model("resnet18", num_classes=5).depth == 18
    assert get_model("resnet34", num_classes=5).depth == 34
    assert get_model("resnet_student", num_classes=5).depth == 18
    assert get_model("resnet_student", num_classes=5, depth=34, base_width=8).base_width == 8
    with pytest.raises(ValueError, match="depth=34 contradicts"):
        get_model("resnet18", num_classes=5, depth=34)
    with pytest.raises(TypeError, match="unknown argument.*'depth'"):
        get_model("enet", num_classes=5, depth=18)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_classes=0), "ENet.num_classes"),
        (dict(channels=(16, 64)), "ENet.channels must be 3"),
        (dict(channels=(16, 64, 64)), "ENet.channels must be strictly increasing"),
        (dict(channels=(16, 64, 130)), "divisible by internal_ratio=4"),
        (dict(internal_ratio=0), "ENet.internal_ratio"),
        (dict(num_stage1_blocks=-1), "ENet.num_stage1_blocks"),
        (dict(stage_blocks=("regular", "dilated")), "ENet.stage_blocks: bad block 'dilated'"),
        (dict(stage_blocks=("asymmetric4",)), "'asymmetric4' needs an odd kernel"),
        (dict(stage_blocks=("conv",)), "bad block 'conv'"),
        (dict(dropout=1.0), r"ENet.dropout must be in \[0, 1\)"),
        (dict(stage1_dropout=-0.1), "ENet.stage1_dropout"),
        (dict(conv_impl="cudnn"), "ENet.conv_impl"),
    ],
)
def test_enet_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ENet(**{"num_classes": 5, **kwargs})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(depth=42), "ResNetStudent.depth: ResNet depth must be one of"),
        (dict(head_channels=0), "ResNetStudent.head_channels"),
        (dict(base_width=2.5), "ResNetStudent.base_width"),
        (dict(num_classes=True), "ResNetStudent.num_classes"),
        (dict(dropout_rate=1.5), "ResNetStudent.dropout_rate"),
        (dict(conv_impl="fastest"), "ResNetStudent.conv_impl"),
    ],
)
def test_resnet_student_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNetStudent(**{"num_classes": 5, **kwargs})


@pytest.mark.parametrize(
    "name,shape,match",
    [
        ("enet", (1, 20, 32, 3), "ENet: image height and width must be divisible by 8"),
        ("enet", (1, 32, 32, 8), "ENet: input has 8 channels; channels\\[0\\]=8"),
        ("enet", (32, 32, 3), r"ENet: expected images of shape \(B, H, W, C\)"),
        ("resnet18", (32, 32, 3), r"ResNetStudent: expected images of shape \(B, H, W, C\)"),
    ],
)
def test_bad_images_are_rejected(name, shape, match):
    model = _tiny(name)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))
