"""mode=export and intrakd_jax.deploy: every artifact computes the Flax model's probabilities.

A tiny ERFNet (random weights, BatchNorm statistics moved away from 0/1) is exported once to
jax.export, SavedModel and TFLite; each artifact runs at batch sizes 1 and 3 against the Flax
model evaluated here with XLA's own convolutions (the export uses the CPU formulation, so the two
sides compute differently) and the normalisation and softmax written out in numpy.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import llamas as llamas_config
from intrakd_jax import building, checkpointing, deploy, export, models, train
from intrakd_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
HW = (16, 48)
MEAN = (120.0, 110.0, 100.0)
STD = (50.0, 60.0, 70.0)
CLASSES = ("background", "l1", "l0", "r0", "r1")
KWARGS = {"channels": (4, 8, 16), "num_stage1_blocks": 1, "num_stage2_repeats": 1}
TOLERANCE = 1e-4


def _model_and_variables(seed: int = 0, hw=HW):
    model = models.get_model("erfnet", num_classes=len(CLASSES), **KWARGS)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, *hw, 3)), train=False)
    rng = np.random.default_rng(seed + 1)

    def moved(path, a):
        # Running statistics as after training, so an artifact that skipped them would differ.
        if path[-1].key == "mean":
            return jnp.asarray(rng.normal(0.0, 0.5, a.shape), a.dtype)
        return jnp.asarray(rng.uniform(0.5, 2.0, a.shape), a.dtype)

    stats = jax.tree_util.tree_map_with_path(moved, variables["batch_stats"])
    return model, {"params": variables["params"], "batch_stats": stats}


def _reference(model, variables, images, mean=MEAN, std=STD):
    """Softmax probabilities of the Flax model on RGB 0..255 images, computed independently."""
    plain = model.clone(conv_impl="xla")
    x = (np.asarray(images, np.float64) - np.asarray(mean)) / np.asarray(std)
    logits, _ = plain.apply(variables, jnp.asarray(x, jnp.float32), train=False)
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _images(batch: int, seed: int = 0, hw=HW) -> np.ndarray:
    return np.random.default_rng(100 + seed).uniform(0, 255, (batch, *hw, 3)).astype(np.float32)


def _metadata(checkpoint):
    """The tiny model's metadata: LLAMAS classes, a 16x48 input cropped from 40x96 frames."""
    return export.make_metadata(
        model_name="erfnet",
        class_names=CLASSES,
        image_hw=HW,
        mean_rgb=MEAN,
        std_rgb=STD,
        crop_top=7,
        source_hw=(40, 96),
        dataset="llamas",
        model_kwargs=KWARGS,
        checkpoint=checkpoint,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    model, variables = _model_and_variables()
    meta = _metadata(checkpoint={"path": "/nowhere/student", "step": 12})
    summary = export.export_model(model, variables, meta, str(out))
    return out, model, variables, summary


def test_export_writes_every_format_and_checks_it(exported):
    out, _, _, summary = exported
    assert summary["failed"] == {}
    assert set(summary["paths"]) == set(export.FORMATS)
    for fmt in export.FORMATS:
        assert os.path.exists(summary["paths"][fmt])
        assert summary["max_abs_diff"][fmt] <= TOLERANCE
    assert json.loads((out / deploy.SUMMARY_FILE).read_text())["paths"] == summary["paths"]


def _run_jax(out, images):
    return deploy.load(str(out))(images)


def _run_savedmodel(out, images):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(out / deploy.SAVEDMODEL_DIR))
    result = loaded.signatures["serving_default"](images=tf.constant(images))
    return result["probabilities"].numpy()


def _run_tflite(out, images):
    return export.run_tflite(str(out / deploy.TFLITE_FILE), images)


