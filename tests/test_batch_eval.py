"""Pieces of the batch evaluation job: names, upsampling, existence, TTA geometry, protocols.

The end-to-end job over real checkpoints runs in tests/test_train.py (it reuses the smoke
pipeline's checkpoints); here each protocol gets hand-built inputs whose official result is
known without running the code under test.
"""

import zipfile

import cv2
import numpy as np
import pytest
from PIL import Image

from intrakd_jax import batch_eval
from intrakd_jax.evaluation import apolloscape, protocols, tta


def _ctx(tmp_path, **kw):
    base = dict(
        split="valid",
        out_dir=str(tmp_path / "out"),
        data_dir=str(tmp_path / "data"),
        class_names=("background", "a", "b"),
        source_hw=(10, 8),
        crop_top=4,
        network_hw=(3, 4),
        workers=1,
    )
    base.update(kw)
    return protocols.ProtocolContext(**base)


def test_run_names_skip_manager_and_step_folders():
    assert batch_eval.run_name("/x/runs/demo/distill", 500) == "distill_step500"
    assert batch_eval.run_name("/x/runs/demo/distill/best/500", 500) == "distill_step500"
    assert batch_eval.run_name("/x/my run/checkpoints", 7) == "my_run_step7"


def test_checkpoint_list_is_comma_separated_and_required():
    assert batch_eval.checkpoint_paths(" a/b , c ,") == ["a/b", "c"]
    with pytest.raises(ValueError, match="config.checkpoint"):
        batch_eval.checkpoint_paths(None)


def test_full_resolution_probabilities_paste_below_the_crop(tmp_path):
    proto = protocols.SegmentationOnlyProtocol(_ctx(tmp_path))
    probs = np.broadcast_to(np.float32([0.2, 0.5, 0.3]), (3, 4, 3))
    full = proto.full_probs(probs)
    assert full.shape == (10, 8, 3)
    np.testing.assert_array_equal(full[:4], np.broadcast_to([1.0, 0.0, 0.0], (4, 8, 3)))
    np.testing.assert_allclose(full[4:], np.broadcast_to([0.2, 0.5, 0.3], (6, 8, 3)), atol=1e-6)


def test_lane_exists_when_enough_pixels_predict_the_slot(tmp_path):
    proto = protocols.SegmentationOnlyProtocol(_ctx(tmp_path, exist_min_fraction=0.1))
    pred = np.zeros((10, 10), int)
    pred[0, :] = 1  # 10 pixels = 10 %: exists
    pred[1, :9] = 2  # 9 pixels: does not
    probs = np.eye(3, dtype=np.float32)[pred]
    np.testing.assert_array_equal(proto.lane_exists(probs), [True, False])


def test_tta_geometry_at_the_official_training_width_is_the_official_one():
    scales, crop = protocols.scaled_tta_geometry((496, 1488), 1440)
    assert scales == list(tta.OFFICIAL_SCALES_HW)
    assert crop == (480, 1440)
    # At a fifth of the width every crop still covers half of every scale (four corners tile).
    scales, crop = protocols.scaled_tta_geometry((99, 297), 1440)
    for h, w in scales:
        assert h / 2 <= crop[0] <= h and w / 2 <= crop[1] <= w


def _palette_png(path, ids_hw):
    img = Image.fromarray(ids_hw.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0] * 256)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def test_apolloscape_submission_and_official_fp_rule(tmp_path):
    names = tuple(f"c{i}" for i in range(37))
    ctx = _ctx(tmp_path, class_names=names, source_hw=(12, 9), crop_top=6, network_hw=(3, 3))
    proto = protocols.ApolloscapeProtocol(ctx)
    image = str(tmp_path / "ColorImage_road02/ColorImage/Record001/Camera 5/t_Camera_5.jpg")
    label = tmp_path / "Labels_road02/Label/Record001/Camera 5/t_Camera_5_bin.png"
    # Predict train id 1 (id 200, s_w_d) everywhere below the crop.
    probs = np.zeros((3, 3, 37), np.float32)
    probs[..., 1] = 1.0
    # Ground truth: void above the crop, 200 below, except two pixels of the ignored id 255.
    gt = np.zeros((12, 9), np.uint8)
    gt[6:] = 200
    gt[11, :2] = 255
    _palette_png(label, gt)
    proto.add("t_Camera_5", image, str(label), probs)
    metrics, tables = proto.finish()
    written = cv2.imread(str(tmp_path / "out/predictions/road02/t_Camera_5.png"), -1)
    expected = np.zeros((12, 9), np.uint8)
    expected[6:] = 200
    np.testing.assert_array_equal(written, expected)
    iou = metrics["official"]["iou"]
    # Predictions of 200 on ignored ground truth are not false positives: both IoUs are 1.
    assert iou["s_w_d"] == 1.0 and iou["void"] == 1.0
    assert metrics["official"]["miou"] == 1.0
    assert "Score Average" in next(iter(tables.values()))


def test_apolloscape_unlabelled_split_goes_into_the_submission_zip(tmp_path):
    names = tuple(f"c{i}" for i in range(37))
    ctx = _ctx(tmp_path, class_names=names, source_hw=(12, 9), crop_top=6, network_hw=(3, 3))
    proto = protocols.ApolloscapeProtocol(ctx)
    probs = np.zeros((3, 3, 37), np.float32)
    probs[..., 36] = 1.0  # noise/ignored merged class -> id 249
    proto.add("x", str(tmp_path / "ColorImage_road05/x_Camera_6.jpg"), None, probs)
    metrics, _ = proto.finish()
    with zipfile.ZipFile(metrics["submission_zip"]) as z:
        assert z.namelist() == ["test/road05/x_Camera_6.png"]
        data = np.frombuffer(z.read("test/road05/x_Camera_6.png"), np.uint8)
    ids = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    assert ids.shape == (12, 9)
    assert (ids[:6] == 0).all() and (ids[6:] == apolloscape.trainid_to_id(np.array(36))).all()


