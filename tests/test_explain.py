"""mode=explain: its numbers are the loss's own, it writes figures and JSON, errors are clear.

The numbers are checked against the loss module's functions called here on the same taps; the
mode runs end to end through ``train.train_and_evaluate`` on the ApolloScape smoke twin with
untrained (random) teacher and student checkpoints written in a second.
"""

import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from intrakd_jax import building, checkpointing, explain, optim, parallel, steps, train
from intrakd_jax.losses import intra_kd as ikd
from intrakd_jax.losses import terms

N = 5  # classes of the hand-made batches


def _labels(rng, shape):
    labels = rng.integers(0, N, size=shape).astype(np.int32)
    labels[rng.random(shape) < 0.1] = 255
    labels[0][labels[0] == 3] = 0  # class 3 absent from image 0: a zero node
    labels[1][labels[1] == 4] = 0
    labels[1, :2, :2] = 4  # class 4 in image 1 only as a 4-pixel corner: a tiny node
    return labels


def _taps(rng, batch):
    # Student and teacher taps of different sizes and widths, with a large mean (as after ReLU
    # stacks): the AOI maps differ per side and the moments must not cancel.
    return (
        {
            "s_hi": 3.0 + rng.normal(size=(batch, 4, 6, 8)).astype(np.float32),
            "s_mid": rng.normal(size=(batch, 8, 12, 4)).astype(np.float32),
        },
        {
            "t_hi": 5.0 + rng.normal(size=(batch, 8, 12, 16)).astype(np.float32),
            "t_mid": rng.normal(size=(batch, 8, 12, 6)).astype(np.float32),
        },
    )


OPTIONS = [
    {},
    {
        "moment_weights": (1.0, 0.0, 2.0),
        "normalizer": "count",
        "skew_denominator": "var",
        "min_mass": 1.0,
        "skew_floor": 0.1,
        "kernel_size": 3,
    },
]


@pytest.mark.parametrize("options", OPTIONS, ids=["defaults", "guards"])
def test_explain_batch_is_what_the_loss_computes(options):
    rng = np.random.default_rng(0)
    labels = _labels(rng, (3, 32, 48))
    s_taps, t_taps = _taps(rng, 3)
    pairs = (("s_hi", "t_hi", 1.0), ("s_mid", "t_mid", 0.5))
    term = terms.IntraKD(weight=10.0, taps=pairs, **options)
    kw = {
        "normalizer": term.normalizer,
        "skew_denominator": term.skew_denominator,
        "min_mass": term.min_mass,
        "skew_floor": term.skew_floor,
    }
    result = explain.explain_batch(s_taps, t_taps, labels, N, term)

    enabled = [m for m, a in zip(explain.MOMENTS, term.moment_weights, strict=True) if a > 0]
    for (s_name, t_name, _), pair in zip(pairs, result["pairs"], strict=True):
        assert (pair["student_tap"], pair["teacher_tap"]) == (s_name, t_name)
        assert list(pair["moments"]) == enabled
        for role, feats in (("student", s_taps[s_name]), ("teacher", t_taps[t_name])):
            aoi = ikd.aoi_maps(jnp.asarray(labels), N, feats.shape[1:3], term.kernel_size)
            np.testing.assert_array_equal(pair[f"aoi_{role}"], aoi)
            mass = np.asarray(aoi).sum(axis=(1, 2))
            np.testing.assert_allclose(pair[f"mass_{role}"], mass, rtol=1e-6)
            np.testing.assert_array_equal(
                pair[f"present_{role}"], (mass > 0) & (mass >= term.min_mass)
            )
            moments = ikd.moment_pool(jnp.asarray(feats), aoi, **kw)
            for name, moment in zip(explain.MOMENTS, moments, strict=True):
                if name not in enabled:
                    continue
                np.testing.assert_array_equal(pair["moments"][name][role], moment)
                np.testing.assert_allclose(
                    pair["moments"][name][f"graph_{role}"],
                    ikd.affinity_graph(moment),
                    rtol=1e-6,
                    atol=1e-7,
                )
        # The per-moment losses, summed and averaged over the images, are the pair's loss.
        summed_b = sum(m["loss"] for m in pair["moments"].values())
        np.testing.assert_allclose(summed_b, pair["loss"], rtol=1e-12)
        expected = ikd.intra_kd_loss(
            jnp.asarray(s_taps[s_name]),
            jnp.asarray(t_taps[t_name]),
            jnp.asarray(labels),
            N,
            term.kernel_size,
            term.moment_weights,
            **kw,
        )
        np.testing.assert_allclose(pair["loss"].mean(), expected, rtol=1e-5)
    total = ikd.multi_tap_intra_kd_loss(
        s_taps,
        t_taps,
        jnp.asarray(labels),
        N,
        pairs,
        kernel_size=term.kernel_size,
        moment_weights=term.moment_weights,
        **kw,
    )
    np.testing.assert_allclose(result["intra_kd"].mean(), total, rtol=1e-5)
    np.testing.assert_allclose(result["weighted"], 10.0 * result["intra_kd"])
    # Absent classes are absent, and their graph rows are zero on both sides.
    hi = result["pairs"][0]
    assert not hi["present_student"][0, 3] and not hi["present_teacher"][0, 3]
    np.testing.assert_array_equal(hi["moments"]["mean"]["graph_student"][0, 3], 0.0)
    counts = [np.bincount(im[im != 255], minlength=N) for im in labels]
    np.testing.assert_array_equal(result["label_pixels"], counts)
    if term.min_mass:  # the 4-pixel class is below 1 tap pixel at 1/8 of the input
        assert not hi["present_student"][1, 4]


