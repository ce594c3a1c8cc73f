"""Distillation terms (KD, AT, SKD, SAD, CWD, IntRA-KD) and their config and train-step wiring.

Each loss is checked against a float64 numpy reference written here (or in the sibling loss tests)
and by central differences in float64; the spec reader against hand-made configs; the train step
for every term at once on tiny models, on 1 and 4 devices.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_intra_kd import np_bilinear_resize, np_intra_kd, random_labels
from test_segmentation_losses import np_cwd, np_log_softmax
from test_train import _tiny_models as tiny_models

from configs.default import get_base_config
from intrakd_jax import models, optim, parallel, steps
from intrakd_jax.errors import ConfigError
from intrakd_jax.losses import (
    attention_transfer_loss,
    channel_wise_distillation_loss,
    intra_kd_loss,
    logit_kd_loss,
    masked_pixel_mean,
    sad_loss,
    skd_pair_loss,
    skd_pixel_loss,
    weighted_cross_entropy,
)
from intrakd_jax.losses import terms as T
from intrakd_jax.losses.skd import adaptive_max_pool2d, node_grid

IGNORE = 255


# ---------------------------------------------------------------------------------------------
# float64 numpy references: literal readings of METHOD.md section 4
# ---------------------------------------------------------------------------------------------


def np_resize_maps(maps_bhw, hw):
    if maps_bhw.shape[1:] == tuple(hw):
        return maps_bhw
    return np_bilinear_resize(maps_bhw[..., None], *hw)[..., 0]


def np_kd(s, t, labels, temperature):
    log_ps = np_log_softmax(np.asarray(s, np.float64) / temperature)
    log_pt = np_log_softmax(np.asarray(t, np.float64) / temperature)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1) * temperature**2
    valid = labels != IGNORE
    return kl[valid].mean() if valid.any() else 0.0


def np_skd_pixel(s, t, labels):
    ce = -(np.exp(np_log_softmax(t)) * np_log_softmax(s)).sum(-1)
    valid = labels != IGNORE
    return ce[valid].mean() if valid.any() else 0.0


def np_adaptive_max_pool(x, out_h, out_w):
    b, h, w, c = x.shape
    out = np.zeros((b, out_h, out_w, c))
    for i in range(out_h):
        y0, y1 = (i * h) // out_h, math.ceil((i + 1) * h / out_h)
        for j in range(out_w):
            x0, x1 = (j * w) // out_w, math.ceil((j + 1) * w / out_w)
            out[:, i, j] = x[:, y0:y1, x0:x1].max(axis=(1, 2))
    return out


def np_grid(hw, fraction):
    return tuple(math.ceil(n / max(1, int(n * fraction))) for n in hw)


def np_node_units(feats, grid, norms=None):
    b = feats.shape[0]
    nodes = np_adaptive_max_pool(np.asarray(feats, np.float64), *grid).reshape(
        b, -1, feats.shape[-1]
    )
    if norms is None:
        norms = np.sqrt((nodes**2).sum(-1, keepdims=True)) + 1e-8
    return nodes / norms, norms


def np_skd_pair(s, t, fraction, student_norms=None):
    """sum (a_T - a_S)^2 / N^2 / B; ``student_norms`` fixed: the release's detached norms."""
    grid = np_grid(t.shape[1:3], fraction)
    u_t, _ = np_node_units(t, grid)
    u_s, _ = np_node_units(s, grid, student_norms)
    a_t = np.einsum("bic,bjc->bij", u_t, u_t)
    a_s = np.einsum("bic,bjc->bij", u_s, u_s)
    n = grid[0] * grid[1]
    return ((a_t - a_s) ** 2).sum() / n**2 / s.shape[0]


def np_at(s, t, p):
    a_s = (np.abs(np.asarray(s, np.float64)) ** p).sum(-1)
    a_t = (np.abs(np.asarray(t, np.float64)) ** p).sum(-1)
    a_s = np_resize_maps(a_s, a_t.shape[1:]).reshape(len(s), -1)
    a_t = a_t.reshape(len(t), -1)
    a_s = a_s / np.maximum(np.linalg.norm(a_s, axis=1, keepdims=True), 1e-12)
    a_t = a_t / np.maximum(np.linalg.norm(a_t, axis=1, keepdims=True), 1e-12)
    return ((a_s - a_t) ** 2).mean()