def test_culane_protocol_writes_lines_and_scores_a_matching_lane(tmp_path):
    ctx = _ctx(
        tmp_path,
        split="test",
        class_names=("background", "l1", "l0", "r0", "r1"),
        source_hw=(590, 1640),
        crop_top=240,
        network_hw=(35, 82),
    )
    rel = "driver_37_30frame/a.MP4/00000"
    gt = tmp_path / "data" / (rel + ".lines.txt")
    gt.parent.mkdir(parents=True)
    # A vertical ground-truth lane at x = 820 from the bottom up to y = 250.
    gt.write_text(" ".join(f"820 {y}" for y in range(590, 249, -10)) + "\n")
    # Slot l0 (class 2): a triangular profile peaking at map column 40, so the official 9x9
    # score averaging keeps its maximum there and prob2lines puts the lane at
    # x = round(41 * 1640 / 82) - 1 = 819, one pixel from the ground truth.
    profile = np.clip(1.0 - np.abs(np.arange(82) - 40) / 5.0, 0.0, 1.0).astype(np.float32)
    probs = np.zeros((35, 82, 5), np.float32)
    probs[..., 2] = profile
    probs[..., 0] = 1.0 - profile
    proto = protocols.CulaneProtocol(ctx)
    proto.add(rel, str(tmp_path / "data" / (rel + ".jpg")), None, probs)
    metrics, tables = proto.finish()
    lines = (tmp_path / "out" / "lines" / (rel + ".lines.txt")).read_text().split()
    xs = {int(v) for v in lines[0::2]}
    assert xs == {819}
    result = metrics["culane_f1"]
    assert (result["tp"], result["fp"], result["fn"]) == (1, 0, 0)
    assert "official CULane F1" in tables


# ----------------------------------------------------------------------------------------------
# The whole job on the CULane and ApolloScape smoke twins, with an untrained (random) student
# checkpoint: this checks the plumbing (files, formats, sizes), not the scores.


def _random_checkpoint(config, stage_dir):
    import jax

    from intrakd_jax import building, checkpointing, optim, parallel, steps

    num_classes = len(config.data.class_weights)
    model = building.build_model(
        config.student.model,
        building.model_kwargs(config.student),
        num_classes,
        np.float32,
        False,
    )
    hw = tuple(config.data.image_hw)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, *hw, 3))))
    tx = optim.make_optimizer(params["params"], 0.01, 10)
    state = steps.run_once(
        lambda k: steps.create_train_state(model, tx, k, hw),
        jax.random.key(0),
        out_shardings=parallel.replicated(parallel.make_data_mesh(1)),
    )
    meta = {
        "stage": "student",
        "model": config.student.model,
        "model_kwargs": building.jsonish(building.model_kwargs(config.student)),
    }
    ckpts = checkpointing.StageCheckpoints(str(stage_dir))
    ckpts.save(0, state, meta, force=True)
    ckpts.wait()
    ckpts.close()


def _smoke(name, tmp_path, **overrides):
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config("smoke")
    config.data.data_dir = str(tmp_path / "data")
    config.update_from_flattened_dict({"mode": "evaluate", **overrides})
    _random_checkpoint(config, tmp_path / "run" / "student")
    config.checkpoint = str(tmp_path / "run" / "student")
    return config


def test_job_on_culane_test_split_writes_lines_and_the_category_table(tmp_path):
    from intrakd_jax import train

    config = _smoke("culane", tmp_path, **{"eval.split": "test", "eval.num_overlays": 2})
    out = train.train_and_evaluate(config, str(tmp_path / "work"))
    job = tmp_path / "work" / "evaluate" / "student_step0" / "test"
    n_test = int(config.data.synthetic.num_test)
    # One .lines.txt per test image, laid out like the dataset (driver/clip/frame).
    assert len(list((job / "lines").rglob("*.lines.txt"))) == n_test
    assert out["student_step0"]["num_images"] == n_test
    assert len(list((job / "overlays").glob("*.png"))) == 2
    report_md = (job / "report.md").read_text()
    assert "official CULane F1 per category" in report_md and "| cross |" in report_md


def test_job_on_apolloscape_test_split_with_tta_writes_the_submission(tmp_path):
    from intrakd_jax import train

    config = _smoke("apolloscape", tmp_path, **{"eval.split": "test", "eval.tta": "official"})
    train.train_and_evaluate(config, str(tmp_path / "work"))
    job = tmp_path / "work" / "evaluate" / "student_step0" / "test"
    pngs = sorted((job / "predictions").rglob("*.png"))
    assert len(pngs) == config.data.synthetic.num_test
    frame = cv2.imread(str(next(iter((tmp_path / "data").rglob("*.jpg")))))
    ids = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert ids.shape == frame.shape[:2] and ids.dtype == np.uint8
    assert set(np.unique(ids)) <= set(apolloscape.trainid_to_id(np.arange(37)).tolist())
    with zipfile.ZipFile(job / "submission.zip") as z:
        names = z.namelist()
    assert len(names) == len(pngs) and all(n.startswith("test/road05/") for n in names)