def test_a_missing_tap_names_the_available_ones():
    rng = np.random.default_rng(1)
    s_taps, t_taps = _taps(rng, 1)
    term = terms.IntraKD(weight=1.0, taps=(("nope", "t_hi", 1.0),))
    with pytest.raises(KeyError, match="s_hi"):
        explain.explain_batch(s_taps, t_taps, _labels(rng, (2, 32, 48))[:1], N, term)


@pytest.mark.parametrize("num_classes", [5, 20], ids=["all_nodes", "present_nodes_only"])
def test_render_draws_an_rgb_figure(num_classes):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=(1, 32, 48)).astype(np.int32)
    s_taps, t_taps = _taps(rng, 1)
    term = terms.IntraKD(weight=10.0, taps=(("s_hi", "t_hi", 1.0),))
    result = explain.explain_batch(s_taps, t_taps, labels, num_classes, term)
    image = rng.integers(0, 255, size=(32, 48, 3)).astype(np.uint8)
    names = [f"class{k}" for k in range(num_classes)]
    figure = explain.render(result, 0, image, labels[0], names, ["a title"])
    assert figure.dtype == np.uint8 and figure.ndim == 3 and figure.shape[2] == 3
    assert figure.shape[0] > 600 and figure.shape[1] > 600


# ----------------------------------------------------------------------------------------------
# The mode, end to end on the ApolloScape smoke twin


def _save_random_checkpoint(model, meta, hw, stage_dir):
    tx = optim.make_optimizer(
        jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, *hw, 3))))["params"],
        0.01,
        10,
    )
    state = steps.run_once(
        lambda k: steps.create_train_state(model, tx, k, hw),
        jax.random.key(1),
        out_shardings=parallel.replicated(parallel.make_data_mesh(1)),
    )
    ckpts = checkpointing.StageCheckpoints(str(stage_dir))
    ckpts.save(0, state, meta, force=True)
    ckpts.wait()
    ckpts.close()


def _config(root, **overrides):
    config = importlib.import_module("configs.apolloscape").get_config("smoke")
    config.data.data_dir = str(root / "data")
    config.update_from_flattened_dict({"mode": "explain", **overrides})
    return config


@pytest.fixture(scope="module")
def explain_run(tmp_path_factory):
    """A workdir with random teacher and student checkpoints, and mode=explain's result."""
    root = tmp_path_factory.mktemp("explain")
    config = _config(root)
    dataset = building.prepared_dataset(config.data)
    n, hw = dataset.info.num_classes, tuple(config.data.image_hw)
    teacher = building.build_teacher(config, n, np.float32)
    teacher_meta = {
        "stage": "teacher",
        "model": config.teacher.model,
        "model_kwargs": building.jsonish(building.model_kwargs(config.teacher)),
    }
    _save_random_checkpoint(teacher, teacher_meta, hw, root / "work" / "teacher")
    student = building.build_model(
        config.student.model, building.model_kwargs(config.student), n, np.float32, False
    )
    student_meta = {
        "stage": "distill",
        "model": config.student.model,
        "model_kwargs": building.jsonish(building.model_kwargs(config.student)),
    }
    _save_random_checkpoint(student, student_meta, hw, root / "work" / "distill")
    config.checkpoint = str(root / "work" / "distill")
    payload = train.train_and_evaluate(config, str(root / "work"))
    return root, config, payload


