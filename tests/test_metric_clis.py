"""The metric command lines on the synthetic twins, and the metrics without TensorFlow or jax.

Each ``python -m intrakd_jax.evaluation.<module>`` runs in a subprocess on data written by the
project's synthetic generators and predictions written by the project's writers. Its JSON is
compared with the library function on the same folders and with expectations computed here:
perfect predictions (AP 1 where a class is present, F1 1, mIoU 1), predictions whose answer
follows from counting label pixels or lanes, and what the official tools do with an empty
prediction folder. Errors must name the file (and line).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_pipelines.formats import apolloscape as classes
from data_pipelines.formats.lines_txt import lines_txt_path, write_lines_txt
from data_pipelines.formats.llamas import (
    BINARY_NAMES,
    MULTICLASS_NAMES,
    read_json,
    render_binary_label,
    render_multiclass_label,
)
from data_pipelines.synthetic.apolloscape import generate_apolloscape
from data_pipelines.synthetic.culane import generate_culane
from data_pipelines.synthetic.llamas import generate_llamas
from intrakd_jax.evaluation import (
    apolloscape,
    culane,
    culane_lanes,
    llamas,
    llamas_lanes,
    pool,
    protocols,
    report,
)

ROOT = Path(__file__).resolve().parents[1]
CULANE_WH = (328, 118)  # a fifth of CULane's 1640 x 590
CULANE_FLAGS = ["-w", "6", "-c", str(CULANE_WH[0]), "-r", str(CULANE_WH[1])]


def run_cli(module, *args):
    """``python -m intrakd_jax.evaluation.<module> args`` from the repository root."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", f"intrakd_jax.evaluation.{module}", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_json(tmp_path, module, *args):
    """Runs a command line that must succeed; returns (its --output JSON, stdout)."""
    out = tmp_path / f"{module}_{len(list(tmp_path.glob('*.json')))}.json"
    proc = run_cli(module, *args, "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert "done in" in proc.stderr  # the progress logger's final line
    return json.loads(out.read_text()), proc.stdout


# ---------------------------------------------------------------------------------------------
# Synthetic data (official sizes for LLAMAS: the official pixel AP renders labels at 717 x 1276).


@pytest.fixture(scope="module")
def llamas_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamas")
    generate_llamas(root, num_train=1, num_valid=3, num_test=1, seed=3)
    return root


@pytest.fixture(scope="module")
def culane_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("culane")
    generate_culane(root, 1, 1, 18, seed=1, image_wh=CULANE_WH)
    return root


@pytest.fixture(scope="module")
def apollo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("apollo")
    generate_apolloscape(root, num_train=1, num_valid=3, num_test=1, seed=2, scale=0.05)
    return root


def llamas_labels(root):
    paths = sorted((root / "labels" / "valid").rglob("*.json"))
    assert len(paths) == 3
    return paths


def llamas_key(label_path):
    return f"{label_path.parent.name}/{label_path.stem}"


# ---------------------------------------------------------------------------------------------
# LLAMAS pixel AP


def official_auc(pred, target):
    """The official `binary_approx_auc` restated: 101 passes in float64, as published."""
    precisions, recalls, auc = [1.0], [0.0], 0.0
    for i in range(101):
        positive = pred >= (100 - i) / 100
        tp = np.sum(target & positive)
        fp = np.sum(~target & positive)
        fn = np.sum(target & ~positive)
        precisions.append(0 if tp + fp == 0 else tp / (tp + fp))
        recalls.append(0 if tp + fn == 0 else tp / (tp + fn))
        auc += (recalls[-1] - recalls[-2]) * precisions[-2]
    return auc


def test_llamas_cli_perfect_maps_score_one_where_the_class_is_present(llamas_root, tmp_path):
    pred = tmp_path / "pred"
    present = []
    for path in llamas_labels(llamas_root):
        classes_hw = render_multiclass_label(read_json(path))
        llamas.write_llamas_probability_pngs(pred, llamas_key(path), np.eye(5)[classes_hw])
        present.append(np.bincount(classes_hw.ravel(), minlength=5) > 0)
    res, out = run_json(
        tmp_path,
        "llamas",
        "--labels",
        llamas_root / "labels" / "valid",
        "--predictions",
        pred,
        "--multi_class",
        "-j",
        "2",
    )
    # Perfect maps: AP 1 for every image that has the class, 0 (official rule) for the others.
    want = np.mean(present, axis=0)
    assert want[0] == 1.0 and 0 < want[1:].min()  # the twins have the four lanes, mostly
    for k, name in enumerate(MULTICLASS_NAMES):
        assert res["per_class"][name]["auc"] == pytest.approx(want[k], abs=1e-15)
    assert res["map"] == pytest.approx(want[1:].mean(), abs=1e-15)
    assert res["num_images"] == 3 and res["class_ids"] == dict(
        zip(MULTICLASS_NAMES, range(5), strict=True)
    )
    assert out.startswith(repr(str(pred)))  # the official printout: folder, then {class id: ...}
    assert "{0: {'auc': 1.0," in out


@pytest.mark.parametrize("multi_class", [True, False])
def test_llamas_cli_equals_the_library_and_the_official_loop(llamas_root, tmp_path, multi_class):
    rng = np.random.default_rng(0)
    pred = tmp_path / "pred"
    labels = llamas_labels(llamas_root)
    ids = range(5) if multi_class else [1]
    sums = np.zeros(5)
    for path in labels:
        label = read_json(path)
        if multi_class:
            targets = {k: render_multiclass_label(label) == k for k in ids}
        else:
            targets = {1: render_binary_label(label) != 0}
        # Noisy maps: the target plus noise, so every threshold matters.
        probs = np.zeros(targets[1].shape + (5,))
        for k, target in targets.items():
            probs[..., k] = np.clip(0.6 * target + rng.uniform(0, 0.5, target.shape), 0, 1)
        llamas.write_llamas_probability_pngs(pred, llamas_key(path), probs, class_ids=ids)
        for k in ids:
            levels = cv2.imread(str(llamas.probability_png_path(pred, path, k)), 0)
            sums[k] += official_auc(levels.astype(float) / 255, targets[k])
    flags = ["--multi_class"] if multi_class else []
    res, _ = run_json(
        tmp_path,
        "llamas",
        "--labels",
        llamas_root / "labels" / "valid",
        "--predictions",
        pred,
        *flags,
    )
    lib = llamas.evaluate_pixel_ap(
        llamas_root / "labels" / "valid", pred, multi_class=multi_class, workers=1
    )
    assert res == report.to_jsonable(lib)
    names = MULTICLASS_NAMES if multi_class else BINARY_NAMES
    for k in ids:
        assert res["per_class"][names[k]]["auc"] == pytest.approx(sums[k] / 3, abs=1e-12)


def test_llamas_cli_missing_and_malformed_maps_name_the_file(llamas_root, tmp_path):
    labels = llamas_root / "labels" / "valid"
    first = llamas_labels(llamas_root)[0]
    (tmp_path / "empty").mkdir()
    # Empty folder: the official script fails on the first map; here with its name.
    proc = run_cli("llamas", "--labels", labels, "--predictions", tmp_path / "empty")
    assert proc.returncode == 1
    assert f"{first.parent.name}/{first.stem}.json_1.png" in proc.stderr
    # A map of the wrong size and a file that is no PNG.
    bad = tmp_path / "bad" / first.parent.name
    bad.mkdir(parents=True)
    cv2.imwrite(str(bad / f"{first.stem}.json_1.png"), np.zeros((90, 160), np.uint8))
    proc = run_cli("llamas", "--labels", labels, "--predictions", tmp_path / "bad", "-j", "1")
    assert proc.returncode == 1 and "json_1.png: prediction is 160x90" in proc.stderr
    (bad / f"{first.stem}.json_1.png").write_bytes(b"not a png")
    proc = run_cli("llamas", "--labels", labels, "--predictions", tmp_path / "bad", "-j", "1")
    assert proc.returncode == 1 and f"{first.stem}.json_1.png" in proc.stderr
    # Usage errors: exit status 2 and the flag named.
    proc = run_cli("llamas", "--labels", tmp_path / "nowhere", "--predictions", tmp_path)
    assert proc.returncode == 2 and "--labels" in proc.stderr
    assert run_cli("llamas", "--labels", labels).returncode == 2


# ---------------------------------------------------------------------------------------------
# LLAMAS lane F1


def test_llamas_lanes_cli_perfect_shifted_and_missing(llamas_root, tmp_path):
    labels = llamas_root / "labels" / "valid"
    num_gt = 0
    for path in llamas_labels(llamas_root):
        gt = llamas_lanes.gt_lanes_from_json(path)
        num_gt += len(gt)
        write_lines_txt(llamas_lanes.prediction_path(tmp_path / "same", path), gt)
        # 200 px to the right: no overlap with any lane of 30 px at the 0.5 IoU rule.
        write_lines_txt(
            llamas_lanes.prediction_path(tmp_path / "shifted", path), [g + [400, 0] for g in gt]
        )
    assert num_gt >= 6
    res, out = run_json(
        tmp_path, "llamas_lanes", "--labels", labels, "--predictions", tmp_path / "same"
    )
    assert (res["tp"], res["fp"], res["fn"], res["f1"]) == (num_gt, 0, 0, 1.0)
    assert "F1: 1.0000" in out and "Results" in out  # the official printout
    res, _ = run_json(
        tmp_path,
        "llamas_lanes",
        "--labels",
        labels,
        "--predictions",
        tmp_path / "shifted",
        "-j",
        "2",
    )
    assert (res["tp"], res["fp"], res["fn"], res["f1"]) == (0, num_gt, num_gt, 0.0)
    assert res == llamas_lanes.evaluate_lane_f1(labels, tmp_path / "shifted", workers=1)
    # Empty folder: the official script stops at the first missing file; opt-in: no lanes.
    (tmp_path / "empty").mkdir()
    proc = run_cli("llamas_lanes", "--labels", labels, "--predictions", tmp_path / "empty")
    assert proc.returncode == 1 and ".lines.txt: prediction file not found" in proc.stderr
    res, _ = run_json(
        tmp_path,
        "llamas_lanes",
        "--labels",
        labels,
        "--predictions",
        tmp_path / "empty",
        "--missing_as_empty",
    )
    assert (res["tp"], res["fp"], res["fn"], res["f1"]) == (0, 0, num_gt, 0.0)


def test_llamas_lanes_cli_malformed_file_names_file_and_line(llamas_root, tmp_path):
    labels = llamas_root / "labels" / "valid"
    for path in llamas_labels(llamas_root):
        write_lines_txt(llamas_lanes.prediction_path(tmp_path, path), [])
    bad = Path(llamas_lanes.prediction_path(tmp_path, llamas_labels(llamas_root)[1]))
    bad.write_text("1 2 3 4\n5 6 x 8\n")
    proc = run_cli("llamas_lanes", "--labels", labels, "--predictions", tmp_path)
    assert proc.returncode == 1 and f"{bad.name}:2: expected numbers" in proc.stderr
    # A malformed label names the json file.
    broken = tmp_path / "labels" / "rec" / "1_2.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"lanes": [}')
    proc = run_cli("llamas_lanes", "--labels", tmp_path / "labels", "--predictions", tmp_path)
    assert proc.returncode == 1 and "1_2.json" in proc.stderr


# ---------------------------------------------------------------------------------------------
# ApolloScape mIoU


def apollo_gt(root):
    paths = sorted((root / "Labels_road04").rglob("*_bin.png"))
    assert len(paths) == 3
    return paths


def test_apolloscape_cli_perfect_and_all_void_predictions(apollo_root, tmp_path):
    gt_dir = apollo_root / "Labels_road04"
    hw = apolloscape.read_id_png(apollo_gt(apollo_root)[0]).shape
    crop_top = round(classes.CROP_TOP * hw[0] / classes.IMAGE_HW[0])
    counts = np.zeros(256, np.int64)
    (tmp_path / "void").mkdir()
    for path in apollo_gt(apollo_root):
        ids = apolloscape.read_id_png(path)
        assert not ids[:crop_top].any()  # the twins are void above the crop, as the real data
        counts += np.bincount(ids.ravel(), minlength=256)
        name = path.name.replace("_bin.png", ".png")
        # The submission writer: train ids of the crop -> ids pasted at the crop line.
        trainids = classes.ID_TO_INTRAKD_TRAINID[ids[crop_top:]]
        apolloscape.write_submission_png(
            tmp_path / "perfect" / "road04" / name, trainids, hw, crop_top
        )
        cv2.imwrite(str(tmp_path / "void" / name), np.zeros(hw, np.uint8))
    res, out = run_json(tmp_path, "apolloscape", "--gt", gt_dir, "--pred", tmp_path / "perfect")
    assert res["miou"] == 1.0 and res["num_images"] == 3
    assert "Score Average : 1.000" in out
    # Everything predicted void: void IoU = void pixels / (void + other evaluated pixels),
    # every other evaluated class present in the ground truth scores 0.
    evaluated = [lb.id for lb in classes.LABELS if not lb.ignore_in_eval]
    others = [i for i in evaluated if i != 0 and counts[i] > 0]
    void_iou = counts[0] / (counts[0] + counts[others].sum())
    res, _ = run_json(
        tmp_path, "apolloscape", "--gt", gt_dir, "--pred", tmp_path / "void", "-j", "2"
    )
    assert res["miou"] == pytest.approx(void_iou / (1 + len(others)), abs=1e-15)
    assert res["miou_without_void"] == 0.0
    pred_paths, gt_paths = apolloscape.match_predictions(gt_dir, tmp_path / "void")
    assert res == report.to_jsonable(apolloscape.evaluate_official(pred_paths, gt_paths))
    res, _ = run_json(
        tmp_path, "apolloscape", "--gt", gt_dir, "--pred", tmp_path / "void", "--without_void"
    )
    assert res["miou"] == 0.0


def test_apolloscape_cli_missing_and_malformed_predictions(apollo_root, tmp_path):
    gt_dir = apollo_root / "Labels_road04"
    first = apollo_gt(apollo_root)[0]
    (tmp_path / "empty").mkdir()
    proc = run_cli("apolloscape", "--gt", gt_dir, "--pred", tmp_path / "empty")
    assert proc.returncode == 1
    assert first.name in proc.stderr and first.name.replace("_bin", "") in proc.stderr
    hw = apolloscape.read_id_png(first).shape
    (tmp_path / "rgb").mkdir()
    for path in apollo_gt(apollo_root):
        cv2.imwrite(str(tmp_path / "rgb" / path.name), np.zeros((*hw, 3), np.uint8))
    proc = run_cli("apolloscape", "--gt", gt_dir, "--pred", tmp_path / "rgb", "-j", "1")
    assert proc.returncode == 1 and "single-channel" in proc.stderr and first.name in proc.stderr
    proc = run_cli("apolloscape", "--gt", gt_dir, "--pred", tmp_path / "missing")
    assert proc.returncode == 2 and "--pred" in proc.stderr


# ---------------------------------------------------------------------------------------------
# CULane F1


def test_culane_cli_json_official_file_and_empty_folder(culane_root, tmp_path):
    listing = culane_root / "list" / "test.txt"
    num_gt = 0
    for image in culane.read_list(listing):
        gt = culane_lanes.read_lane_file(lines_txt_path(culane_root, image)) or []
        num_gt += len(gt)
        write_lines_txt(lines_txt_path(tmp_path / "det", image), gt)
    res, out = run_json(
        tmp_path,
        "culane",
        "-a",
        culane_root,
        "-d",
        tmp_path / "det",
        "-l",
        listing,
        *CULANE_FLAGS,
        "-o",
        tmp_path / "out.txt",
    )
    assert (res["tp"], res["fp"], res["fn"], res["f1"]) == (num_gt, 0, 0, 1.0)
    assert (tmp_path / "out.txt").read_text().startswith(f"file: {tmp_path / 'out.txt'}\n")
    lib = culane.evaluate(culane_root, tmp_path / "det", listing, 6, 0.5, *CULANE_WH, workers=1)
    assert {k: v for k, v in res.items() if k != "seconds"} == {
        k: v for k, v in lib.items() if k != "seconds"
    }
    # Empty folder: a missing file is an image without lanes (official), precision -1.
    (tmp_path / "empty").mkdir()
    res, _ = run_json(
        tmp_path,
        "culane",
        "-a",
        culane_root,
        "-d",
        tmp_path / "empty",
        "-l",
        listing,
        *CULANE_FLAGS,
        "-o",
        tmp_path / "out2.txt",
    )
    assert (res["tp"], res["fp"], res["fn"], res["precision"]) == (0, 0, num_gt, -1.0)
    # Categories: JSON per category and total; usage errors give 2.
    res, out = run_json(
        tmp_path,
        "culane",
        "-a",
        culane_root,
        "-d",
        tmp_path / "det",
        "--categories",
        culane_root / "list" / "test_split",
        *CULANE_FLAGS,
    )
    assert res["total"]["tp"] == num_gt and "| total | 18 | 100.00 |" in out
    proc = run_cli("culane", "-a", culane_root, "-d", tmp_path / "det", "-l", tmp_path / "x.txt")
    assert proc.returncode == 2 and "-l" in proc.stderr
    proc = run_cli("culane", "-a", culane_root, "-d", tmp_path / "det", "-l", listing, "-w", "0")
    assert proc.returncode == 2 and "width" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Shared pieces: progress with ETA


def test_map_images_keeps_order_and_logs_progress_with_eta(caplog):
    caplog.set_level("INFO")
    out = pool.map_images(abs, [-3, 2, -1], workers=1, what="things", progress_every_s=0.0)
    assert out == [3, 2, 1]
    lines = [r.getMessage() for r in caplog.records]
    assert any("things: 2/3" in line and "ETA" in line for line in lines)
    assert lines[-1].startswith("things: 3/3 done in")
    with pytest.raises(ValueError, match="workers"):
        pool.map_images(abs, [1], workers=0)


# ---------------------------------------------------------------------------------------------
# Issue 17: the batch job writes every map the official pixel-AP modes read


@pytest.mark.parametrize("names", [MULTICLASS_NAMES, BINARY_NAMES], ids=["multiclass", "binary"])
def test_llamas_protocol_writes_the_official_map_set_and_the_cli_reads_it(
    llamas_root, tmp_path, names
):
    multi_class = len(names) == 5
    ctx = protocols.ProtocolContext(
        split="valid",
        out_dir=str(tmp_path / "out"),
        data_dir=str(llamas_root),
        class_names=tuple(names),
        source_hw=(717, 1276),
        crop_top=0,
        network_hw=(24, 40),
        workers=1,
    )
    proto = protocols.LlamasProtocol(ctx)
    rng = np.random.default_rng(5)
    render = render_multiclass_label if multi_class else render_binary_label
    for path in llamas_labels(llamas_root):
        label_png = tmp_path / "labels" / f"{path.stem}.png"
        label_png.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(label_png), render(read_json(path)))
        logits = rng.normal(size=(24, 40, len(names)))
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        proto.add(llamas_key(path), "", str(label_png), probs.astype(np.float32))
    metrics, _ = proto.finish()
    # The official names: <rec>/<ts>.json_{0..4}.png (multi-class), <rec>/<ts>.json_1.png.
    official = range(5) if multi_class else [1]
    pred = tmp_path / "out" / "predictions"
    for path in llamas_labels(llamas_root):
        written = sorted(p.name for p in (pred / path.parent.name).glob(f"{path.stem}.*"))
        assert written == sorted(f"{path.stem}.json_{k}.png" for k in official)
        for k in official:
            levels = cv2.imread(str(pred / path.parent.name / f"{path.stem}.json_{k}.png"), -1)
            assert levels.shape == (717, 1276) and levels.dtype == np.uint8
    # The official mode runs on that folder unchanged, with the job's numbers.
    flags = ["--multi_class"] if multi_class else []
    res, _ = run_json(
        tmp_path,
        "llamas",
        "--labels",
        llamas_root / "labels" / "valid",
        "--predictions",
        pred,
        *flags,
    )
    for k in official:
        assert res["per_class"][names[k]]["auc"] == pytest.approx(
            metrics["ap"][names[k]], abs=1e-12
        )


