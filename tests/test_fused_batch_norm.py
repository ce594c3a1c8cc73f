"""Tests for ``models.batch_norm`` (the fused BatchNorm + dropout + residual + ReLU of "onednn").

References: a float64 numpy forward written here (batch statistics, biased variance, running
averages with Flax's momentum, evaluation with the running averages), Flax's ``nn.BatchNorm``
followed by the same ops in jnp and differentiated by JAX for every gradient, and the global
batch on one device for the four shard_map devices of conftest.py. Each test runs the CPU
kernels (``onednn/norm_act.cc``) and the jnp branch that GPU/TPU take.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from intrakd_jax.models import batch_norm, layers, onednn
from intrakd_jax.models.erfnet import ERFNet

EPS, MOMENTUM = 1e-3, 0.9
# (relu, channel multiplier, residual): every combination the kernels compile separately.
VARIANTS = [(r, m, s) for r in (False, True) for m in (False, True) for s in (False, True)]

pytestmark = pytest.mark.skipif(not onednn.available(), reason="oneDNN extension not built")


@pytest.fixture(params=["ffi", "jnp"])
def branch(request, monkeypatch):
    """Runs the test on the CPU kernels, then on the jnp branch (what GPU/TPU run)."""
    if request.param == "jnp":
        monkeypatch.setattr(batch_norm, "_cpu_or_jnp", lambda cpu, default, *a: default(*a))
    return request.param


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * 3.0 + 2.0  # a mean far from 0 guards the variance formula
    c = shape[-1]
    scale = 1.0 + 0.3 * rng.normal(size=c)
    bias = 0.5 * rng.normal(size=c)
    m = rng.choice([0.0, 1.0 / 0.7], size=(shape[0], c))
    r = rng.normal(size=shape)
    g = rng.normal(size=shape)
    return x, scale, bias, m, r, g


def _numpy(x, scale, bias, m, r, relu, mean=None, var=None):
    if mean is None:
        mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    y = (x - mean) / np.sqrt(var + EPS) * scale + bias
    y = y * (m[:, None, None, :] if m is not None else 1.0) + (r if r is not None else 0.0)
    return (np.maximum(y, 0.0) if relu else y), mean, var


def _f32(*arrays):
    return [None if a is None else jnp.asarray(a, jnp.float32) for a in arrays]


def _variables(scale, bias, mean=0.5, var=2.0):
    c = len(scale)
    return {
        "params": {
            "scale": jnp.asarray(scale, jnp.float32),
            "bias": jnp.asarray(bias, jnp.float32),
        },
        "batch_stats": {
            "mean": jnp.full(c, mean, jnp.float32),
            "var": jnp.full(c, var, jnp.float32),
        },
    }


def _wrap(v):
    return {"params": {"bn": v["params"]}, "batch_stats": {"bn": v["batch_stats"]}}


class _Net(nn.Module):
    """One norm (fused or Flax's) applied through ``norm_act``, as the models do."""

    fused: bool
    train: bool
    relu: bool
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, m, r):
        cls = batch_norm.FusedBatchNorm if self.fused else nn.BatchNorm
        bn = cls(
            use_running_average=not self.train,
            momentum=MOMENTUM,
            epsilon=EPS,
            axis_name=self.axis_name,
            name="bn",
        )
        return batch_norm.norm_act(bn, x, relu=self.relu, multiplier_bc=m, residual_bhwc=r)


# 4 * 33 * 40 * 24 elements: several 32768-element chunks, so both threads and the ordered
# reduction of partial sums are exercised; C = 5 is not a multiple of any vector width.
@pytest.mark.parametrize("shape", [(4, 33, 40, 24), (2, 3, 7, 5)])
@pytest.mark.parametrize("relu,use_m,use_r", VARIANTS)
def test_training_forward_and_running_averages_match_numpy(branch, shape, relu, use_m, use_r):
    x, scale, bias, m, r, _ = _data(shape)
    m, r = (m if use_m else None), (r if use_r else None)
    net = _Net(fused=True, train=True, relu=relu)
    y, new = jax.jit(lambda v, *a: net.apply(v, *a, mutable=["batch_stats"]))(
        _wrap(_variables(scale, bias)), *_f32(x, m, r)
    )
    want, mean, var = _numpy(x, scale, bias, m, r, relu)
    np.testing.assert_allclose(y, want, rtol=0, atol=2e-5 * np.abs(want).max())
    stats = new["batch_stats"]["bn"]
    np.testing.assert_allclose(stats["mean"], MOMENTUM * 0.5 + (1 - MOMENTUM) * mean, rtol=1e-5)
    np.testing.assert_allclose(stats["var"], MOMENTUM * 2.0 + (1 - MOMENTUM) * var, rtol=1e-5)


@pytest.mark.parametrize("relu,use_r", [(False, False), (True, True)])
def test_evaluation_uses_the_running_averages(branch, relu, use_r):
    x, scale, bias, _, r, _ = _data((2, 9, 11, 6), seed=1)
    r = r if use_r else None
    mean, var = np.linspace(-1.0, 2.0, 6), np.linspace(0.25, 4.0, 6)
    v = _wrap(_variables(scale, bias))
    v["batch_stats"]["bn"] = {
        "mean": jnp.asarray(mean, jnp.float32),
        "var": jnp.asarray(var, jnp.float32),
    }
    net = _Net(fused=True, train=False, relu=relu)
    y = jax.jit(net.apply)(v, *_f32(x, None, r))
    want, _, _ = _numpy(x, scale, bias, None, r, relu, mean, var)
    np.testing.assert_allclose(y, want, rtol=0, atol=2e-5 * np.abs(want).max())