def test_explain_mode_writes_figures_and_numbers(explain_run):
    root, config, payload = explain_run
    out = root / "work" / "explain"
    assert len(payload["images"]) == config.explain.num_images == 2
    for i, image in enumerate(payload["images"]):
        png = out / f"image_{i:02d}.png"
        assert image["figure"] == str(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 20_000 < png.stat().st_size < 2_000_000
        with Image.open(png) as figure:
            figure.verify()
        with Image.open(png) as figure:
            assert figure.mode == "RGB" and figure.width > 600 and figure.height > 600
        (pair,) = image["pairs"]
        assert (pair["student_tap"], pair["teacher_tap"]) == ("encoder", "psp")
        assert list(pair["moments"]) == list(explain.MOMENTS)
        # The JSON's graphs give the JSON's losses (graphs rounded to 5 decimals).
        for mom in pair["moments"].values():
            g_s, g_t = np.asarray(mom["graph_student"]), np.asarray(mom["graph_teacher"])
            assert g_s.shape == g_t.shape == (37, 37)
            np.testing.assert_allclose(mom["mse"], np.mean((g_s - g_t) ** 2), atol=1e-5)
        total = sum(m["loss"] for m in pair["moments"].values())
        np.testing.assert_allclose(pair["loss"], total, rtol=1e-9)
        np.testing.assert_allclose(image["intra_kd"], pair["loss"], rtol=1e-9)
        np.testing.assert_allclose(image["weighted"], 10.0 * image["intra_kd"], rtol=1e-9)
        assert any(pair["present_student"]) and not all(pair["present_student"])
    written = json.loads((out / "explain.json").read_text())
    assert written["intra_kd"]["taps"] == [["encoder", "psp", 1.0]]
    assert written["student"]["model"] == "erfnet" and written["teacher"]["model"] == "pspnet"
    assert [im["key"] for im in written["images"]] == [im["key"] for im in payload["images"]]
    np.testing.assert_allclose(written["mean_intra_kd"], payload["mean_intra_kd"])


def test_explain_mode_explains_the_first_images_with_the_stage_teacher(explain_run):
    # The same loss from the checkpoints, the dataset and the loss function, computed here.
    root, config, payload = explain_run
    dataset = building.prepared_dataset(config.data)
    info = dataset.info
    mesh = parallel.make_data_mesh(1)
    student, s_vars, _, _ = building.load_eval_checkpoint(config, config.checkpoint, info, mesh)
    teacher = building.build_teacher(config, info.num_classes, np.float32)
    teacher_dir = str(root / "work" / "teacher")
    t_vars = building.load_teacher(config, teacher_dir, teacher, info.image_hw, mesh)
    batch = next(iter(dataset.eval_batches(config.eval.split or config.data.eval_split, 2)))
    _, s_taps = jax.jit(lambda v, x: student.apply(v, x, train=False))(s_vars, batch["image"])
    _, t_taps = jax.jit(lambda v, x: teacher.apply(v, x, train=False))(t_vars, batch["image"])
    labels = jnp.asarray(batch["label"])
    assert [im["index"] for im in payload["images"]] == [0, 1]
    aoi = ikd.aoi_maps(labels, info.num_classes, s_taps["encoder"].shape[1:3])
    masses = [im["pairs"][0]["mass_student"] for im in payload["images"]]
    np.testing.assert_allclose(masses, aoi.sum(axis=(1, 2)), rtol=1e-5)
    # Only the mean graph: the variance and skewness of a random teacher's near-constant
    # channels are ratios of rounding noise, in which two compiled forward passes may differ.
    expected = ikd.intra_kd_loss(
        s_taps["encoder"], t_taps["psp"], labels, info.num_classes, moment_weights=(1, 0, 0)
    )
    got = np.mean([im["pairs"][0]["moments"]["mean"]["loss"] for im in payload["images"]])
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_missing_teacher_is_a_clear_error(explain_run, tmp_path):
    root, config, _ = explain_run
    config = _config(root, checkpoint=config.checkpoint)
    with pytest.raises(checkpointing.CheckpointError, match=r"mode=explain.*teacher"):
        train.train_and_evaluate(config, str(tmp_path / "no_teacher"))
    config.teacher.checkpoint = str(tmp_path / "nowhere")
    with pytest.raises(checkpointing.CheckpointError, match="nowhere"):
        train.train_and_evaluate(config, str(tmp_path / "no_teacher"))


def test_missing_student_checkpoint_says_what_to_pass(tmp_path):
    config = _config(tmp_path)
    with pytest.raises(train.ConfigError, match="config.checkpoint"):
        train.train_and_evaluate(config, str(tmp_path / "work"))
