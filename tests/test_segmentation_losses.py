"""Weighted cross entropy and baseline distillation terms against float64 numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intrakd_jax.losses import (
    attention_transfer_loss,
    channel_wise_distillation_loss,
    logit_kd_loss,
    weighted_cross_entropy,
    weighted_cross_entropy_sums,
)

IGNORE = 255


def np_log_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def np_nll_loss(logits, labels, weights=None, ignore=IGNORE):
    """torch.nn.NLLLoss(weight=w, ignore_index=ignore)(log_softmax(logits), labels), mean mode."""
    logp = np_log_softmax(logits)
    k = logits.shape[-1]
    w = np.ones(k) if weights is None else np.asarray(weights, np.float64)
    num = den = 0.0
    for idx in np.ndindex(labels.shape):
        y = int(labels[idx])
        if y == ignore:
            continue
        num += -w[y] * logp[idx][y]
        den += w[y]
    return num, den


def make_ce_inputs(seed=0, shape=(2, 5, 6), k=4, ignore_frac=0.25):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(*shape, k)) * 3.0).astype(np.float32)
    labels = rng.integers(0, k, shape).astype(np.int32)
    labels[rng.random(shape) < ignore_frac] = IGNORE
    return logits, labels


# ---------------------------------------------------------------------------------------------
# weighted cross entropy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [None, [0.05, 1.0, 2.5, 0.4]])
def test_weighted_cross_entropy_matches_nll_loss(weights):
    logits, labels = make_ce_inputs()
    num, den = np_nll_loss(logits, labels, weights)
    w = None if weights is None else jnp.asarray(weights)
    got = weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), w)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, num / den, rtol=1e-5)
    g_num, g_den = weighted_cross_entropy_sums(jnp.asarray(logits), jnp.asarray(labels), w)
    np.testing.assert_allclose(g_num, num, rtol=1e-5)
    np.testing.assert_allclose(g_den, den, rtol=1e-6)


def test_weighted_cross_entropy_uniform_logits_is_log_k():
    # Hand-computed: uniform logits give -log(1/K) for every pixel, whatever the weights.
    labels = jnp.asarray([[[0, 1, IGNORE], [2, 2, 0]]], jnp.int32)
    got = weighted_cross_entropy(jnp.zeros((1, 2, 3, 3)), labels, jnp.asarray([0.1, 3.0, 1.0]))
    np.testing.assert_allclose(got, math.log(3.0), rtol=1e-6)


def test_weighted_cross_entropy_all_ignored_is_zero_with_finite_grad():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(1, 3, 3, 4)), jnp.float32)
    labels = jnp.full((1, 3, 3), IGNORE, jnp.int32)
    fn = jax.jit(lambda x: weighted_cross_entropy(x, labels, jnp.ones(4)))
    assert float(fn(logits)) == 0.0
    grad = jax.jit(jax.grad(fn))(logits)
    assert np.all(np.asarray(grad) == 0.0)


def test_weighted_cross_entropy_ignored_pixels_have_no_influence():
    logits, labels = make_ce_inputs(seed=2)
    poisoned = logits.copy()
    poisoned[labels == IGNORE] = np.nan  # garbage under ignore pixels must not leak
    a = weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    b = weighted_cross_entropy(jnp.asarray(poisoned), jnp.asarray(labels))
    np.testing.assert_allclose(a, b, rtol=0)


def test_weighted_cross_entropy_sums_split_batch_equals_full_batch():
    # What psum-then-divide over devices relies on: sums over halves add up to the full batch.
    logits, labels = make_ce_inputs(seed=3, shape=(4, 4, 5))
    w = jnp.asarray([0.05, 1.0, 1.0, 0.5])
    parts = [
        weighted_cross_entropy_sums(
            jnp.asarray(logits[i : i + 2]), jnp.asarray(labels[i : i + 2]), w
        )
        for i in (0, 2)
    ]
    num = sum(p[0] for p in parts)
    den = sum(p[1] for p in parts)
    full = weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), w)
    np.testing.assert_allclose(num / den, full, rtol=1e-6)


def test_weighted_cross_entropy_bf16_logits_and_grad_matches_numpy():
    logits, labels = make_ce_inputs(seed=4)
    w = np.asarray([1.0, 0.3, 2.0, 1.0])
    l16 = jnp.asarray(logits, jnp.bfloat16)
    got = weighted_cross_entropy(l16, jnp.asarray(labels), jnp.asarray(w))
    assert got.dtype == jnp.float32
    num, den = np_nll_loss(np.asarray(l16.astype(jnp.float32)), labels, w)
    np.testing.assert_allclose(got, num / den, rtol=1e-5)
    # Analytic gradient of the weighted mean NLL: w[y] (softmax - onehot) / den per pixel.
    grad = jax.grad(lambda x: weighted_cross_entropy(x, jnp.asarray(labels), jnp.asarray(w)))(
        jnp.asarray(logits)
    )
    p = np.exp(np_log_softmax(logits))
    valid = labels != IGNORE
    y = np.where(valid, labels, 0)
    want = (p - np.eye(4)[y]) * (w[y] * valid)[..., None] / np_nll_loss(logits, labels, w)[1]
    np.testing.assert_allclose(grad, want, atol=1e-6)


def test_weighted_cross_entropy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same"):
        weighted_cross_entropy(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 5), jnp.int32))
    with pytest.raises(ValueError, match="class_weights"):
        weighted_cross_entropy(
            jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4), jnp.int32), jnp.ones(4)
        )
    with pytest.raises(TypeError, match="integers"):
        weighted_cross_entropy(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4)))


# ---------------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------------


def np_bilinear(img_bhw, out_h, out_w):
    """Half-pixel centres, clamped edges, no antialiasing."""

    def taps(o, n_in, n_out):
        src = min(max((o + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
        i0 = int(math.floor(src))
        return i0, min(i0 + 1, n_in - 1), src - i0

    b, in_h, in_w = img_bhw.shape
    out = np.zeros((b, out_h, out_w))
    for i in range(out_h):
        y0, y1, fy = taps(i, in_h, out_h)
        for j in range(out_w):
            x0, x1, fx = taps(j, in_w, out_w)
            out[:, i, j] = (1 - fy) * ((1 - fx) * img_bhw[:, y0, x0] + fx * img_bhw[:, y0, x1]) + (
                fy * ((1 - fx) * img_bhw[:, y1, x0] + fx * img_bhw[:, y1, x1])
            )
    return out


@pytest.mark.parametrize("temperature,use_mask", [(1.0, False), (4.0, True)])
def test_logit_kd_matches_numpy(temperature, use_mask):
    rng = np.random.default_rng(5)
    s = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    t = (rng.normal(size=(2, 3, 4, 5)) * 2).astype(np.float32)
    mask = rng.random((2, 3, 4)) > 0.4
    log_ps, log_pt = np_log_softmax(s / temperature), np_log_softmax(t / temperature)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1) * temperature**2
    want = kl[mask].mean() if use_mask else kl.mean()
    got = logit_kd_loss(
        jnp.asarray(s), jnp.asarray(t), temperature, jnp.asarray(mask) if use_mask else None
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_logit_kd_zero_for_equal_logits_empty_mask_and_teacher_frozen():
    s = jnp.asarray(np.random.default_rng(6).normal(size=(1, 2, 2, 3)), jnp.float32)
    np.testing.assert_allclose(logit_kd_loss(s, s, 2.0), 0.0, atol=1e-7)
    assert float(logit_kd_loss(s, s + 1.0, 1.0, jnp.zeros((1, 2, 2), bool))) == 0.0
    g_t = jax.grad(lambda t: logit_kd_loss(s, t, 2.0))(s * 3.0)
    assert np.all(np.asarray(g_t) == 0.0)
    with pytest.raises(ValueError, match="mask"):
        logit_kd_loss(s, s, 1.0, jnp.ones((1, 2, 3)))
    with pytest.raises(ValueError, match="temperature"):
        logit_kd_loss(s, s, 0.0)


def np_attention(feats):
    a = (np.asarray(feats, np.float64) ** 2).mean(-1)
    return a


def np_at_loss(s, t):
    a_s, a_t = np_attention(s), np_attention(t)
    if a_s.shape != a_t.shape:
        a_s = np_bilinear(a_s, *a_t.shape[1:])
    a_s = a_s.reshape(len(a_s), -1)
    a_t = a_t.reshape(len(a_t), -1)
    a_s = a_s / np.linalg.norm(a_s, axis=1, keepdims=True)
    a_t = a_t / np.linalg.norm(a_t, axis=1, keepdims=True)
    return ((a_s - a_t) ** 2).mean()


@pytest.mark.parametrize("s_shape", [(2, 6, 8, 3), (2, 3, 5, 4)])
def test_attention_transfer_matches_numpy(s_shape):
    rng = np.random.default_rng(7)
    s = rng.normal(size=s_shape).astype(np.float32)
    t = rng.normal(size=(2, 6, 8, 7)).astype(np.float32)
    got = attention_transfer_loss(jnp.asarray(s), jnp.asarray(t))
    np.testing.assert_allclose(got, np_at_loss(s, t), rtol=1e-5)
    g_t = jax.grad(lambda x: attention_transfer_loss(jnp.asarray(s), x))(jnp.asarray(t))
    assert np.all(np.asarray(g_t) == 0.0)


def np_cwd(s, t, temperature):
    b, h, w, c = s.shape
    s = np.asarray(s, np.float64).reshape(b, h * w, c).transpose(0, 2, 1) / temperature
    t = np.asarray(t, np.float64).reshape(b, h * w, c).transpose(0, 2, 1) / temperature
    log_ps, log_pt = np_log_softmax(s), np_log_softmax(t)
    return (np.exp(log_pt) * (log_pt - log_ps)).sum() * temperature**2 / (b * c)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_channel_wise_distillation_matches_numpy(temperature):
    rng = np.random.default_rng(8)
    s = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    t = (rng.normal(size=(2, 3, 4, 5)) * 3).astype(np.float32)
    got = channel_wise_distillation_loss(jnp.asarray(s), jnp.asarray(t), temperature)
    np.testing.assert_allclose(got, np_cwd(s, t, temperature), rtol=1e-5)


def test_channel_wise_distillation_rejects_channel_mismatch():
    with pytest.raises(ValueError, match="equal channel counts"):
        channel_wise_distillation_loss(jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 2, 2, 4)))
    with pytest.raises(ValueError, match="same"):
        channel_wise_distillation_loss(jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 2, 3, 3)))