def np_sad(blocks):
    def softmax_map(m):
        flat = m.reshape(len(m), -1)
        e = np.exp(flat - flat.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).reshape(m.shape)

    maps = [(np.asarray(f, np.float64) ** 2).sum(-1) for f in blocks]
    total = 0.0
    for early, late in zip(maps[:-1], maps[1:], strict=True):
        hw = (max(early.shape[1], late.shape[1]), max(early.shape[2], late.shape[2]))
        a = softmax_map(np_resize_maps(early, hw))
        b = softmax_map(np_resize_maps(late, hw))
        total += ((a - b) ** 2).mean()
    return total


def logits_and_labels(seed, shape=(2, 6, 8), k=4, ignore_frac=0.3):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(*shape, k)) * 2.0
    t = rng.normal(size=(*shape, k)) * 3.0
    labels = random_labels(rng, shape, k, ignore_frac=ignore_frac)
    return s, t, labels


# ---------------------------------------------------------------------------------------------
# The losses against numpy
# ---------------------------------------------------------------------------------------------


def test_skd_pixel_matches_numpy_and_skips_ignore_pixels():
    s, t, labels = logits_and_labels(0)
    got = skd_pixel_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), labels != IGNORE)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_skd_pixel(s, t, labels), rtol=1e-5)
    # Garbage logits at ignored pixels change nothing.
    s_bad = np.where((labels == IGNORE)[..., None], np.nan, s)
    again = skd_pixel_loss(jnp.asarray(s_bad), jnp.asarray(t), labels != IGNORE)
    np.testing.assert_allclose(again, got, rtol=1e-6)
    none_valid = skd_pixel_loss(jnp.asarray(s), jnp.asarray(t), np.zeros(labels.shape, bool))
    assert float(none_valid) == 0.0


def test_skd_pixel_and_kd_at_t1_differ_by_the_teacher_entropy():
    s, t, labels = logits_and_labels(1, ignore_frac=0.0)
    p_t = np.exp(np_log_softmax(t))
    entropy = -(p_t * np.log(p_t)).sum(-1).mean()
    kd = logit_kd_loss(jnp.asarray(s), jnp.asarray(t), 1.0)
    skd = skd_pixel_loss(jnp.asarray(s), jnp.asarray(t))
    np.testing.assert_allclose(float(skd) - float(kd), entropy, rtol=1e-5)


def test_masked_pixel_mean_over_devices_is_the_global_mean():
    rng = np.random.default_rng(2)
    values = rng.random((8, 3, 4)).astype(np.float32)
    mask = rng.random((8, 3, 4)) > 0.5
    mask[:2] = False  # one device sees no valid pixel at all
    mesh = parallel.make_data_mesh(4)
    fn = jax.shard_map(
        lambda v, m: masked_pixel_mean(v, m, parallel.DATA_AXIS),
        mesh=mesh,
        in_specs=(jax.P(parallel.DATA_AXIS), jax.P(parallel.DATA_AXIS)),
        out_specs=jax.P(),
    )
    np.testing.assert_allclose(fn(values, mask), values[mask].mean(), rtol=1e-6)


@pytest.mark.parametrize(
    "in_hw,out_hw",
    [((8, 12), (2, 2)), ((7, 10), (3, 2)), ((5, 5), (2, 3)), ((4, 6), (4, 6))],
)
def test_adaptive_max_pool_matches_numpy(in_hw, out_hw):
    x = np.random.default_rng(3).normal(size=(2, *in_hw, 3)).astype(np.float32)
    got = adaptive_max_pool2d(jnp.asarray(x), out_hw)
    np.testing.assert_array_equal(got, np_adaptive_max_pool(x, *out_hw).astype(np.float32))


def test_node_grid_is_the_release_kernel_in_ceil_mode():
    assert node_grid((8, 16), 0.5) == (2, 2)
    assert node_grid((7, 10), 0.5) == (3, 2)  # kernel 3 over 7 rows: 3 + 3 + 1
    assert node_grid((36, 100), 0.25) == (4, 4)
    assert node_grid((3, 5), 0.1) == (3, 5)  # kernel floors at 1: one node per pixel
    with pytest.raises(ValueError, match="node_fraction"):
        node_grid((8, 8), 0.0)
    with pytest.raises(ValueError, match="node_fraction"):
        node_grid((8, 8), 1.5)