def _grads(fused, train, relu, x, m, r, g, scale, bias):
    """Gradients of <g, net(x)> w.r.t. x, the residual and the parameters."""
    net = _Net(fused=fused, train=train, relu=relu)
    v = _wrap(_variables(scale, bias))

    def f(params, x, r):
        y = net.apply({**v, "params": params}, x, m, r, mutable=["batch_stats"])[0]
        return jnp.sum(y * g)

    return jax.jit(jax.grad(f, argnums=(0, 1, 2)))(v["params"], x, r)


# Channel dropout is training-only: no multiplier in evaluation.
@pytest.mark.parametrize(
    "train,relu,use_m,use_r", [(t, *v) for t in (True, False) for v in VARIANTS if t or not v[1]]
)
def test_gradients_match_flax_batch_norm_differentiated_by_jax(branch, train, relu, use_m, use_r):
    x, scale, bias, m, r, g = _data((4, 17, 20, 24), seed=2)
    x, m, r, g = _f32(x, m if use_m else None, r if use_r else None, g)
    got = _grads(True, train, relu, x, m, r, g, scale, bias)
    want = _grads(False, train, relu, x, m, r, g, scale, bias)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-4 * float(jnp.abs(b).max()) + 1e-6)


def test_four_devices_equal_the_global_batch_on_one(branch):
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])
    x, scale, bias, m, r, g = _data((8, 6, 10, 12), seed=3)
    x, m, r, g = _f32(x, m, r, g)
    v = _wrap(_variables(scale, bias))

    def loss(axis_name):
        net = _Net(fused=True, train=True, relu=True, axis_name=axis_name)

        def f(params, x, m, r, g):
            y, new = net.apply({**v, "params": params}, x, m, r, mutable=["batch_stats"])
            total = jnp.sum(y * g)
            return (jax.lax.psum(total, axis_name) if axis_name else total), new

        return f

    grad = functools.partial(jax.grad, argnums=(0, 1, 3), has_aux=True)
    one = jax.jit(grad(loss(None)))(v["params"], x, m, r, g)
    sharded = jax.jit(
        jax.shard_map(
            grad(loss("data")),
            mesh=mesh,
            in_specs=(P(), P("data"), P("data"), P("data"), P("data")),
            out_specs=((P(), P("data"), P("data")), P()),
        )
    )
    on_devices = [jax.device_put(a, jax.NamedSharding(mesh, P("data"))) for a in (x, m, r, g)]
    four = sharded(v["params"], *on_devices)
    for a, b in zip(jax.tree.leaves(four), jax.tree.leaves(one), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.abs(b).max()))


def test_the_dropout_multiplier_is_the_mask_channel_dropout_applies():
    drop = layers.ChannelDropout(0.3)
    x = jnp.ones((6, 2, 3, 40), jnp.float32)
    key = {"dropout": jax.random.key(7)}
    dropped = drop.apply({}, x, False, rngs=key)
    m = drop.apply({}, x, False, rngs=key, method=layers.ChannelDropout.multiplier)
    assert m.shape == (6, 40)
    np.testing.assert_allclose(dropped[:, 0, 0, :], m, rtol=1e-6)
    np.testing.assert_allclose(np.unique(np.asarray(m)), [0.0, 1 / 0.7], rtol=1e-6)
    assert drop.apply({}, x, True, method=layers.ChannelDropout.multiplier) is None


def test_the_factory_fuses_only_float32_onednn_models():
    def made(conv_impl, dtype=jnp.float32):
        model = ERFNet(3, conv_impl=conv_impl, dtype=dtype)
        return layers.batch_norm(model, train=True).func

    assert made("onednn") is batch_norm.FusedBatchNorm
    assert made("fast") is nn.BatchNorm
    assert made("xla") is nn.BatchNorm
    assert made("onednn", jnp.bfloat16) is nn.BatchNorm


def test_a_wrong_dtype_is_named():
    bn = batch_norm.FusedBatchNorm()
    with pytest.raises(ValueError, match="float32 only.*bfloat16"):
        bn.init(jax.random.key(0), jnp.ones((1, 2, 2, 3), jnp.bfloat16))


def test_erfnet_training_step_with_fused_norms_equals_flax_norms(monkeypatch):
    kw = dict(channels=(16, 24, 32), num_stage1_blocks=1, num_stage2_repeats=1)
    model = ERFNet(4, conv_impl="onednn", stage2_dilations=(2,), **kw)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 16, 24, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, size=(2, 16, 24)))
    v = model.init(jax.random.key(0), x)

    def step(fused):
        # The same oneDNN convolutions either way: only the norms differ.
        norm = batch_norm.FusedBatchNorm if fused else nn.BatchNorm
        monkeypatch.setattr(layers, "FusedBatchNorm", norm)

        def loss(params):
            (logits, _), new = model.apply(
                {**v, "params": params},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(1)},
            )
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], -1)), new

        return jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(v["params"])

    fused, plain = step(True), step(False)
    (l_f, new_f), g_f = fused.compile()(v["params"])
    (l_p, new_p), g_p = plain.compile()(v["params"])
    np.testing.assert_allclose(l_f, l_p, rtol=1e-5)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_p))
    for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_p), strict=True):
        # A conv bias right before a BatchNorm has a zero gradient: both are rounding noise.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale)
    for a, b in zip(jax.tree.leaves(new_f), jax.tree.leaves(new_p), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for target in ("intrakd_channel_sums", "intrakd_norm_act_grad_input"):
        assert target in fused.as_text() and target not in plain.as_text()
