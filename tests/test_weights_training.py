"""Imported checkpoints in the training stages, the evaluation job and the converter.

On the ApolloScape ':smoke' config (37 classes, the released class count): fine-tuning from a
tiny checkpoint, evaluating and distilling from a file with the released ERFNet's names and
shapes (random weights), and the orbax conversion giving the same evaluation.
"""

import logging

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import weights_reference as ref  # noqa: E402

from configs import apolloscape as apolloscape_config  # noqa: E402
from configs import default as default_config  # noqa: E402
from intrakd_jax import batch_eval, building, checkpointing, stage, train, weights  # noqa: E402
from intrakd_jax.evaluation import protocols  # noqa: E402
from intrakd_jax.weights import convert  # noqa: E402


def smoke_config(data_dir, **overrides):
    c = apolloscape_config.get_config("smoke")
    c.data.data_dir = str(data_dir)
    c.update_from_flattened_dict(overrides)
    return c


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("apolloscape_smoke")
    return data_dir, building.prepared_dataset(smoke_config(data_dir).data)


@pytest.fixture(scope="module")
def released_erfnet(tmp_path_factory):
    """A file laid out like erfnet_trained.pth.tar (random weights, measured BN statistics)."""
    _, state = ref.built(
        ref.ERFNet(37), "intrakd_erfnet_apolloscape37", ref.bgr_images((4, 3, 32, 96), seed=7)
    )
    path = tmp_path_factory.mktemp("released") / "erfnet_trained.pth.tar"
    return ref.save_like_release(state, path, epoch=12, arch="ERFNet", best_mIoU=np.float64(0.4348))


def tiny_erfnet_checkpoint(path, num_classes: int) -> dict:
    """The smoke student's layout with another class count, as a released-style file."""
    module = ref.ERFNet(num_classes, channels=(4, 8, 16), blocks=1, repeats=1)
    names = [(k, tuple(v.shape)) for k, v in module.state_dict().items() if "num_batches" not in k]
    state = ref.random_state_dict(names, seed=3)
    ref.save_like_release(state, path, legacy=False)
    return state


def fresh_start(config, workdir, data):
    s = stage.set_up(config, str(workdir), "student", data)
    state, ckpts = stage.resume(s)
    ckpts.close()
    return jax.device_get(state)


def test_fine_tuning_starts_from_the_imported_arrays(tmp_path, dataset, caplog):
    data_dir, data = dataset
    state = tiny_erfnet_checkpoint(tmp_path / "tiny.pth", num_classes=5)  # the smoke data has 37
    cfg = smoke_config(data_dir, mode="student")
    cfg.student.init_from = ("intrakd_erfnet", str(tmp_path / "tiny.pth"))
    with pytest.raises(weights.WeightsError, match="needs reverse_input_channels=True"):
        fresh_start(cfg, tmp_path / "no_flip", data)  # BGR weights, RGB pipeline, no flip
    cfg.student.model_kwargs.erfnet.reverse_input_channels = True
    caplog.set_level(logging.INFO)
    imported = fresh_start(cfg, tmp_path / "work", data)
    cfg_scratch = smoke_config(data_dir, mode="student")
    cfg_scratch.student.model_kwargs.erfnet.reverse_input_channels = True
    scratch = fresh_start(cfg_scratch, tmp_path / "scratch", data)

    conv = imported.params["encoder"]["initial_block"]["conv"]["kernel"]
    want = state["encoder.initial_block.conv.weight"].numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(conv, want)
    np.testing.assert_array_equal(
        imported.batch_stats["encoder"]["layers_0"]["bn"]["mean"],
        state["encoder.layers.0.bn.running_mean"].numpy(),
    )
    # The 5-class output layer does not fit 37 classes: it keeps the stage's initialisation.
    head, head0 = (
        imported.params["decoder"]["output_conv"],
        scratch.params["decoder"]["output_conv"],
    )
    jax.tree.map(np.testing.assert_array_equal, head, head0)
    assert not np.array_equal(conv, scratch.params["encoder"]["initial_block"]["conv"]["kernel"])
    log = "\n".join(r.getMessage() for r in caplog.records)
    # encoder.output_conv (2) is unused, decoder.output_conv (2) kept: the rest is imported.
    assert f"imported {len(state) - 4} of {len(state) - 2} model arrays from" in log
    assert "2 arrays keep their initialisation: params/decoder/output_conv/" in log

    results = stage.train_stage(cfg, str(tmp_path / "work"), "student", data)
    assert 0.0 <= results["miou"] <= 1.0


def test_init_from_must_be_an_arch_and_a_path(tmp_path, dataset):
    data_dir, data = dataset
    cfg = smoke_config(data_dir, mode="teacher")
    cfg.teacher.init_from = ("torchvision_resnet18",)
    s = stage.set_up(cfg, str(tmp_path), "teacher", data)
    with pytest.raises(
        train.ConfigError, match=r"config\.teacher\.init_from=.*expected \(arch, path\)"
    ):
        stage.resume(s)