@pytest.mark.parametrize(
    "s_shape,t_shape,fraction",
    [
        ((2, 8, 12, 3), (2, 8, 12, 5), 0.5),  # same size, other channels: 2 x 2 nodes
        ((2, 6, 10, 4), (2, 4, 6, 7), 0.5),  # larger student: pooled to the teacher's grid
        ((1, 7, 9, 3), (1, 7, 9, 3), 0.34),  # uneven bins, 3 x 3 nodes
    ],
)
def test_skd_pair_matches_numpy(s_shape, t_shape, fraction):
    rng = np.random.default_rng(4)
    s, t = rng.normal(size=s_shape), rng.normal(size=t_shape) + 0.5
    got = skd_pair_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), fraction)
    want = np_skd_pair(s, t, fraction)
    assert want > 1e-5  # max-pooled normal features are all alike: small, but not 0
    np.testing.assert_allclose(got, want, rtol=1e-5)
    same = skd_pair_loss(jnp.asarray(t, jnp.float32), jnp.asarray(t, jnp.float32), fraction)
    np.testing.assert_allclose(same, 0.0, atol=1e-10)


@pytest.mark.parametrize("s_shape", [(2, 6, 8, 3), (2, 3, 5, 4)])
def test_attention_transfer_with_power_matches_numpy(s_shape):
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=s_shape), rng.normal(size=(2, 6, 8, 7))
    for p in (2.0, 3.0):
        got = attention_transfer_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), p)
        np.testing.assert_allclose(got, np_at(s, t, p), rtol=1e-5)
    with pytest.raises(ValueError, match="p must be >= 1"):
        attention_transfer_loss(jnp.asarray(s), jnp.asarray(t), 0.5)


def test_sad_matches_numpy_and_only_the_earlier_block_learns():
    rng = np.random.default_rng(6)
    blocks = [
        rng.normal(size=(2, 8, 12, 3)),  # 1/4
        rng.normal(size=(2, 4, 6, 5)),  # 1/8: upsampled to 8 x 12 for the first pair
        rng.normal(size=(2, 4, 6, 2)),
    ]
    got = sad_loss([jnp.asarray(b, jnp.float32) for b in blocks])
    want = np_sad(blocks)
    assert want > 1e-6
    np.testing.assert_allclose(got, want, rtol=1e-5)
    grads = jax.jit(jax.grad(sad_loss))([jnp.asarray(b, jnp.float32) for b in blocks])
    assert np.abs(np.asarray(grads[0])).max() > 0 and np.abs(np.asarray(grads[1])).max() > 0
    # The deepest block is only ever a target.
    assert np.all(np.asarray(grads[2]) == 0.0)
    with pytest.raises(ValueError, match="at least two"):
        sad_loss(blocks[:1])


# ---------------------------------------------------------------------------------------------
# Gradients by central differences, float64
# ---------------------------------------------------------------------------------------------


def _fd_cases():
    rng = np.random.default_rng(7)
    labels = random_labels(rng, (2, 8, 12), 4, ignore_frac=0.25)
    s_logits = rng.normal(size=(2, 8, 12, 4))
    t_logits = rng.normal(size=(2, 8, 12, 4)) * 2.0
    s_feats = rng.normal(size=(2, 4, 6, 3))
    t_feats = rng.normal(size=(2, 2, 3, 5)) + 1.0
    sad_blocks = [rng.normal(size=(2, 4, 6, 3)), rng.normal(size=(2, 2, 3, 4))]
    lab, valid = jnp.asarray(labels), jnp.asarray(labels != IGNORE)
    return {
        "intra_kd": (s_feats, lambda s: intra_kd_loss(s, jnp.asarray(t_feats), lab, 4, 3)),
        "kd": (s_logits, lambda s: logit_kd_loss(s, jnp.asarray(t_logits), 2.0, valid)),
        "at": (s_feats, lambda s: attention_transfer_loss(s, jnp.asarray(t_feats))),
        "skd_pixel": (s_logits, lambda s: skd_pixel_loss(s, jnp.asarray(t_logits), valid)),
        "skd_pair": (
            s_feats,
            lambda s: skd_pair_loss(s, jnp.asarray(t_feats), 0.5, detach_norm=False),
        ),
        "sad": (sad_blocks[0], lambda s: sad_loss([s, jnp.asarray(sad_blocks[1])])),
        "cwd": (s_logits, lambda s: channel_wise_distillation_loss(s, jnp.asarray(t_logits), 2.0)),
    }