# ---------------------------------------------------------------------------------------------
# The metrics without TensorFlow or jax

_BLOCKED_IMPORTS = textwrap.dedent(
    """
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "jax", "jaxlib"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    """
)

_SMALL_CASES = textwrap.dedent(
    """
    import math
    import numpy as np

    import intrakd_jax.evaluation as evaluation
    from intrakd_jax.evaluation import (
        apolloscape, culane, llamas, llamas_lanes, prob2lines, protocols, report, segmentation,
        tta, visualize,
    )

    lane = np.array([[800.0, 589.0], [800.0, 300.0]])
    assert culane.evaluate_lanes([lane], [lane]) == (1, 0, 0)
    assert culane.evaluate_lanes([lane], [lane + [300, 0]]) == (0, 1, 1)
    maps = np.zeros((1, 208, 976), np.uint8)
    maps[0, :, 60] = 255  # column 61 (1-based): 61 * 1640 / 976 = 102.5, MATLAB rounds to 103
    (got,) = prob2lines.prob2lines(maps, [1.0])
    assert got[:, 0].tolist() == [102] * 18 and got[0, 1] == 589
    target = np.array([[1, 0], [0, 1]])
    assert llamas.binary_approx_auc(target * 1.0, target)["auc"] == 1.0
    # t = 1: P = R = 1/2 (added with the start precision 1); t = 0.5: R = 1 at P = 1/2 before.
    assert llamas.binary_approx_auc(np.array([[1.0, 0], [1.0, 0.5]]), target)["auc"] == 0.75
    # Nothing positive above 0.5: the recall is weighted by the precision 0 of t = 0.51.
    assert llamas.binary_approx_auc(np.full((2, 2), 0.5), target)["auc"] == 0.0
    assert llamas_lanes.lane_f1_counts([lane], [lane]) == (1, 0, 0)
    conf = np.zeros((256, 256), np.int64)
    conf[0, 0], conf[200, 200], conf[200, 0] = 6, 3, 1
    res = apolloscape.official_miou_from_confusion(conf)
    assert res["iou"]["void"] == 6 / 7 and res["iou"]["s_w_d"] == 3 / 4
    assert tta.official_crop_hw(1440) == (480, 1440)
    iou = segmentation.iou_from_confusion(np.array([[2, 1], [0, 1]]))["iou"]
    assert iou == [2 / 3, 1 / 2]
    assert evaluation.iou_from_confusion is segmentation.iou_from_confusion
    assert report.to_jsonable({"x": math.nan}) == {"x": None}
    assert "intrakd_jax.evaluation.device" not in sys.modules
    assert not [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "jax")]
    print("ok")
    """
)


def test_metric_modules_import_and_compute_without_tensorflow_and_jax():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORTS + _SMALL_CASES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    # The blocker works: jax is refused in the same setting.
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORTS + "import intrakd_jax.evaluation.device"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "jax is blocked" in proc.stderr


def test_map_images_error_in_a_worker_never_hangs():
    # A task that raises (a missing prediction file) once hung the CLIs now and then: leaving
    # `with multiprocessing.Pool` after an exception could block on a queue lock an idle worker
    # held. time.sleep(-1) raises ValueError in the worker; the sleeps keep the others busy.
    code = textwrap.dedent(
        """
        import time
        from intrakd_jax.evaluation import pool
        for workers in (2, 4):
            for pause in (0.001, 0.01):
                tasks = [0.001, -1, pause, pause, pause]
                for _ in range(60):
                    try:
                        pool.map_images(time.sleep, tasks, workers=workers)
                    except ValueError:
                        continue
                    raise SystemExit("no error raised")
        print("done")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # The hang needs a busy machine (seen in CI, not on an idle one): three spinning processes.
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90
        )
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-2000:]
