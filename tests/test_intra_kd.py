"""IntRA-KD loss pieces against independent float64 numpy references written here."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from intrakd_jax.losses import (
    affinity_graph,
    aoi_maps,
    intra_kd_loss,
    moment_pool,
    multi_tap_intra_kd_loss,
)

IGNORE = 255


# ---------------------------------------------------------------------------------------------
# float64 numpy references (deliberately the slow, literal reading of METHOD.md section 2)
# ---------------------------------------------------------------------------------------------


def np_bilinear_taps(o, in_size, out_size):
    """Half-pixel source coordinate, clamped to the image; returns (i0, i1, frac)."""
    src = (o + 0.5) * in_size / out_size - 0.5
    src = min(max(src, 0.0), in_size - 1.0)
    i0 = int(math.floor(src))
    i1 = min(i0 + 1, in_size - 1)
    return i0, i1, src - i0


def np_bilinear_resize(img_bhwn, out_h, out_w):
    b, in_h, in_w, n = img_bhwn.shape
    out = np.zeros((b, out_h, out_w, n))
    for i in range(out_h):
        y0, y1, fy = np_bilinear_taps(i, in_h, out_h)
        for j in range(out_w):
            x0, x1, fx = np_bilinear_taps(j, in_w, out_w)
            out[:, i, j] = (
                (1 - fy) * (1 - fx) * img_bhwn[:, y0, x0]
                + (1 - fy) * fx * img_bhwn[:, y0, x1]
                + fy * (1 - fx) * img_bhwn[:, y1, x0]
                + fy * fx * img_bhwn[:, y1, x1]
            )
    return out


def np_aoi(labels, n, out_hw, k, ignore=IGNORE):
    b, height, width = labels.shape
    onehot = np.zeros((b, height, width, n))
    for c in range(n):
        onehot[..., c] = (labels == c) & (labels != ignore)
    left, right = k // 2, k - 1 - k // 2
    box = np.zeros_like(onehot)
    for y in range(height):
        ya, yb = max(y - left, 0), min(y + right, height - 1)
        for x in range(width):
            xa, xb = max(x - left, 0), min(x + right, width - 1)
            window = onehot[:, ya : yb + 1, xa : xb + 1, :]
            # Mean over the in-image part of the window only.
            box[:, y, x, :] = window.sum(axis=(1, 2)) / ((yb - ya + 1) * (xb - xa + 1))
    return np_bilinear_resize(box, *out_hw)


def np_moments(
    feats,
    aoi,
    eps=1e-6,
    normalizer="soft_mass",
    skew_denominator="std_cubed",
    min_mass=0.0,
    skew_floor=0.0,
):
    feats = np.asarray(feats, np.float64)
    aoi = np.asarray(aoi, np.float64)
    _, h, w, _ = feats.shape
    if normalizer == "soft_mass":
        z = aoi.sum(axis=(1, 2))
    elif normalizer == "count":
        z = (aoi != 0).sum(axis=(1, 2)).astype(np.float64)
    else:
        z = np.full(aoi.shape[0:1] + aoi.shape[3:], float(h * w))
    d = np.maximum(z, eps)[..., None]  # (B, n, 1)
    mean = np.einsum("bhwn,bhwc->bnc", aoi, feats) / d
    dev = feats[:, :, :, None, :] - mean[:, None, None, :, :]  # (B, h, w, n, c): two-pass form
    var = np.einsum("bhwn,bhwnc->bnc", aoi, dev**2) / d
    # The floor: the channel's variance over the whole map, per image.
    floor = skew_floor * feats.var(axis=(1, 2))[:, None, :]  # (B, 1, c)
    if skew_denominator == "std_cubed":
        std = np.sqrt(var + eps + floor)[:, None, None]
        skew = np.einsum("bhwn,bhwnc->bnc", aoi, (dev / std) ** 3) / d
    else:
        skew = np.einsum("bhwn,bhwnc->bnc", aoi, dev**3) / d / (var + eps + floor)
    mass = aoi.sum(axis=(1, 2))
    present = ((mass > 0) & (mass >= min_mass))[..., None]
    return tuple(np.where(present, m, 0.0) for m in (mean, var, skew))


def np_affinity(m, eps=1e-8):
    m = np.asarray(m, np.float64)
    norm = np.sqrt((m**2).sum(-1))
    return np.einsum("bic,bjc->bij", m, m) / (norm[:, :, None] * norm[:, None, :] + eps)


def np_intra_kd(student, teacher, labels, n, k=5, alphas=(1.0, 1.0, 1.0), **kw):
    ms = np_moments(student, np_aoi(labels, n, student.shape[1:3], k), **kw)
    mt = np_moments(teacher, np_aoi(labels, n, teacher.shape[1:3], k), **kw)
    return sum(
        a * np.mean((np_affinity(s) - np_affinity(t)) ** 2)
        for a, s, t in zip(alphas, ms, mt, strict=True)
    )


def random_labels(rng, shape, n, ignore_frac=0.15, absent=()):
    present = [c for c in range(n) if c not in absent]
    labels = rng.choice(present, size=shape).astype(np.int32)
    labels[rng.random(shape) < ignore_frac] = IGNORE
    return labels


# ---------------------------------------------------------------------------------------------
# aoi_maps
# ---------------------------------------------------------------------------------------------


def test_bilinear_reference_matches_jax_resize():
    # Checks the test's own reference against jax.image.resize(antialias=False).
    img = np.random.default_rng(0).random((1, 7, 10, 2))
    for out_hw in [(3, 4), (5, 7), (11, 13)]:
        got = jax.image.resize(jnp.asarray(img), (1, *out_hw, 2), "bilinear", antialias=False)
        np.testing.assert_allclose(np_bilinear_resize(img, *out_hw), got, atol=1e-6)


@pytest.mark.parametrize(
    "batch,in_hw,n,out_hw,k",
    [
        (2, (16, 24), 4, (4, 6), 5),  # integer factor 4
        (1, (13, 19), 3, (5, 7), 3),  # non-integer factors
        (2, (10, 12), 5, (10, 12), 1),  # same size, k=1: plain one-hot
        (1, (9, 11), 3, (6, 4), 5),  # non-integer, odd sizes, window near the whole image
        (1, (5, 6), 3, (8, 9), 3),  # upsampling
        (1, (12, 14), 3, (5, 6), 4),  # even kernel
    ],
)
def test_aoi_maps_matches_numpy(batch, in_hw, n, out_hw, k):
    rng = np.random.default_rng(hash((batch, in_hw, n, out_hw, k)) % 2**32)
    labels = random_labels(rng, (batch, *in_hw), n, absent=(n - 1,))
    got = aoi_maps(jnp.asarray(labels), n, out_hw, kernel_size=k)
    assert got.dtype == jnp.float32 and got.shape == (batch, *out_hw, n)
    np.testing.assert_allclose(got, np_aoi(labels, n, out_hw, k), atol=2e-6)
    # Absent class: exactly zero, not merely small.
    assert np.all(np.asarray(got)[..., n - 1] == 0.0)


def test_aoi_maps_rows_sum_to_one_without_ignore_and_k1_is_onehot():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (2, 20, 28)).astype(np.int32)
    got = np.asarray(aoi_maps(jnp.asarray(labels), 4, (7, 9), kernel_size=5))
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)
    same = np.asarray(aoi_maps(jnp.asarray(labels), 4, (20, 28), kernel_size=1))
    np.testing.assert_array_equal(same, np.eye(4)[labels])


def test_aoi_maps_all_ignored_and_out_of_range_labels_give_zeros():
    labels = np.full((1, 8, 8), IGNORE, np.int32)
    labels[0, 0, 0] = 9  # outside [0, n): treated like ignore
    got = aoi_maps(jnp.asarray(labels), 3, (4, 4))
    assert np.all(np.asarray(got) == 0.0)


def test_aoi_maps_under_outer_jit_and_uint8_labels():
    rng = np.random.default_rng(2)
    labels = random_labels(rng, (1, 16, 16), 3).astype(np.uint8)
    fn = jax.jit(lambda lab: aoi_maps(lab, 3, (4, 4), 5))
    np.testing.assert_allclose(fn(jnp.asarray(labels)), np_aoi(labels, 3, (4, 4), 5), atol=2e-6)


def test_aoi_maps_does_not_build_full_resolution_onehot():
    batch, height, width, n = 1, 192, 256, 16
    labels = jnp.zeros((batch, height, width), jnp.int32)
    compiled = jax.jit(lambda lab: aoi_maps(lab, n, (12, 16), 5)).lower(labels).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    # A (B, H, W, n) one-hot would be >= 786 kB even as bool; the banded form needs far less.
    assert temp < batch * height * width * n // 8, temp


def test_aoi_maps_rejects_bad_input():
    with pytest.raises(ValueError, match="labels must be"):
        aoi_maps(jnp.zeros((4, 4), jnp.int32), 3, (2, 2))
    with pytest.raises(TypeError, match="integer"):
        aoi_maps(jnp.zeros((1, 4, 4)), 3, (2, 2))
    with pytest.raises(ValueError, match="kernel_size"):
        aoi_maps(jnp.zeros((1, 4, 4), jnp.int32), 3, (2, 2), kernel_size=0)
    with pytest.raises(ValueError, match="out_hw"):
        aoi_maps(jnp.zeros((1, 4, 4), jnp.int32), 3, (0, 2))


# ---------------------------------------------------------------------------------------------
# moment_pool
# ---------------------------------------------------------------------------------------------


def random_aoi(rng, shape, absent_col=None):
    aoi = rng.random(shape) * (rng.random(shape) > 0.3)  # exact zeros matter for "count"
    if absent_col is not None:
        aoi[..., absent_col] = 0.0
    return aoi.astype(np.float32)


@pytest.mark.parametrize("normalizer", ["soft_mass", "count", "area"])
@pytest.mark.parametrize("skew_denominator", ["std_cubed", "var"])
def test_moment_pool_matches_numpy(normalizer, skew_denominator):
    rng = np.random.default_rng(3)
    feats = (rng.normal(size=(2, 5, 6, 4)) * 2.0 + 0.5).astype(np.float32)
    aoi = random_aoi(rng, (2, 5, 6, 3), absent_col=1)
    got = moment_pool(
        jnp.asarray(feats),
        jnp.asarray(aoi),
        normalizer=normalizer,
        skew_denominator=skew_denominator,
    )
    want = np_moments(feats, aoi, normalizer=normalizer, skew_denominator=skew_denominator)
    for name, g, r in zip(("mean", "var", "skew"), got, want, strict=True):
        assert g.dtype == jnp.float32 and g.shape == (2, 3, 4), name
        np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-5, err_msg=name)
        # Absent class column: exact zeros, no NaN.
        assert np.all(np.asarray(g)[:, 1] == 0.0), name


@pytest.mark.parametrize("skew_denominator", ["std_cubed", "var"])
def test_moment_pool_guards_match_numpy(skew_denominator):
    rng = np.random.default_rng(4)
    feats = np.maximum(rng.normal(size=(2, 5, 6, 4)), 0.0).astype(np.float32)  # ReLU-like
    aoi = random_aoi(rng, (2, 5, 6, 3), absent_col=1)
    # Channel 2 is off except at one pixel (value 10) that lies in class 0's AOI with a tiny
    # weight: inside class 0 its variance is about eps and its skewness w a^3 / (2 eps)^1.5 ~ 3e3.
    feats[:, :, :, 2] = 0.0
    feats[0, 1, 1, 2] = 10.0
    aoi[0, :, :, 0] = 1.0
    aoi[0, 1, 1, 0] = 2.9e-7
    aoi[1, :, :, 2] *= 0.02  # a node of a fraction of a pixel
    kw = dict(skew_denominator=skew_denominator, min_mass=0.5, skew_floor=0.3)
    got = moment_pool(jnp.asarray(feats), jnp.asarray(aoi), **kw)
    want = np_moments(feats, aoi, **kw)
    for name, g, r in zip(("mean", "var", "skew"), got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=2e-4, atol=1e-5, err_msg=name)
    assert np.all(np.asarray(got[0])[1, 2] == 0.0)  # below min_mass: absent
    # Without the floor the nearly constant channel's skewness is huge; with it, small.
    plain = np_moments(feats, aoi, skew_denominator=skew_denominator)[2]
    if skew_denominator == "std_cubed":
        assert abs(plain[0, 0, 2]) > 1e3 and abs(want[2][0, 0, 2]) < 1.0


def test_moment_pool_large_mean_is_stable():
    # mean 1e3, std 1, plus class-dependent offsets: a raw-moment expansion in float32 would lose
    # about 6 digits in the variance (1e6 - 1e6; measured rel error 0.77 here). Tolerances:
    # var rel 2e-5, skew abs 2e-4 (measured 8e-7 and 5e-6).
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, (2, 8, 10))
    aoi = np.eye(3, dtype=np.float32)[labels]
    feats = (1e3 + labels[..., None] * 2.0 + rng.normal(size=(2, 8, 10, 5))).astype(np.float32)
    mean, var, skew = moment_pool(jnp.asarray(feats), jnp.asarray(aoi))
    r_mean, r_var, r_skew = np_moments(feats, aoi)
    np.testing.assert_allclose(mean, r_mean, rtol=1e-6)
    np.testing.assert_allclose(var, r_var, rtol=2e-5)
    np.testing.assert_allclose(skew, r_skew, atol=2e-4)


def test_moment_pool_bf16_features_computed_in_float32():
    rng = np.random.default_rng(5)
    feats = jnp.asarray(rng.normal(size=(1, 6, 6, 3)) + 3.0, jnp.bfloat16)
    aoi = random_aoi(rng, (1, 6, 6, 2))
    got = moment_pool(feats, jnp.asarray(aoi))
    want = np_moments(np.asarray(feats.astype(jnp.float32)), aoi)
    for g, r in zip(got, want, strict=True):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_moment_pool_memory_does_not_scale_with_n_c_h_w():
    b, h, w, n, c = 1, 32, 32, 64, 64
    feats = jnp.zeros((b, h, w, c))
    aoi = jnp.zeros((b, h, w, n))
    temp = jax.jit(moment_pool).lower(feats, aoi).compile().memory_analysis().temp_size_in_bytes
    # (B, h, w, n, c) float32 would be 16 MiB; (B, h, w, 3c) work arrays are well under 4 MiB.
    assert temp < b * h * w * n * c * 4 // 4, temp


def test_intra_kd_loss_with_guards_matches_numpy_and_central_differences():
    labels, student, teacher = make_loss_inputs(seed=21)
    kw = dict(min_mass=1.5, skew_floor=0.5)
    got = intra_kd_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels), 4, 5, **kw)
    np.testing.assert_allclose(got, np_intra_kd(student, teacher, labels, 4, 5, **kw), rtol=1e-4)
    with jax.enable_x64(True):
        s64, t64 = jnp.asarray(student, jnp.float64), jnp.asarray(teacher, jnp.float64)
        y = jnp.asarray(labels)

        def f(x):
            return intra_kd_loss(x, t64, y, 4, 5, **kw)

        grad = np.asarray(jax.grad(f)(s64))
        rng = np.random.default_rng(0)
        for _ in range(6):
            idx = tuple(rng.integers(0, d) for d in student.shape)
            h = 1e-6
            e = np.zeros(student.shape)
            e[idx] = h
            numeric = (f(s64 + e) - f(s64 - e)) / (2 * h)
            np.testing.assert_allclose(grad[idx], numeric, rtol=1e-4, atol=1e-9)


def test_moment_pool_rejects_bad_options():
    f, a = jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 2, 2, 2))
    with pytest.raises(ValueError, match="normalizer"):
        moment_pool(f, a, normalizer="mass")
    with pytest.raises(ValueError, match="skew_denominator"):
        moment_pool(f, a, skew_denominator="std")
    with pytest.raises(ValueError, match="differ"):
        moment_pool(f, jnp.zeros((1, 3, 2, 2)))


# ---------------------------------------------------------------------------------------------
# affinity_graph
# ---------------------------------------------------------------------------------------------


def test_affinity_graph_matches_numpy_with_zero_descriptors():
    rng = np.random.default_rng(6)
    m = rng.normal(size=(2, 4, 5)).astype(np.float32)
    m[0, 2] = 0.0
    m[1, 0] = 0.0
    got = np.asarray(affinity_graph(jnp.asarray(m)))
    np.testing.assert_allclose(got, np_affinity(m), rtol=1e-5, atol=1e-6)
    assert np.all(got[0, 2, :] == 0) and np.all(got[0, :, 2] == 0)
    # Hand-computed: parallel -> 1, antiparallel -> -1, orthogonal -> 0.
    hand = jnp.asarray([[[1.0, 0.0], [2.0, 0.0], [-3.0, 0.0], [0.0, 5.0]]])
    np.testing.assert_allclose(affinity_graph(hand)[0, 0], [1.0, 1.0, -1.0, 0.0], atol=1e-6)


def test_affinity_graph_gradient_finite_at_zero_descriptor():
    m = jnp.asarray(np.random.default_rng(7).normal(size=(1, 3, 4)), jnp.float32)
    m = m.at[0, 1].set(0.0)
    weights = jnp.asarray(np.random.default_rng(8).normal(size=(1, 3, 3)), jnp.float32)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(affinity_graph(x) * weights)))(m)
    assert np.all(np.isfinite(np.asarray(grad)))


# ---------------------------------------------------------------------------------------------
# intra_kd_loss
# ---------------------------------------------------------------------------------------------


def make_loss_inputs(seed=9, dtype=np.float32):
    rng = np.random.default_rng(seed)
    labels = random_labels(rng, (2, 24, 32), 4, ignore_frac=0.2)
    labels[1][labels[1] == 2] = 0  # class 2 absent from image 1 only
    student = rng.normal(size=(2, 6, 8, 5)).astype(dtype)
    teacher = (rng.normal(size=(2, 4, 5, 7)) + 1.0).astype(dtype)
    return labels, student, teacher


def test_intra_kd_loss_matches_numpy_different_sizes_and_channels():
    labels, student, teacher = make_loss_inputs()
    alphas = (1.0, 0.5, 2.0)
    got = intra_kd_loss(
        jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels), 4, 5, alphas
    )
    want = np_intra_kd(student, teacher, labels, 4, 5, alphas)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert want > 1e-3  # the comparison is not trivially 0 == 0


@pytest.mark.parametrize("normalizer,skew", [("count", "var"), ("area", "std_cubed")])
def test_intra_kd_loss_passes_options_through(normalizer, skew):
    labels, student, teacher = make_loss_inputs(seed=10)
    got = intra_kd_loss(
        jnp.asarray(student),
        jnp.asarray(teacher),
        jnp.asarray(labels),
        4,
        kernel_size=3,
        normalizer=normalizer,
        skew_denominator=skew,
    )
    want = np_intra_kd(student, teacher, labels, 4, 3, normalizer=normalizer, skew_denominator=skew)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_intra_kd_loss_bf16_and_identical_features_give_zero():
    labels, student, _ = make_loss_inputs(seed=11)
    s16 = jnp.asarray(student, jnp.bfloat16)
    loss = intra_kd_loss(s16, s16, jnp.asarray(labels), 4)
    assert loss.dtype == jnp.float32
    assert float(loss) == 0.0


def test_intra_kd_loss_teacher_gets_no_gradient_and_student_grad_finite():
    labels, student, teacher = make_loss_inputs(seed=12)
    fn = lambda s, t: intra_kd_loss(s, t, jnp.asarray(labels), 4)
    g_s, g_t = jax.jit(jax.grad(fn, argnums=(0, 1)))(jnp.asarray(student), jnp.asarray(teacher))
    assert np.all(np.asarray(g_t) == 0.0)
    assert np.all(np.isfinite(np.asarray(g_s))) and np.abs(np.asarray(g_s)).max() > 0


def test_intra_kd_loss_gradient_matches_central_differences_float64():
    labels, student, teacher = make_loss_inputs(seed=13, dtype=np.float64)
    student, teacher = student[:, :4, :5, :3], teacher[:, :, :, :4]
    with jax.enable_x64(True):
        lab = jnp.asarray(labels)
        t = jnp.asarray(teacher, jnp.float64)
        fn = jax.jit(lambda s: intra_kd_loss(s, t, lab, 4, kernel_size=5))
        s0 = jnp.asarray(student, jnp.float64)
        assert fn(s0).dtype == jnp.float64
        grad = np.asarray(jax.jit(jax.grad(fn))(s0))
        rng = np.random.default_rng(14)
        step = 1e-6
        for _ in range(4):
            v = rng.normal(size=student.shape)
            fd = (float(fn(s0 + step * v)) - float(fn(s0 - step * v))) / (2 * step)
            np.testing.assert_allclose(np.sum(grad * v), fd, rtol=1e-6, atol=1e-10)
        for idx in [(0, 0, 0, 0), (1, 3, 4, 2), (0, 2, 1, 1)]:
            e = np.zeros(student.shape)
            e[idx] = 1.0
            fd = (float(fn(s0 + step * e)) - float(fn(s0 - step * e))) / (2 * step)
            np.testing.assert_allclose(grad[idx], fd, rtol=1e-5, atol=1e-10)


def test_intra_kd_loss_rejects_bad_input():
    labels, student, teacher = make_loss_inputs()
    with pytest.raises(ValueError, match="moment_weights"):
        intra_kd_loss(
            jnp.asarray(student),
            jnp.asarray(teacher),
            jnp.asarray(labels),
            4,
            moment_weights=(1.0, 1.0),
        )
    with pytest.raises(ValueError, match="teacher_feats batch"):
        intra_kd_loss(jnp.asarray(student), jnp.asarray(teacher[:1]), jnp.asarray(labels), 4)


# ---------------------------------------------------------------------------------------------
# multi_tap_intra_kd_loss
# ---------------------------------------------------------------------------------------------


def test_multi_tap_weighted_sum_and_missing_tap_message():
    labels, student, teacher = make_loss_inputs(seed=15)
    rng = np.random.default_rng(16)
    mid_s = rng.normal(size=(2, 12, 16, 3)).astype(np.float32)
    s_taps = {"high": jnp.asarray(student), "mid": jnp.asarray(mid_s)}
    t_taps = {"ppm": jnp.asarray(teacher)}
    pairs = [("high", "ppm", 1.0), ("mid", "ppm", 0.5)]
    got = multi_tap_intra_kd_loss(s_taps, t_taps, jnp.asarray(labels), 4, pairs, kernel_size=3)
    want = np_intra_kd(student, teacher, labels, 4, 3) + 0.5 * np_intra_kd(
        mid_s, teacher, labels, 4, 3
    )
    np.testing.assert_allclose(got, want, rtol=1e-4)
    with pytest.raises(KeyError, match=r"student tap 'low'.*\['high', 'mid'\]"):
        multi_tap_intra_kd_loss(s_taps, t_taps, jnp.asarray(labels), 4, [("low", "ppm", 1.0)])
    with pytest.raises(KeyError, match=r"teacher tap 'x'.*\['ppm'\]"):
        multi_tap_intra_kd_loss(s_taps, t_taps, jnp.asarray(labels), 4, [("high", "x", 1.0)])
    with pytest.raises(ValueError, match="pairs is empty"):
        multi_tap_intra_kd_loss(s_taps, t_taps, jnp.asarray(labels), 4, [])


def test_multi_tap_rejects_a_malformed_pair_and_sums_equal_weights_of_one_tap():
    labels, student, teacher = make_loss_inputs(seed=17)
    s_taps, t_taps = {"high": jnp.asarray(student)}, {"ppm": jnp.asarray(teacher)}
    with pytest.raises(ValueError, match=r"each pair must be \(student_tap, teacher_tap, weight\)"):
        multi_tap_intra_kd_loss(s_taps, t_taps, jnp.asarray(labels), 4, [("high", "ppm")])
    twice = multi_tap_intra_kd_loss(
        s_taps, t_taps, jnp.asarray(labels), 4, [("high", "ppm", 0.25), ("high", "ppm", 0.75)]
    )
    np.testing.assert_allclose(twice, np_intra_kd(student, teacher, labels, 4), rtol=1e-4)