def _central_differences(fn, x0, directions, step=1e-6):
    return [(fn(x0 + step * v) - fn(x0 - step * v)) / (2 * step) for v in directions]


@pytest.mark.parametrize("name", ["intra_kd", "kd", "at", "skd_pixel", "skd_pair", "sad", "cwd"])
def test_gradient_matches_central_differences_float64(name):
    with jax.enable_x64(True):
        x0, loss = _fd_cases()[name]
        x0 = jnp.asarray(x0, jnp.float64)
        fn = jax.jit(loss)
        assert fn(x0).dtype == jnp.float64
        grad = np.asarray(jax.jit(jax.grad(loss))(x0))
        assert np.abs(grad).max() > 0
        rng = np.random.default_rng(8)
        directions = [rng.normal(size=x0.shape) for _ in range(3)]
        fd = _central_differences(lambda x: float(fn(x)), x0, directions)
        for v, want in zip(directions, fd, strict=True):
            np.testing.assert_allclose(np.sum(grad * v), want, rtol=1e-6, atol=1e-10)


def test_skd_pair_detached_norm_gradient_matches_fixed_norm_numpy():
    # The release divides by a detached norm: the gradient is that of the loss with the
    # student's node norms frozen at their current values, which numpy differentiates here.
    rng = np.random.default_rng(9)
    s0, t = rng.normal(size=(2, 4, 6, 3)), rng.normal(size=(2, 4, 6, 5))
    grid = np_grid(t.shape[1:3], 0.5)
    _, norms0 = np_node_units(s0, grid)

    def grad_at_s0(detach_norm):
        with jax.enable_x64(True):
            loss = lambda s: skd_pair_loss(s, jnp.asarray(t), 0.5, detach_norm=detach_norm)
            return np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(s0)))

    grad = grad_at_s0(True)
    directions = [rng.normal(size=s0.shape) for _ in range(3)]
    fd = _central_differences(lambda s: np_skd_pair(s, t, 0.5, norms0), s0, directions)
    for v, want in zip(directions, fd, strict=True):
        np.testing.assert_allclose(np.sum(grad * v), want, rtol=1e-6, atol=1e-10)
    # And it is not the cosine similarity's own gradient.
    full = grad_at_s0(False)
    assert np.abs(full - grad).max() > 1e-3 * np.abs(grad).max()


# ---------------------------------------------------------------------------------------------
# Terms and distill_losses
# ---------------------------------------------------------------------------------------------


def all_terms_spec(s_tap="high", t_tap="high", sad_taps=("b1", "b2"), sad_start=0):
    return T.DistillSpec(
        (
            T.IntraKD(weight=10.0, taps=((s_tap, t_tap, 1.0),), kernel_size=3),
            T.KD(weight=0.5, temperature=2.0),
            T.AT(weight=100.0, taps=((s_tap, t_tap, 1.0),)),
            T.SKDPixel(weight=10.0),
            T.SKDPair(weight=1.0, taps=((s_tap, t_tap, 1.0),)),
            T.SAD(weight=0.1, taps=sad_taps, start_step=sad_start),
            T.CWD(weight=5.0, temperature=1.5),
        )
    )


def test_distill_losses_equal_the_numpy_references_and_their_weighted_sum():
    rng = np.random.default_rng(10)
    s_logits, t_logits, labels = logits_and_labels(11, shape=(2, 16, 24), k=4)
    s_high, t_high = rng.normal(size=(2, 2, 3, 5)), rng.normal(size=(2, 4, 6, 7))
    b1, b2 = rng.normal(size=(2, 4, 6, 3)), s_high
    spec = all_terms_spec()
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    total, values = T.distill_losses(
        spec,
        f32(s_logits),
        {"high": f32(s_high), "b1": f32(b1), "b2": f32(b2)},
        f32(t_logits),
        {"high": f32(t_high)},
        jnp.asarray(labels),
        step=0,
    )
    want = {
        "intra_kd": np_intra_kd(s_high, t_high, labels, 4, 3),
        "kd": np_kd(s_logits, t_logits, labels, 2.0),
        "at": np_at(s_high, t_high, 2.0),
        "skd_pixel": np_skd_pixel(s_logits, t_logits, labels),
        "skd_pair": np_skd_pair(s_high, t_high, 0.5),
        "sad": np_sad([b1, b2]),
        "cwd": np_cwd(s_logits, t_logits, 1.5),
    }
    assert list(values) == list(want)
    for name, value in want.items():
        np.testing.assert_allclose(values[name], value, rtol=2e-4, err_msg=name)
    weighted = sum(term.weight * want[term.name] for term in spec.terms)
    np.testing.assert_allclose(total, weighted, rtol=2e-4)