@pytest.mark.parametrize(
    "fmt, runner",
    [("jax", _run_jax), ("savedmodel", _run_savedmodel), ("tflite", _run_tflite)],
)
def test_artifact_equals_the_flax_model_at_batch_1_and_3(exported, fmt, runner):
    out, model, variables, _ = exported
    for batch in (1, 3):
        images = _images(batch, seed=batch)
        got = np.asarray(runner(out, images))
        want = _reference(model, variables, images)
        assert got.shape == (batch, *HW, len(CLASSES)) and got.dtype == np.float32
        assert np.max(np.abs(got - want)) <= TOLERANCE, fmt
        # Not a constant map: the classes vary over the image, so the comparison means something.
        assert len(np.unique(want.argmax(-1))) > 1


def test_metadata_states_the_input_convention_and_the_artifacts(exported):
    out, _, _, _ = exported
    meta = json.loads((out / deploy.METADATA_FILE).read_text())
    assert meta["format"] == deploy.FORMAT and meta["format_version"] == deploy.FORMAT_VERSION
    inp = meta["input"]
    assert inp["hw"] == list(HW) and inp["shape"] == [None, *HW, 3]
    assert inp["channel_order"] == "RGB" and inp["value_range"] == [0.0, 255.0]
    assert inp["mean_rgb"] == list(MEAN) and inp["std_rgb"] == list(STD)
    assert inp["crop_top"] == 7 and inp["source_hw"] == [40, 96]
    assert meta["classes"] == list(CLASSES) and meta["model"] == "erfnet"
    assert meta["checkpoint"] == {"path": "/nowhere/student", "step": 12}
    assert "cpu" in meta["artifacts"]["jax"]["platforms"]
    assert meta["artifacts"]["tflite"]["ops"] == ["TFLITE_BUILTINS"]
    predictor = deploy.load(str(out / deploy.JAX_FILE))
    assert predictor.input_hw == HW and predictor.class_names == CLASSES
    assert predictor.metadata["input"]["mean_rgb"] == list(MEAN)
    # The SavedModel carries the metadata too: as an asset and as a function.
    import tensorflow as tf

    asset = out / deploy.SAVEDMODEL_DIR / "assets" / deploy.METADATA_FILE
    assert json.loads(asset.read_text())["classes"] == list(CLASSES)
    loaded = tf.saved_model.load(str(out / deploy.SAVEDMODEL_DIR))
    assert json.loads(loaded.metadata().numpy().decode())["input"]["hw"] == list(HW)


BLOCKER = """
import importlib.abc, sys

BLOCKED = ("flax", "tensorflow", "keras", "torch", "orbax", "ml_collections", "data_pipelines",
           "intrakd_jax.models", "intrakd_jax.export", "intrakd_jax.building")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"blocked in this test: {name}")
        return None

sys.meta_path.insert(0, Block())
for b in BLOCKED:  # fail loudly if the blocker itself does not work
    try:
        __import__(b)
    except ImportError:
        pass
    else:
        raise SystemExit(f"blocker let {b} through")
"""


