"""mode=predict: own images and video, the batch job's outputs, bad files skipped, clear errors.

A smoke student is trained once per dataset (3 steps); the batch evaluation job's official
outputs on the validation split are the reference the predictions must equal.
"""

import json
import os

import cv2
import jax
import numpy as np
import pytest

from configs import apolloscape as apolloscape_config
from configs import culane as culane_config
from configs import llamas as llamas_config
from intrakd_jax import building, predict, train
from intrakd_jax.errors import ConfigError
from intrakd_jax.evaluation import apolloscape

CONFIGS = {"culane": culane_config, "llamas": llamas_config, "apolloscape": apolloscape_config}


def _config(name, root, **overrides):
    c = CONFIGS[name].get_config("smoke")
    c.data.data_dir = str(root / "data")
    c.update_from_flattened_dict(overrides)
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset name) -> (root, student stage dir); each trained on first use."""
    runs = {}

    def get(name):
        if name not in runs:
            root = tmp_path_factory.mktemp(name)
            train.train_and_evaluate(_config(name, root, mode="student"), str(root / "work"))
            runs[name] = root, root / "work" / "student"
        return runs[name]

    return get


def _eval_image_list(cfg, root) -> tuple[list, str]:
    """The eval split's examples and a list file naming their images in the job's order."""
    dataset = building.prepared_dataset(cfg.data)
    examples = dataset.examples(cfg.data.eval_split)
    data_dir = cfg.data.data_dir
    listing = root / "eval_images.txt"
    listing.write_text("".join(os.path.relpath(ex.image_path, data_dir) + "\n" for ex in examples))
    # Relative entries resolve against the list's folder: put the list at the data root.
    target = os.path.join(data_dir, "eval_images.txt")
    os.replace(listing, target)
    return examples, target


def _lanes_everywhere(monkeypatch, shift: float) -> None:
    """Raises the output bias of a lane class: a 3-step model predicts background only."""
    load = building.load_eval_checkpoint

    def biased(config, path, info, mesh):
        model, variables, step, meta = load(config, path, info, mesh)

        def bump(path_keys, leaf):
            if path_keys[-1].key == "bias" and leaf.shape == (info.num_classes,):
                return leaf.at[1].add(shift)  # the first lane slot: probabilities above 0.5
            return leaf

        return model, jax.tree_util.tree_map_with_path(bump, variables), step, meta

    monkeypatch.setattr(building, "load_eval_checkpoint", biased)


@pytest.mark.parametrize("name", ["culane", "llamas", "apolloscape"])
def test_predict_equals_the_batch_evaluation_job(trained, name, monkeypatch):
    root, ckpt = trained(name)
    _lanes_everywhere(monkeypatch, 3.0)
    evaluated = train.train_and_evaluate(
        _config(name, root, mode="evaluate", checkpoint=str(ckpt)), str(root / "eval")
    )
    (run,) = evaluated
    job = root / "eval" / "evaluate" / run / "valid"
    cfg = _config(name, root)
    examples, listing = _eval_image_list(cfg, root)
    out = root / f"pred_{name}"
    cfg = _config(
        name,
        root,
        mode="predict",
        checkpoint=str(ckpt),
        **{"predict.input": listing, "predict.output": str(out)},
    )
    summary = train.train_and_evaluate(cfg, str(root / "unused"))
    assert summary["num_frames"] == len(examples) and summary["num_skipped"] == 0
    data_dir = cfg.data.data_dir
    lanes_found = 0
    for ex in examples:
        rel = os.path.splitext(os.path.relpath(ex.image_path, data_dir))[0]
        shape = cv2.imread(ex.image_path).shape
        assert cv2.imread(str(out / "overlays" / (rel + ".png"))).shape == shape
        if name == "culane":
            ours = (out / "lines" / (rel + ".lines.txt")).read_text()
            theirs = (job / "lines" / (rel + ".lines.txt")).read_text()
        elif name == "llamas":
            ours = (out / "lines" / (rel[: -len("_color_rect")] + ".lines.txt")).read_text()
            theirs = (job / "lanes" / (ex.key + ".lines.txt")).read_text()
        else:
            ours = cv2.imread(str(out / "ids" / (rel + ".png")), cv2.IMREAD_UNCHANGED)
            road = "road" + ex.image_path.split("ColorImage_road")[1][:2]
            name_png = apolloscape.submission_png_name(ex.image_path)
            theirs = cv2.imread(str(job / "predictions" / road / name_png), cv2.IMREAD_UNCHANGED)
            assert ours.shape == shape[:2]
            np.testing.assert_array_equal(ours, theirs)
            continue
        assert ours == theirs
        lanes_found += bool(ours.strip())
    if name != "apolloscape":
        assert lanes_found >= 1  # a real comparison, not of empty files


def test_folder_of_mixed_sizes_with_corrupt_files_is_predicted_and_reported(trained, tmp_path):
    root, ckpt = trained("culane")
    cfg = _config("culane", root)
    examples, _ = _eval_image_list(cfg, root)
    folder = tmp_path / "drive"
    (folder / "sub").mkdir(parents=True)
    frame = cv2.imread(examples[0].image_path)
    sizes = {"a.jpg": None, "sub/b.png": (300, 100), "sub/c.jpg": (82, 40)}
    for rel, size in sizes.items():
        cv2.imwrite(str(folder / rel), frame if size is None else cv2.resize(frame, size))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "sub" / "text.png").write_text("not an image")
    png = cv2.imencode(".png", frame)[1].tobytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 3])
    (folder / "notes.txt").write_text("ignored: not an image extension")
    cfg = _config(
        "culane",
        root,
        mode="predict",
        checkpoint=str(ckpt),
        eval_batch_size=4,
        **{"predict.input": str(folder), "predict.probabilities": True},
    )
    summary = train.train_and_evaluate(cfg, str(tmp_path / "work"))
    out = tmp_path / "work" / "predict"
    assert summary["num_frames"] == 3 and summary["num_skipped"] == 3
    reasons = {os.path.basename(s["file"]): s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"empty.jpg", "text.png", "truncated.png"}
    assert reasons["empty.jpg"] == "empty file"
    assert "decode" in reasons["text.png"]
    for rel, size in sizes.items():
        stem = os.path.splitext(rel)[0]
        h, w = frame.shape[:2] if size is None else size[::-1]
        assert cv2.imread(str(out / "overlays" / (stem + ".png"))).shape == (h, w, 3)
        assert (out / "lines" / (stem + ".lines.txt")).exists()
        probs = cv2.imread(str(out / "probs" / f"{stem}_1_lane1.png"), cv2.IMREAD_UNCHANGED)
        assert probs.shape == (h, w) and probs.dtype == np.uint8
    # Lanes of the resized copy land in its own frame: every x within its width.
    for line in (out / "lines" / "sub" / "c.lines.txt").read_text().splitlines():
        xy = np.array(line.split(), float).reshape(-1, 2)
        assert np.all((xy[:, 0] >= 0) & (xy[:, 0] < 82)) and np.all(xy[:, 1] < 40)
    written = json.loads((out / "predict.json").read_text())
    assert written["num_skipped"] == 3 and written["network_hw"] == [16, 80]


def test_only_process_0_of_a_multi_host_job_writes(trained, tmp_path, monkeypatch):
    # Every process predicts every frame (the batch is global); a second process writing the
    # same files to shared storage would race with process 0.
    root, ckpt = trained("culane")
    cfg = _config("culane", root)
    examples, listing = _eval_image_list(cfg, root)
    cfg = _config(
        "culane", root, mode="predict", checkpoint=str(ckpt), **{"predict.input": listing}
    )
    monkeypatch.setattr(predict.parallel, "is_lead_process", lambda: False)
    summary = train.train_and_evaluate(cfg, str(tmp_path / "work"))
    assert summary["num_frames"] == len(examples) > 0
    assert not (tmp_path / "work" / "predict").exists()


def test_video_in_annotated_video_out(trained, tmp_path):
    root, ckpt = trained("culane")
    cfg = _config("culane", root)
    examples, _ = _eval_image_list(cfg, root)
    frames = [cv2.resize(cv2.imread(ex.image_path), (160, 64)) for ex in examples[:4]]
    video = tmp_path / "drive.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 12.5, (160, 64))
    assert writer.isOpened()
    for i in range(7):
        writer.write(frames[i % len(frames)])
    writer.release()
    cfg = _config(
        "culane", root, mode="predict", checkpoint=str(ckpt), **{"predict.input": str(video)}
    )
    summary = train.train_and_evaluate(cfg, str(tmp_path / "work"))
    assert summary["num_frames"] == 7
    capture = cv2.VideoCapture(summary["video"]["overlay"])
    count = 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        assert bgr.shape == (64, 160, 3)
        count += 1
    assert count == 7
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12.5, rel=1e-3)
    lines = sorted((tmp_path / "work" / "predict" / "lines" / "drive").glob("*.lines.txt"))
    assert [p.name for p in lines] == [f"{i:06d}.lines.txt" for i in range(7)]


def test_inputs_from_glob_and_list_with_missing_entries(tmp_path):
    (tmp_path / "a" / "x").mkdir(parents=True)
    for rel in ("a/1.jpg", "a/x/2.png", "a/x/3.txt"):
        (tmp_path / rel).write_bytes(b"x")
    found = predict.collect_inputs(str(tmp_path / "a" / "**" / "*.*"))
    assert [f.name for f in found.files] == ["1", "x/2"]
    listing = tmp_path / "list.txt"
    listing.write_text("/a/1.jpg 1 0 1\n\n# a comment\na/missing.jpg\n")
    found = predict.collect_inputs(str(listing))
    assert [f.name for f in found.files] == ["a/1"]
    assert found.skipped == ({"file": f"{listing}:4", "reason": "not found: a/missing.jpg"},)
    with pytest.raises(ConfigError, match="no such file or folder"):
        predict.collect_inputs(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="no images found"):
        predict.collect_inputs(str(tmp_path / "a" / "x" / "*.txt"))
    with pytest.raises(ConfigError, match="config.predict.input"):
        predict.collect_inputs(None)


def test_crop_top_scales_with_the_frame_height():
    assert predict.frame_crop_top(590, 240, 590) == 240
    assert predict.frame_crop_top(295, 240, 590) == 120
    assert predict.frame_crop_top(10, 240, 20) == 9  # at least one row is left


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"predict.batch_size": 6}, "does not split over the 4 devices.*use 4 or 8"),
        ({"checkpoint": "a,b"}, "one checkpoint"),
        ({"checkpoint": None}, "config.checkpoint"),
    ],
)
def test_predict_config_errors_are_clear(tmp_path, overrides, message):
    (tmp_path / "img.png").write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1])
    cfg = _config("culane", tmp_path, mode="predict", checkpoint="x")
    cfg.predict.input = str(tmp_path / "img.png")
    cfg.update_from_flattened_dict(overrides)
    with pytest.raises(ConfigError, match=message):
        train.train_and_evaluate(cfg, str(tmp_path / "work"))