def test_sad_term_is_zero_before_its_start_step():
    rng = np.random.default_rng(12)
    taps = {
        "b1": jnp.asarray(rng.normal(size=(1, 4, 4, 2))),
        "b2": jnp.asarray(rng.normal(size=(1, 2, 2, 3))),
    }
    spec = T.DistillSpec((T.SAD(weight=0.1, taps=("b1", "b2"), start_step=5),))
    logits, labels = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8), jnp.int32)
    fn = jax.jit(lambda step: T.distill_losses(spec, logits, taps, None, None, labels, step))
    before_total, before = fn(4)
    after_total, after = fn(5)
    assert float(before["sad"]) == 0.0 and float(before_total) == 0.0
    np.testing.assert_allclose(after["sad"], np_sad([taps["b1"], taps["b2"]]), rtol=1e-5)
    np.testing.assert_allclose(after_total, 0.1 * after["sad"], rtol=1e-6)


def test_spec_is_hashable_and_lists_its_taps_and_teacher_need():
    spec = all_terms_spec("encoder", "psp", ("stage1", "encoder"))
    assert hash(spec) == hash(all_terms_spec("encoder", "psp", ("stage1", "encoder")))
    assert spec.needs_teacher
    assert spec.student_taps == ("encoder", "stage1")
    assert spec.teacher_taps == ("psp",)
    sad_only = T.DistillSpec((T.SAD(weight=0.1, taps=("a", "b")),))
    assert not sad_only.needs_teacher and sad_only.teacher_taps == ()
    with pytest.raises(ConfigError, match="at most once"):
        T.DistillSpec((T.KD(weight=1.0), T.KD(weight=2.0)))
    with pytest.raises(ValueError, match="need the teacher"):
        T.distill_losses(spec, jnp.zeros((1, 8, 8, 3)), {}, None, None, jnp.zeros((1, 8, 8)), 0)


def test_check_taps_names_the_field_and_the_models_taps():
    spec = all_terms_spec("encoder", "ppm", ("stage1", "encoder"))
    with pytest.raises(
        ConfigError, match=r"config.distill.intra_kd.taps.*'ppm'.*\['layer1', 'psp'\]"
    ):
        T.check_taps(spec, ["encoder", "stage1"], ["layer1", "psp"])
    sad = T.DistillSpec((T.SAD(weight=0.1, taps=("stage1", "mid2")),))
    with pytest.raises(ConfigError, match=r"sad_taps.*'mid2'"):
        T.check_taps(sad, ["encoder", "stage1"], None)
    T.check_taps(
        all_terms_spec("encoder", "psp", ("stage1", "encoder")), ["encoder", "stage1"], ["psp"]
    )


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


class FakeStudent:
    tap_levels = {"high": "encoder", "mid": "stage1"}
    sad_taps = ("stage1", "stage2_mid", "encoder")


class FakeTeacher:
    tap_levels = {"high": "psp", "mid": "layer1"}
    sad_taps = ("layer2", "layer3", "layer4")


class Undeclared:
    """A model class without the tap attributes."""


def distill_config(terms=("intra_kd",)):
    """The default config.distill with ``terms``; a string becomes what the flag parser makes of
    ``--config.distill.terms=kd,cwd``: a one-element tuple ("kd,cwd",)."""
    d = get_base_config().distill
    d.terms = (terms,) if isinstance(terms, str) else terms
    return d


def test_default_config_is_intra_kd_on_the_high_level_taps():
    spec = T.distill_spec_from_config(distill_config(), 100, FakeStudent, FakeTeacher())
    assert spec == T.DistillSpec((T.IntraKD(weight=10.0, taps=(("encoder", "psp", 1.0),)),))