def test_evaluate_a_released_file_and_its_conversion(tmp_path, dataset, released_erfnet, capsys):
    data_dir, _ = dataset
    cfg = smoke_config(data_dir, mode="evaluate", eval_batch_size=4)
    cfg.checkpoint = released_erfnet
    with pytest.raises(train.ConfigError, match=r"set config\.checkpoint_arch to its arch"):
        train.train_and_evaluate(cfg, str(tmp_path / "eval"))
    cfg.checkpoint_arch = "intrakd_erfnet"
    cfg.eval.tta = "official"  # the released test protocol: 4 scales x 4 corner crops
    cfg.eval.num_overlays = 1
    from_file = train.train_and_evaluate(cfg, str(tmp_path / "eval"))
    assert list(from_file) == ["erfnet_trained_step12"]
    metrics = from_file["erfnet_trained_step12"]
    assert metrics["model"] == "intrakd_erfnet" and metrics["tta"] == "official"
    assert 0.0 <= metrics["official"]["miou"] <= 1.0

    out = tmp_path / "converted"
    argv = ["--checkpoint", released_erfnet, "--arch", "intrakd_erfnet", "--output", str(out)]
    assert convert.main(argv) == 0
    _, step, meta = checkpointing.read_meta(str(out))
    assert (step, meta["model"], meta["num_classes"]) == (12, "erfnet", 37)
    assert meta["model_kwargs"]["reverse_input_channels"] is True
    assert meta["source_meta"] == {"epoch": 12, "arch": "ERFNet", "best_mIoU": 0.4348}
    cfg.checkpoint, cfg.checkpoint_arch = str(out), None
    converted = train.train_and_evaluate(cfg, str(tmp_path / "eval_converted"))
    again = converted["converted_step12"]
    np.testing.assert_allclose(again["miou"], metrics["miou"], rtol=1e-6)
    np.testing.assert_allclose(again["official"]["miou"], metrics["official"]["miou"], rtol=1e-6)

    assert convert.main(argv) == 1  # the output exists
    assert "already holds checkpoints" in capsys.readouterr().err
    wrong = ["--checkpoint", released_erfnet, "--arch", "intrakd_pspnet", "--output", str(tmp_path)]
    assert convert.main(wrong) == 1
    assert f"error: {released_erfnet} does not fit arch 'intrakd_pspnet'" in capsys.readouterr().err


def test_distill_from_a_released_teacher_file(tmp_path, dataset, released_erfnet):
    data_dir, data = dataset
    cfg = smoke_config(data_dir, mode="distill")
    cfg.teacher.checkpoint = released_erfnet
    with pytest.raises(train.ConfigError, match=r"config\.teacher\.checkpoint_arch"):
        stage.set_up(cfg, str(tmp_path), "distill", data)
    cfg.teacher.checkpoint_arch = "intrakd_erfnet"
    s = stage.set_up(cfg, str(tmp_path), "distill", data)
    assert s.teacher == weights.arch_model(
        "intrakd_erfnet", 37
    )  # the file's arch, not the config's
    kernel = s.teacher_vars["params"]["decoder"]["output_conv"]["kernel"]
    want = weights.read_checkpoint(released_erfnet).arrays["decoder.output_conv.weight"]
    np.testing.assert_array_equal(kernel, want.transpose(2, 3, 1, 0))
    results = train.train_and_evaluate(cfg, str(tmp_path))
    assert 0.0 <= results["miou"] <= 1.0
    assert not (tmp_path / "teacher").exists()  # no teacher stage was needed


def test_a_converted_released_teacher_fits_the_apolloscape_config():
    """configs/apolloscape.py's real-data teacher is the released PSPNet (distill accepts it)."""
    released = weights.get_arch("intrakd_pspnet")
    meta = {"model": released.model, "model_kwargs": building.jsonish(dict(released.model_kwargs))}
    building.check_checkpoint_model(meta, apolloscape_config.get_config().teacher, "released", "")
    with pytest.raises(checkpointing.CheckpointError, match="released holds pspnet"):
        building.check_checkpoint_model(
            meta, default_config.get_base_config().teacher, "released", ""
        )


def test_checkpoints_written_before_the_pyramid_options_still_fit(tmp_path):
    """A teacher saved before scale_series/align_corners existed was built with the defaults."""
    cfg = default_config.get_base_config()
    old = {
        k: v
        for k, v in building.model_kwargs(cfg.teacher).items()
        if k not in ("scale_series", "align_corners")
    }
    meta = {"model": "pspnet", "model_kwargs": building.jsonish(old)}
    building.check_checkpoint_model(meta, cfg.teacher, "old teacher", "fix")
    cfg.teacher.model_kwargs.align_corners = True
    with pytest.raises(checkpointing.CheckpointError, match="old teacher holds pspnet"):
        building.check_checkpoint_model(meta, cfg.teacher, "old teacher", "fix")


def test_official_test_protocol_geometry_of_the_released_models():
    """PSPNet: the released script's 470 x 1410 crops (any input size); ERFNet: 480 x 1440."""
    pspnet = weights.arch_model("intrakd_pspnet", 37)
    erfnet = weights.arch_model("intrakd_erfnet", 37)
    assert batch_eval.official_tta_geometry(pspnet) == (1410, 1)
    assert batch_eval.official_tta_geometry(erfnet) == (1440, 8)
    for model, crop in ((pspnet, (470, 1410)), (erfnet, (480, 1440))):
        size, multiple = batch_eval.official_tta_geometry(model)
        scales, got = protocols.scaled_tta_geometry((496, 1488), size, multiple)
        assert got == crop and scales[0] == (505, 1692)