def test_deploy_runs_without_flax_tensorflow_or_model_code(exported, tmp_path):
    out, model, variables, _ = exported
    # Only the two files a runtime needs, in a new folder.
    ship = tmp_path / "ship"
    ship.mkdir()
    for name in (deploy.JAX_FILE, deploy.METADATA_FILE):
        shutil.copy(out / name, ship / name)
    images = _images(3, seed=7)
    np.save(tmp_path / "images.npy", images)
    script = BLOCKER + textwrap.dedent(
        f"""
        import numpy as np
        from intrakd_jax import deploy

        predictor = deploy.load({str(ship)!r})
        probs = predictor(np.load({str(tmp_path / "images.npy")!r}))
        np.save({str(tmp_path / "probs.npy")!r}, probs)
        leaked = [m for m in sys.modules if m.split(".")[0] in ("flax", "tensorflow", "torch")]
        assert not leaked, leaked
        print("classes", ",".join(predictor.class_names))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one device, as a serving process has
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"classes {','.join(CLASSES)}" in proc.stdout
    got = np.load(tmp_path / "probs.npy")
    assert np.max(np.abs(got - _reference(model, variables, images))) <= TOLERANCE


def _copy_export(out, dest):
    dest.mkdir()
    for name in (deploy.JAX_FILE, deploy.METADATA_FILE):
        shutil.copy(out / name, dest / name)
    return dest


def _edit_metadata(folder, edit):
    path = folder / deploy.METADATA_FILE
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_truncated_artifact_is_a_clear_error(exported, tmp_path):
    folder = _copy_export(exported[0], tmp_path / "x")
    blob = (folder / deploy.JAX_FILE).read_bytes()
    (folder / deploy.JAX_FILE).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(deploy.ArtifactError, match=r"model\.jax_export: .*truncated"):
        deploy.load(str(folder))


def test_corrupt_artifact_without_a_recorded_checksum_is_a_clear_error(exported, tmp_path):
    folder = _copy_export(exported[0], tmp_path / "x")
    size = (folder / deploy.JAX_FILE).stat().st_size
    (folder / deploy.JAX_FILE).write_bytes(np.random.default_rng(0).bytes(size))

    def drop_checksum(meta):
        del meta["artifacts"]["jax"]["sha256"], meta["artifacts"]["jax"]["bytes"]

    _edit_metadata(folder, drop_checksum)
    with pytest.raises(deploy.ArtifactError, match="cannot be read as a jax.export artifact"):
        deploy.load(str(folder))


def _set(dotted, value):
    def edit(meta):
        *parents, leaf = dotted.split(".")
        node = meta
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[leaf]
        else:
            node[leaf] = value

    return edit


def _two_edits(a, b):
    return lambda meta: (a(meta), b(meta))


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set("format_version", 99), "format_version 99 is not supported"),
        (_set("input.mean_rgb", KeyError), "field 'input.mean_rgb' is missing"),
        (_set("input.channel_order", "BGR"), "expected 'RGB'"),
        (_set("classes", list(CLASSES[:4])), "'num_classes' is 5 but 'classes' lists 4"),
        (
            _two_edits(_set("classes", list(CLASSES[:4])), _set("num_classes", 4)),
            r"output is \(batch, 16, 48, 5\), but .*metadata.json lists 4 classes",
        ),
        (_set("input.hw", [16, 40]), r"input is float32\(batch, 16, 48, 3\).*16, 40, 3"),
    ],
)
def test_malformed_or_mismatched_metadata_is_a_clear_error(exported, tmp_path, edit, message):
    folder = _copy_export(exported[0], tmp_path / "x")
    _edit_metadata(folder, edit)
    with pytest.raises(deploy.ArtifactError, match=message) as e:
        deploy.load(str(folder))
    assert "metadata.json" in str(e.value) or "model.jax_export" in str(e.value)


def test_missing_or_unreadable_files_are_clear_errors(exported, tmp_path):
    expected = r"nothing: no such file; expected the jax.export artifact \(model.jax_export\)"
    with pytest.raises(deploy.ArtifactError, match=expected):
        deploy.load(str(tmp_path / "nothing"))
    folder = _copy_export(exported[0], tmp_path / "x")
    (folder / deploy.METADATA_FILE).write_text("{not json")
    with pytest.raises(deploy.ArtifactError, match="metadata.json: not valid JSON"):
        deploy.load(str(folder / deploy.JAX_FILE))
    (folder / deploy.METADATA_FILE).unlink()
    with pytest.raises(deploy.ArtifactError, match="metadata.json: no such file"):
        deploy.load(str(folder))


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((*HW, 3), np.float32), r"rank 3.*\(batch, 16, 48, 3\).*images\[None\]"),
        (np.zeros((2, *HW, 4), np.float32), r"4 channels.*\(batch, 16, 48, 3\)"),
        (np.zeros((2, 3, *HW), np.float32), r"48 channels"),
        (np.zeros((2, 32, 48, 3), np.float32), r"are 32x48.*\(batch, 16, 48, 3\)"),
        (np.zeros((0, *HW, 3), np.float32), "empty batch"),
        (np.zeros((1, *HW, 3), bool), "dtype bool"),
    ],
)
def test_wrong_input_is_a_clear_error(exported, images, message):
    predictor = deploy.load(str(exported[0]))
    with pytest.raises(deploy.InputShapeError, match=message) as e:
        predictor(images)
    assert "RGB values 0..255" in str(e.value)


def test_uint8_images_are_accepted(exported):
    out, model, variables, _ = exported
    images = np.round(_images(1)).astype(np.uint8)
    got = deploy.load(str(out))(images)
    assert np.max(np.abs(got - _reference(model, variables, images))) <= TOLERANCE


def test_unknown_format_and_missing_checkpoint_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="onnx"):
        export.parse_formats("jax,onnx")
    assert export.parse_formats(" TFLITE, jax ") == ("jax", "tflite")
    config = llamas_config.get_config("smoke")
    config.data.data_dir = str(tmp_path / "data")
    config.mode = "export"
    with pytest.raises(ConfigError, match="config.checkpoint"):
        train.train_and_evaluate(config, str(tmp_path / "work"))


def _save_checkpoint(stage_dir: Path, model, variables, dataset: str, step: int = 5):
    ckpts = checkpointing.StageCheckpoints(str(stage_dir))
    meta = {
        "stage": "student",
        "model": "erfnet",
        "model_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in KWARGS.items()},
        "num_classes": len(CLASSES),
        "dataset": dataset,
        "image_hw": [32, 64],
        "dtype": "float32",
        "step": step,
    }
    ckpts.save(step, {"params": variables["params"], "batch_stats": variables["batch_stats"]}, meta)
    ckpts.close()


def test_mode_export_end_to_end_from_a_stage_checkpoint(tmp_path):
    hw = (32, 64)  # the llamas smoke config's image_hw
    model, variables = _model_and_variables(seed=3, hw=hw)
    _save_checkpoint(tmp_path / "run" / "student", model, variables, "llamas")
    config = llamas_config.get_config("smoke")
    config.data.data_dir = str(tmp_path / "data")  # never generated: export reads no data
    config.mode = "export"
    config.checkpoint = str(tmp_path / "run" / "student")
    config.export.formats = "jax"
    summary = train.train_and_evaluate(config, str(tmp_path / "work"))
    out = tmp_path / "work" / "export"
    assert summary["paths"] == {"jax": str(out / deploy.JAX_FILE)}
    assert not (tmp_path / "data").exists()
    predictor = deploy.load(str(out))
    meta = predictor.metadata
    assert predictor.input_hw == hw and predictor.class_names == CLASSES  # LLAMAS multiclass
    assert meta["input"]["crop_top"] == config.data.crop_top
    assert meta["input"]["source_hw"] == [90, 160]  # the smoke twin's 160x90 frames
    assert meta["checkpoint"]["step"] == 5 and meta["checkpoint"]["stage"] == "student"
    assert meta["dataset"] == "llamas"
    assert meta["input"]["mean_rgb"] == list(config.data.mean_rgb)
    images = _images(2, seed=5, hw=hw)
    want = _reference(model, variables, images, config.data.mean_rgb, config.data.std_rgb)
    assert np.max(np.abs(predictor(images) - want)) <= TOLERANCE
    written = json.loads((out / deploy.SUMMARY_FILE).read_text())
    assert written["max_abs_diff"]["jax"] <= TOLERANCE


def test_checkpoint_of_another_dataset_is_refused(tmp_path):
    model, variables = _model_and_variables(seed=4, hw=(32, 64))
    _save_checkpoint(tmp_path / "run" / "student", model, variables, "culane")
    config = llamas_config.get_config("smoke")
    config.data.data_dir = str(tmp_path / "data")
    config.mode = "export"
    config.checkpoint = str(tmp_path / "run" / "student")
    with pytest.raises(checkpointing.CheckpointError, match="trained on culane"):
        train.train_and_evaluate(config, str(tmp_path / "work"))


def test_real_data_config_needs_no_data_for_the_metadata():
    from configs import culane as culane_config

    config = culane_config.get_config("")  # data_dir unset: the real CULane is not here
    dataset, source_hw, source_from = building.inference_dataset(config.data)
    info, options = dataset.info, dataset.options
    assert info.name == "culane" and info.num_classes == 5 and info.image_hw == (208, 976)
    assert options.crop_top == 240 and source_hw == (590, 1640)
    assert "official" in source_from


def test_tflite_with_a_fixed_batch_equals_the_flax_model(exported, tmp_path):
    _, model, variables, _ = exported
    meta = export.make_metadata(
        model_name="erfnet", class_names=CLASSES, image_hw=HW, mean_rgb=MEAN, std_rgb=STD
    )
    summary = export.export_model(model, variables, meta, str(tmp_path), "tflite", tflite_batch=2)
    assert summary["failed"] == {} and summary["artifacts"]["tflite"]["fixed_batch"] == 2
    assert summary["artifacts"]["tflite"]["input_shape_signature"] == [2, *HW, 3]
    images = _images(2, seed=11)
    got = export.run_tflite(summary["paths"]["tflite"], images)
    assert np.max(np.abs(got - _reference(model, variables, images))) <= TOLERANCE
    with pytest.raises(ConfigError, match="tflite_batch"):
        export.export_model(model, variables, meta, str(tmp_path), "tflite", tflite_batch=0)


def test_predictor_compiler_options_do_not_change_the_result(exported):
    out, model, variables, _ = exported
    images = _images(2, seed=13)
    want = _reference(model, variables, images)
    tuned = deploy.load(str(out))
    assert tuned.compiler_options == deploy.CPU_COMPILER_OPTIONS  # CPU: no YNNPACK fusions
    plain = deploy.load(str(out), compiler_options={})
    # An option this jaxlib does not know: the predictor falls back to XLA's defaults.
    unknown = deploy.load(str(out), compiler_options={"xla_cpu_no_such_option_here": "1"})
    for predictor in (tuned, plain, unknown):
        assert np.max(np.abs(predictor(images) - want)) <= TOLERANCE
    assert unknown.compiler_options == {}


def test_multi_platform_lowering_falls_back_to_this_platform(monkeypatch):
    real = jax.export.export

    def only_one_platform(fun, *, platforms=None, **kwargs):
        if platforms and len(platforms) > 1:
            raise NotImplementedError("no tpu lowering for this op")
        return real(fun, platforms=platforms, **kwargs)

    monkeypatch.setattr(jax.export, "export", only_one_platform)
    exported, error = export.lower_jax(lambda x: x * 2.0, (8, 8))
    assert exported.platforms == ("cpu",) and "no tpu lowering for this op" in error
    assert exported.in_avals[0].shape[1:] == (8, 8, 3)


def test_export_leaves_absl_info_logging_on(tmp_path, caplog):
    # TensorFlow's SavedModel writer pins absl's logger at WARNING; after an export in a notebook
    # or job, training progress (logging.info) must still be shown.
    from absl import logging as absl_logging

    absl_logger = absl_logging.get_absl_logger()
    before = absl_logger.level
    absl_logger.setLevel(0)  # NOTSET, as in a fresh process
    try:
        model, variables = _model_and_variables()
        meta = _metadata(checkpoint=None)
        summary = export.export_model(model, variables, meta, str(tmp_path), "savedmodel,tflite")
        assert summary["failed"] == {}
        assert absl_logger.level == 0
        caplog.set_level("INFO")
        absl_logging.info("still shown")
        assert "still shown" in [r.getMessage() for r in caplog.records]
    finally:
        absl_logger.setLevel(before)