def test_every_term_from_config_with_levels_and_tap_names():
    d = distill_config(("intra_kd,kd", "at,skd_pixel", "skd_pair,sad,cwd"))
    d.intra_kd.taps = (("high", "high", 1.0), ("mid", "layer1", 0.5))
    d.at.taps = (("stage2_mid", "mid", 1.0),)
    spec = T.distill_spec_from_config(d, 10, FakeStudent, FakeTeacher)
    assert spec.names == ("intra_kd", "kd", "at", "skd_pixel", "skd_pair", "sad", "cwd")
    by_name = {t.name: t for t in spec.terms}
    assert by_name["intra_kd"].taps == (("encoder", "psp", 1.0), ("stage1", "layer1", 0.5))
    assert by_name["at"].taps == (("stage2_mid", "layer1", 1.0),)
    assert by_name["sad"] == T.SAD(
        weight=0.1, taps=("stage1", "stage2_mid", "encoder"), start_step=5
    )
    assert by_name["skd_pair"] == T.SKDPair(weight=1.0, taps=(("encoder", "psp", 1.0),))
    assert by_name["cwd"] == T.CWD(weight=5.0, temperature=1.0)
    assert spec.student_taps == ("encoder", "stage1", "stage2_mid")


def test_terms_as_a_plain_comma_string_and_sad_only_needs_no_teacher():
    spec = T.distill_spec_from_config(distill_config("kd, cwd"), 10, FakeStudent, FakeTeacher)
    assert spec.names == ("kd", "cwd")
    plain = {**distill_config().to_dict(), "terms": "cwd,kd"}  # a dict config: a bare string
    assert T.distill_spec_from_config(plain, 10, FakeStudent, FakeTeacher).names == ("cwd", "kd")
    sad = T.distill_spec_from_config(distill_config(("sad",)), 7, FakeStudent)
    assert sad.names == ("sad",) and not sad.needs_teacher
    assert sad.terms[0].start_step == 3
    none = T.distill_spec_from_config(distill_config(("",)), 7, FakeStudent)
    assert none.terms == ()


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        ({"terms": ("intra_kd,kdd",)}, r"config.distill.terms.*'kdd'.*known terms"),
        ({"terms": ("kd,kd",)}, r"config.distill.terms: each term at most once"),
        ({"kd.weight": -1.0}, r"config.distill.kd.weight: must be finite and >= 0"),
        ({"kd.temperature": 0.0}, r"config.distill.kd.temperature: must be finite and > 0"),
        ({"cwd.temperature": float("inf")}, r"config.distill.cwd.temperature"),
        ({"intra_kd.normalizer": "mass"}, r"config.distill.intra_kd.normalizer.*soft_mass"),
        ({"intra_kd.skew_denominator": "std"}, r"config.distill.intra_kd.skew_denominator"),
        ({"intra_kd.kernel_size": 0}, r"config.distill.intra_kd.kernel_size"),
        ({"intra_kd.moment_weights": (1.0, 1.0)}, r"config.distill.intra_kd.moment_weights"),
        ({"at.p": 0.5}, r"config.distill.at.p: must be finite and >= 1"),
        ({"skd_pair.node_fraction": 1.5}, r"config.distill.skd_pair.node_fraction.*\(0, 1\]"),
        ({"sad.start_fraction": 1.5}, r"config.distill.sad.start_fraction.*\[0, 1\]"),
    ],
)
def test_bad_config_values_name_the_field(overrides, pattern):
    terms = overrides.pop("terms", ("intra_kd", "kd", "at", "skd_pair", "sad", "cwd"))
    d = distill_config(terms)
    for key, value in overrides.items():
        section, field = key.split(".")
        d[section][field] = value
    with pytest.raises(ConfigError, match=pattern):
        T.distill_spec_from_config(d, 10, FakeStudent, FakeTeacher)


def test_bad_taps_name_the_field_and_what_is_known():
    d = distill_config(("at",))
    d.at.taps = (("low", "high", 1.0),)
    with pytest.raises(ConfigError, match=r"config.distill.at.taps.*'low'.*\['high', 'mid'\]"):
        T.distill_spec_from_config(d, 10, FakeStudent, FakeTeacher)
    # What the flag parser makes of --config.distill.at.taps=((high,high,1.0),) (no quotes).
    d.at.taps = ("((high,high,1.0),)",)
    with pytest.raises(ConfigError, match=r"config.distill.at.taps.*e\.g\."):
        T.distill_spec_from_config(d, 10, FakeStudent, FakeTeacher)
    d.at.taps = (("high", "high"),)
    with pytest.raises(ConfigError, match=r"config.distill.at.taps.*\(student tap, teacher tap"):
        T.distill_spec_from_config(d, 10, FakeStudent, FakeTeacher)
    d.at.taps = (("high", "high", 1.0),)
    with pytest.raises(ConfigError, match=r"teacher model Undeclared declares no tap_levels"):
        T.distill_spec_from_config(d, 10, FakeStudent, Undeclared)
    d.at.taps = (("encoder", "anything", 1.0),)  # undeclared models: names go to check_taps
    assert T.distill_spec_from_config(d, 10, FakeStudent, Undeclared).teacher_taps == ("anything",)


def test_missing_teacher_sections_options_and_sad_taps_are_errors():
    with pytest.raises(ConfigError, match=r"'kd' needs a teacher"):
        T.distill_spec_from_config(distill_config("kd"), 10, FakeStudent, None)
    with pytest.raises(ConfigError, match=r"sad.*Undeclared declares sad_taps=\(\)"):
        T.distill_spec_from_config(distill_config("sad"), 10, Undeclared)
    d = distill_config("kd")
    d.kd.alpha = 0.5
    with pytest.raises(ConfigError, match=r"config.distill.kd: unknown option\(s\) \['alpha'\]"):
        T.distill_spec_from_config(d, 10, FakeStudent, FakeTeacher)
    d = ml_collections.ConfigDict({"terms": ("skd_pair",)})
    with pytest.raises(ConfigError, match=r"config.distill.skd_pair: missing"):
        T.distill_spec_from_config(d, 10, FakeStudent, FakeTeacher)
    d = ml_collections.ConfigDict({"terms": ("skd_pair",), "skd_pair": {"weight": 1.0}})
    with pytest.raises(
        ConfigError, match=r"config.distill.skd_pair: missing option\(s\) \['taps'\]"
    ):
        T.distill_spec_from_config(d, 10, FakeStudent, FakeTeacher)


def test_real_models_declare_what_the_default_config_needs():
    spec = T.distill_spec_from_config(
        distill_config("intra_kd,sad"), 10, models.ERFNet, models.PSPNet
    )
    assert spec.terms[0].taps == (("encoder", "psp", 1.0),)
    assert spec.terms[1].taps == models.ERFNet.sad_taps


# ---------------------------------------------------------------------------------------------
# The train step
# ---------------------------------------------------------------------------------------------

HW = (32, 64)


def tiny_batch(seed=0):
    rng = np.random.default_rng(seed)
    batch = {
        "image": rng.normal(size=(8, *HW, 3)).astype(np.float32),
        "label": rng.integers(0, 5, size=(8, *HW)).astype(np.int32),
    }
    batch["label"][0, :6] = IGNORE  # ignore pixels on one device only
    batch["label"][5, :, :3] = IGNORE
    return batch


def make_step(num_devices, spec, with_teacher=True):
    mesh = parallel.make_data_mesh(num_devices)
    student, teacher = tiny_models(True)
    eval_student, _ = tiny_models(False)
    params = jax.eval_shape(lambda: eval_student.init(jax.random.key(0), jnp.zeros((1, *HW, 3))))
    tx = optim.make_optimizer(params["params"], learning_rate=0.05, num_steps=10, head_lr_mult=1.0)
    state = jax.jit(
        lambda k: steps.create_train_state(eval_student, tx, k, HW),
        out_shardings=parallel.replicated(mesh),
    )(jax.random.key(3))
    step = steps.make_train_step(
        student,
        tx,
        mesh,
        5,
        (0.4, 1.0, 1.0, 1.0, 1.0),
        teacher=teacher if with_teacher else None,
        distill=spec,
    )
    return mesh, state, step


@pytest.fixture(scope="module")
def teacher_vars():
    _, teacher = tiny_models(False)
    return jax.jit(teacher.init)(jax.random.key(1), jnp.zeros((1, *HW, 3)))


def default_spec_all_terms(num_train_steps, sad_start_fraction=0.5):
    d = distill_config("intra_kd,kd,at,skd_pixel,skd_pair,sad,cwd")
    d.sad.start_fraction = sad_start_fraction
    return T.distill_spec_from_config(d, num_train_steps, models.ERFNet, models.PSPNet)


def test_all_terms_step_on_four_devices_reports_every_term_of_the_global_batch(teacher_vars):
    spec = default_spec_all_terms(num_train_steps=2, sad_start_fraction=0.0)
    mesh, state, step = make_step(4, spec)
    batch = tiny_batch()
    # The step donates its state: keep a host copy of the variables it starts from.
    variables = jax.device_get(state.variables)
    tvars = parallel.replicate(teacher_vars, mesh)
    _, metrics = step(state, tvars, parallel.to_global(batch, mesh))
    metrics = jax.device_get(metrics)
    names = ("ce", *spec.names, "loss")
    assert set(names) <= set(metrics)
    assert all(np.isfinite(metrics[k]) and metrics[k] > 0.0 for k in names)
    weighted = sum(term.weight * metrics[term.name] for term in spec.terms)
    np.testing.assert_allclose(metrics["loss"], metrics["ce"] + weighted, rtol=1e-5)

    # The same losses on the whole batch at once, without shard_map: with ignore pixels spread
    # unevenly over the devices, the step's per-pixel terms must still be global-batch means.
    student, teacher = tiny_models(False)
    train_student = student.clone(bn_axis_name=None)

    @jax.jit
    def whole_batch(images, labels):
        (logits, taps), _ = train_student.apply(
            variables, images, train=True, mutable=["batch_stats"]
        )
        t_logits, t_taps = teacher.apply(teacher_vars, images, train=False)
        ce = weighted_cross_entropy(logits, labels, jnp.asarray([0.4, 1.0, 1.0, 1.0, 1.0]))
        return ce, T.distill_losses(spec, logits, taps, t_logits, t_taps, labels, 0)

    ce, (total, values) = whole_batch(jnp.asarray(batch["image"]), jnp.asarray(batch["label"]))
    np.testing.assert_allclose(metrics["ce"], ce, rtol=2e-5)
    for name in spec.names:
        np.testing.assert_allclose(metrics[name], values[name], rtol=2e-5, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(metrics["loss"], ce + total, rtol=2e-5)


def test_sad_only_step_runs_without_teacher_and_switches_on_without_recompiling(caplog):
    spec = T.distill_spec_from_config(distill_config("sad"), 4, models.ERFNet)
    assert spec.terms[0].start_step == 2
    mesh, state, step = make_step(1, spec, with_teacher=False)
    batch = parallel.to_global(tiny_batch(), mesh)
    history = []
    state, metrics = step(state, None, batch)
    history.append(jax.device_get(metrics))
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        for _ in range(2):
            state, metrics = step(state, None, batch)
            history.append(jax.device_get(metrics))
    assert not [r for r in caplog.records if r.getMessage().startswith("Compiling")]
    assert history[0]["sad"] == 0.0 and history[1]["sad"] == 0.0 and history[2]["sad"] > 0.0
    np.testing.assert_allclose(history[0]["loss"], history[0]["ce"], rtol=1e-6)
    np.testing.assert_allclose(
        history[2]["loss"], history[2]["ce"] + 0.1 * history[2]["sad"], rtol=1e-5
    )


def _count_named_calls(jaxpr, name):
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.params.get("name") == name:
            count += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    count += _count_named_calls(inner, name)
    return count


def teacher_marker(images):
    return images


class MarkedTeacher(models.PSPNet):
    """The tiny teacher with a named call at its input, to count its applications in a jaxpr."""

    def __call__(self, x, train=False):  # noqa: D102
        return super().__call__(jax.jit(teacher_marker)(x), train)


def test_teacher_runs_once_per_step_for_all_teacher_terms_and_not_for_sad(teacher_vars):
    teacher = MarkedTeacher(num_classes=5, depth=18, base_width=4, head_channels=8, bins=(1, 2))
    student, _ = tiny_models(True)
    mesh, state, _ = make_step(1, None)
    batch = parallel.to_global(tiny_batch(), mesh)
    tx = optim.make_optimizer(state.params, learning_rate=0.05, num_steps=10, head_lr_mult=1.0)

    def count(spec):
        step = steps.make_train_step(
            student, tx, mesh, 5, (1.0,) * 5, teacher=teacher, distill=spec
        )
        jaxpr = jax.make_jaxpr(step)(state, teacher_vars, batch)
        return _count_named_calls(jaxpr.jaxpr, "teacher_marker")

    assert count(default_spec_all_terms(10)) == 1
    assert count(T.distill_spec_from_config(distill_config("sad"), 10, models.ERFNet)) == 0
