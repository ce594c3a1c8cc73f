"""CULane reader, official label port and synthetic generator.

References are written here independently: list lines are built by hand, crops/resizes are
computed from TF's half-pixel rules, the spline is checked against scipy's natural cubic spline,
lane slots follow DATASETS.md 1.5 re-derived below, and ``.lines.txt`` files are parsed with a
plain float split (and cross-checked with the exact evaluator reader).
"""

import glob
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import tensorflow as tf
from scipy.interpolate import CubicSpline

import data_pipelines
from configs import culane as culane_config
from data_pipelines import augment
from data_pipelines.errors import DataConfigError, DataError, DatasetLayoutError
from data_pipelines.formats import culane, lines_txt
from data_pipelines.synthetic import culane as synth

SMALL_WH = (328, 118)  # 1/5 of 1640x590
N_TRAIN, N_VALID, N_TEST = 6, 3, 9
SEED = 5


def data_config(data_dir, **overrides):
    c = culane_config.get_config("").data
    c.data_dir = str(data_dir)
    c.num_parallel_calls = 1
    c.prefetch = 0
    c.update_from_flattened_dict(overrides)
    return c


def read_lanes(path):
    """Plain parser of a well-formed .lines.txt: one lane per line, x y pairs."""
    with open(path) as f:
        text = f.read()
    lanes = []
    for line in text.splitlines():
        values = [float(v) for v in line.split()]
        assert values and len(values) % 2 == 0, f"{path}: bad line {line!r}"
        lanes.append(np.array(values).reshape(-1, 2))
    return lanes, text


def read_list(path):
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("culane_small")
    synth.generate_culane(root, N_TRAIN, N_VALID, N_TEST, seed=SEED, image_wh=SMALL_WH)
    return root


# ----------------------------------------------------------------------------------------------
# List parsing.


def test_gt_list_six_fields_and_one_leading_slash(tmp_path):
    path = tmp_path / "train_gt.txt"
    path.write_text(
        "/driver_23_30frame/05151649_0422.MP4/00000.jpg "
        "/laneseg_label_w16/driver_23_30frame/05151649_0422.MP4/00000.png 1 0 1 1\n"
        "\n"
        "driver_23_30frame/05151649_0422.MP4/00030.jpg "
        "laneseg_label_w16/driver_23_30frame/05151649_0422.MP4/00030.png 0 0 0 0\n"
    )
    entries, problems = culane.parse_list(path, "gt")
    assert problems == []
    assert [e.line for e in entries] == [1, 3]
    assert entries[0].image == "driver_23_30frame/05151649_0422.MP4/00000.jpg"
    assert entries[0].label == "laneseg_label_w16/driver_23_30frame/05151649_0422.MP4/00000.png"
    assert entries[0].exist == (1, 0, 1, 1)
    assert entries[1].exist == (0, 0, 0, 0)
    assert entries[1].key == "driver_23_30frame/05151649_0422.MP4/00030"


def test_image_only_and_test_split_lists(tmp_path):
    (tmp_path / "test.txt").write_text(
        "/driver_37_30frame/05181432_0203.MP4/00000.jpg\n"
        "driver_100_30frame/05251517_0433.MP4/00030.jpg\n"
    )
    entries, _ = culane.parse_list(tmp_path / "test.txt", "image")
    assert [e.image for e in entries] == [
        "driver_37_30frame/05181432_0203.MP4/00000.jpg",
        "driver_100_30frame/05251517_0433.MP4/00030.jpg",
    ]
    assert all(e.label is None and e.exist is None for e in entries)
    assert culane.CATEGORY_SPLITS[0] == "test0_normal"
    assert culane.CATEGORY_SPLITS[8] == "test8_night"
    assert culane.LIST_FILES["test7_cross"] == ("list/test_split/test7_cross.txt", "image")


def test_root_rewrite_of_absolute_paths(tmp_path):
    root = str(tmp_path / "CULane")
    raw = "/home/x/CULane/driver_23_30frame/05151649_0422.MP4/00000.jpg"
    rel = "driver_23_30frame/05151649_0422.MP4/00000.jpg"
    assert culane.normalize_list_path(raw, root, ("/home/x/CULane", "")) == rel
    assert culane.normalize_list_path(raw, root, ("/home/x/CULane/", "")) == rel
    assert culane.normalize_list_path(raw, root, ("/home/x/CULane", root)) == rel  # absolute new
    assert culane.normalize_list_path(raw, root) == "home/x/" + "CULane/" + rel  # one '/' only
    assert culane.normalize_list_path(root + "/" + rel, root) == rel  # absolute inside the root
    assert culane.normalize_list_path("/" + rel, root, ("/home/x/CULane", "")) == rel  # no match

    # Through the reader: a list written on another machine.
    img_rel = "driver_23_30frame/a.MP4/00000.jpg"
    lab_rel = "laneseg_label_w16/driver_23_30frame/a.MP4/00000.png"
    for rel, data in ((img_rel, np.full((30, 40, 3), 90, np.uint8)), (lab_rel, None)):
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        data = np.zeros((30, 40), np.uint8) if data is None else data
        assert cv2.imwrite(os.path.join(root, rel), data)
    os.makedirs(os.path.join(root, "list"))
    for name in ("train_gt.txt", "val_gt.txt"):
        with open(os.path.join(root, "list", name), "w") as f:
            f.write(f"/home/x/CULane/{img_rel} /home/x/CULane/{lab_rel} 1 1 0 0\n")
    with pytest.raises(DatasetLayoutError, match=r"root_rewrite = \('/home/x/CULane/', ''\)"):
        data_pipelines.get_dataset(data_config(root, crop_top=0)).prepare()
    ds = data_pipelines.get_dataset(data_config(root, crop_top=0, root_rewrite=("/home/x", "")))
    with pytest.raises(DatasetLayoutError, match="train_gt.txt:1: image"):
        ds.prepare()  # the prefix maps to <root>/CULane/..., which does not exist
    ds = data_pipelines.get_dataset(
        data_config(root, crop_top=0, root_rewrite=("/home/x/CULane", ""))
    )
    ds.prepare()
    assert ds.keys("train") == ["driver_23_30frame/a.MP4/00000"]
    assert ds.examples("train")[0].label_path == os.path.join(root, lab_rel)
    np.testing.assert_array_equal(ds.existence("valid"), [[1, 1, 0, 0]])
    with pytest.raises(DataConfigError, match="root_rewrite"):
        data_pipelines.get_dataset(data_config(root, root_rewrite=("", "x")))


def test_malformed_lines_strict_names_file_line_lenient_lists_all(tmp_path):
    path = tmp_path / "val_gt.txt"
    good = "/d/a.MP4/00000.jpg /laneseg_label_w16/d/a.MP4/00000.png 1 1 1 1"
    path.write_text(
        f"{good}\n"
        "/d/a.MP4/00030.jpg /laneseg_label_w16/d/a.MP4/00030.png 1 1 1\n"  # 5 fields
        "/d/a.MP4/00060.jpg /laneseg_label_w16/d/a.MP4/00060.png 1 2 1 1\n"  # flag 2
        "/d/a.MP4/00090.jpg /laneseg_label_w16/d/a.MP4/00090.png 0 1 1 0\n"
        f"{good}\n"  # duplicate of line 1
        "//abs/x.jpg /laneseg_label_w16/x.png 1 1 1 1\n"  # still absolute after one '/'
    )
    with pytest.raises(DataError, match=rf"{path}:2: expected .*6 space-separated fields"):
        culane.parse_list(path, "gt")
    entries, problems = culane.parse_list(path, "gt", strict=False)
    assert [e.line for e in entries] == [1, 4]
    assert [(p.kind, p.path, p.line) for p in problems] == [
        ("malformed_line", str(path), n) for n in (2, 3, 5, 6)
    ]
    assert "0 or 1" in problems[1].message and "line 1" in problems[2].message
    # A 6-field line in an image-only list is malformed too.
    _, problems = culane.parse_list(path, "image", strict=False)
    assert [p.line for p in problems] == [1, 2, 3, 4, 5, 6]
    # Missing list file.
    with pytest.raises(DatasetLayoutError, match="list file does not exist"):
        culane.parse_list(tmp_path / "nope.txt", "image")
    _, problems = culane.parse_list(tmp_path / "nope.txt", "image", strict=False)
    assert [(p.kind, p.line) for p in problems] == [("missing_file", None)]


# ----------------------------------------------------------------------------------------------
# Crop + resize, by hand.


def _write_tiny_dataset(root, image_rgb, label):
    rel = "driver_23_30frame/c.MP4/00000.png"  # PNG frame: exact pixels for the hand check
    lab = "laneseg_label_w16/driver_23_30frame/c.MP4/00000.png"
    for path, img in ((rel, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)), (lab, label)):
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        assert cv2.imwrite(os.path.join(root, path), img)
    os.makedirs(os.path.join(root, "list"), exist_ok=True)
    for name in ("train_gt.txt", "val_gt.txt"):
        (root / "list" / name).write_text(f"/{rel} /{lab} 1 1 1 1\n")


def test_crop_top_then_resize_matches_hand_computation(tmp_path):
    h, w, crop = 20, 8, 8
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]
    label = ((rows + cols) % 5).astype(np.uint8)
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = 10 * rows
    image[..., 1] = 20 * cols
    image[..., 2] = 100
    _write_tiny_dataset(tmp_path, image, label)
    cfg = data_config(tmp_path, crop_top=crop, image_hw=(6, 4), mean_rgb=(0.0, 0.0, 0.0))
    cfg.augment.enabled = False
    ds = data_pipelines.get_dataset(cfg)
    ds.prepare()
    batch = next(iter(ds.eval_batches("valid", 1)))
    i = np.arange(6)[:, None]
    j = np.arange(4)[None, :]
    # 12 cropped rows -> 6 and 8 columns -> 4. TF nearest with half-pixel centres reads source
    # index floor((i + 0.5) * 2) = 2i + 1; cropped row r is source row crop + r.
    expected_label = ((crop + 2 * i + 1) + (2 * j + 1)) % 5
    np.testing.assert_array_equal(batch["label"][0], expected_label)
    # Bilinear with half-pixel centres samples at 2i + 0.5: the mean of rows 2i and 2i + 1.
    np.testing.assert_allclose(
        batch["image"][0, ..., 0], np.broadcast_to(10 * (crop + 2 * i + 0.5), (6, 4))
    )
    np.testing.assert_allclose(
        batch["image"][0, ..., 1], np.broadcast_to(20 * (2 * j + 0.5), (6, 4))
    )
    np.testing.assert_allclose(batch["image"][0, ..., 2], 100.0)
    train = next(iter(ds.train_batches(1, seed=0)))
    np.testing.assert_array_equal(train["label"][0], expected_label)
    assert ds.source_image_hw("valid") == (h, w)
    with pytest.raises(DataConfigError, match="crop_top"):
        data_pipelines.get_dataset(data_config(tmp_path, crop_top=20)).source_image_hw("valid")


def test_official_recipe_config_and_its_scale():
    c = culane_config.get_config("")
    d = c.data
    assert d.name == "culane" and d.crop_top == 240 and tuple(d.image_hw) == (208, 976)
    assert tuple(d.class_weights) == (0.4, 1.0, 1.0, 1.0, 1.0)
    assert tuple(d.mean_rgb) == (123.68, 116.779, 103.939) and tuple(d.std_rgb) == (1, 1, 1)
    spec = augment.AugmentSpec.from_config(d.augment)
    assert spec.scale_range == (0.595, 0.621) and spec.scale_of == "source"
    assert spec.rotation_deg == 1.0 and spec.rotation_prob == 0.5 and not spec.hflip
    # At the official low scale the 1640x350 crop becomes exactly 976x208: nothing is cropped
    # or padded, the label is the plain nearest resize.
    label = tf.constant(np.random.default_rng(0).integers(0, 5, (350, 1640, 1)), tf.uint8)
    fixed = augment.AugmentSpec(enabled=True, scale_range=(0.595, 0.595), scale_of="source")
    _, out = augment.augment_pair(
        tf.zeros((350, 1640, 3)), label, (208, 976), tf.constant([1, 2], tf.int64), fixed
    )
    np.testing.assert_array_equal(out, tf.image.resize(label, (208, 976), method="nearest"))
    # The synthetic demo maps the same range onto its network input.
    syn = culane_config.get_config("synthetic").data.augment
    np.testing.assert_allclose(syn.scale_range, (0.595 * 1640 / 976, 0.621 * 1640 / 976))
    assert syn.scale_of == "output"
    with pytest.raises(DataConfigError, match="data_dir is not set"):
        data_pipelines.get_dataset(d)
    with pytest.raises(ValueError, match="unknown variant"):
        culane_config.get_config("nope")


# ----------------------------------------------------------------------------------------------
# The official label generator port.


def _straight(x_bottom, x_top, y_top=300.0, h=590.0, step=10.0):
    ys = np.arange(h, y_top - 1e-9, -step)
    return np.stack([x_bottom + (x_top - x_bottom) * (h - ys) / (h - y_top), ys], axis=1)


def test_spline_matches_scipy_natural_spline_over_chord_length():
    pts = np.array([[100.0, 590.0], [130.0, 540.0], [150.0, 470.0], [190.0, 420.0], [260, 300]])
    got = culane.spline_interp_step(pts, 1.0)
    chord = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    ref_spline = CubicSpline(chord, pts, bc_type="natural")
    ts = np.concatenate(
        [np.arange(0.0, chord[i + 1] - chord[i], 1.0) + chord[i] for i in range(len(pts) - 1)]
    )
    ref = np.concatenate([ref_spline(ts), pts[-1:]])
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=2e-3)
    two = culane.spline_interp_step(np.array([[0.0, 10.0], [0.0, 0.0]]), 1.0)
    np.testing.assert_allclose(two[:, 1], [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0])


def _run(label, row, value):
    """Length of the run of ``value`` in ``row`` of ``label``."""
    return int(np.sum(label[row] == value))


def test_four_lanes_get_values_1_to_4_left_to_right_width_16():
    lanes = [_straight(-100, 700), _straight(400, 780), _straight(1200, 860), _straight(1700, 940)]
    rng = np.random.default_rng(0)
    label, exist = culane.render_seg_label([lanes[i] for i in rng.permutation(4)])
    assert exist == (1, 1, 1, 1)
    assert culane.existence_flags(lanes) == (1, 1, 1, 1)
    row = 500
    for value, lane in zip((1, 2, 3, 4), lanes, strict=True):
        x = lane[lane[:, 1] == row][0, 0]
        assert label[row, int(round(x))] == value
    # A vertical lane: a 16 px wide band (OpenCV thick LINE_8: 16 or 17 px).
    label, exist = culane.render_seg_label([_straight(1400, 1400)])
    assert exist == (0, 0, 1, 0)  # one lane right of the centre -> slot 2 (value 3)
    assert 16 <= _run(label, 450, 3) <= 17
    assert set(np.unique(label)) == {0, 3}


def test_two_lanes_are_always_values_2_and_3_and_one_lane_by_side():
    label, exist = culane.render_seg_label([_straight(100, 600), _straight(500, 760)])
    assert exist == (0, 1, 1, 0)  # both left of the centre: still slots 1 and 2
    assert label[590 - 1, 100] == 2 and label[589, 499] == 3
    _, exist = culane.render_seg_label([_straight(300, 700)])
    assert exist == (0, 1, 0, 0)
    assert culane.render_seg_label([])[1] == (0, 0, 0, 0)


def test_short_lane_dropped_double_line_removed_far_left_truncated():
    # Chord length < 35 px: dropped.
    label, exist = culane.render_seg_label([_straight(800, 810, y_top=570)])
    assert exist == (0, 0, 0, 0) and not label.any()
    # Long enough (41 px) but on one grid row only (590; 580 is above its top at 582): kept,
    # yet it does not exist (< 2 valid rows) and nothing is drawn.
    one_row = np.array([[800.0, 590.0], [840.0, 582.0]])
    assert culane.official_slot_lanes([one_row]).keys() == {1}
    label, exist = culane.render_seg_label([one_row])
    assert exist == (0, 0, 0, 0) and not label.any()
    assert culane.existence_flags([one_row]) == (0, 0, 0, 0)
    # A and B are 40 px apart (< 120): B's left neighbour A leans right (k < 0) and is erased.
    a, b, c = _straight(300, 700), _straight(340, 740), _straight(1400, 950)
    label, exist = culane.render_seg_label([a, b, c])
    assert exist == (0, 1, 1, 0)
    assert label[585, 340] == 2 and label[585, 300] == 0 and label[585, 1400] == 3
    # A lane left of x = -500 at the bottom: the official walk stops at once (no valid rows).
    label, exist = culane.render_seg_label([_straight(-700, 300)])
    assert exist == (0, 0, 0, 0) and not label.any()


def test_scaled_frames_scale_the_pixel_constants():
    lanes = [_straight(-100, 700), _straight(400, 780), _straight(1200, 860), _straight(1700, 940)]
    small = [lane / 5.0 for lane in lanes]
    label, exist = culane.render_seg_label(small, (328, 118))
    assert label.shape == (118, 328) and exist == (1, 1, 1, 1)
    assert culane.LabelGeometry((328, 118)).thickness == 3
    np.testing.assert_allclose(culane.LabelGeometry((328, 118)).y_seq[:3], [118, 116, 114])
    full, _ = culane.render_seg_label(lanes)
    # Same scene at 1/5: the classes agree with the full-size label subsampled at the lanes.
    for lane, value in zip(small, (1, 2, 3, 4), strict=True):
        x, y = lane[10]
        assert label[int(round(y)), int(round(x))] == value == full[int(y * 5), int(x * 5)]


# ----------------------------------------------------------------------------------------------
# Generator round trip.


def _expected_values(lanes, w, h):
    """Label value per lane index by DATASETS.md 1.5 steps 6 and 8 (no lane dropped)."""
    if not lanes:
        return {}

    def bottom_x(lane):
        return np.polyval(np.polyfit(lane[:, 1], lane[:, 0], 1), h)

    order = sorted(range(len(lanes)), key=lambda i: bottom_x(lanes[i]))
    if len(order) == 1:
        return {order[0]: 3 if bottom_x(lanes[order[0]]) > w / 2 else 2}
    if len(order) == 2:
        return {order[0]: 2, order[1]: 3}
    k = [(lanes[i][1, 0] - lanes[i][0, 0]) / (lanes[i][1, 1] - lanes[i][0, 1]) for i in order]
    split = next((j for j in range(1, len(order)) if k[j - 1] <= 0 < k[j]), None)
    if split is None:
        split = next(
            (j for j in range(len(order)) if bottom_x(lanes[order[j]]) > w / 2), len(order)
        )
    return {i: j - split + 3 for j, i in enumerate(order) if 0 <= j - split + 2 < 4}


def test_generator_layout_and_lists(small):
    lst = small / "list"
    train_gt, val_gt = read_list(lst / "train_gt.txt"), read_list(lst / "val_gt.txt")
    assert len(train_gt) == N_TRAIN and len(val_gt) == N_VALID
    for rows, images in ((train_gt, "train.txt"), (val_gt, "val.txt")):
        for fields in rows:
            assert len(fields) == 6 and fields[0].startswith("/driver_23_30frame/")
            key = fields[0][1:-4]
            assert fields[1] == f"/laneseg_label_w16/{key}.png"
            assert all(f in ("0", "1") for f in fields[2:])
        assert [f[0] for f in read_list(lst / images)] == [f[0] for f in rows]
    test = [f[0] for f in read_list(lst / "test.txt")]
    assert len(test) == N_TEST and all(p.startswith("/driver_37_30frame/") for p in test)
    in_categories = []
    for name in culane.CATEGORY_SPLITS:
        lines = [f[0] for f in read_list(lst / "test_split" / f"{name}.txt")]
        assert len(lines) == 1 and not lines[0].startswith("/")  # 9 frames, one per category
        in_categories += ["/" + p for p in lines]
    assert sorted(in_categories) == sorted(test)  # a partition of test.txt
    listed = {f[0][1:] for f in train_gt + val_gt} | {p[1:] for p in test}
    on_disk = {os.path.relpath(p, small) for p in glob.glob(str(small / "driver_*/*/*.jpg"))}
    assert listed == on_disk and len(on_disk) == N_TRAIN + N_VALID + N_TEST
    for rel in on_disk:
        key = rel[:-4]
        assert os.path.basename(key).isdigit() and int(os.path.basename(key)) % 30 == 0
        clip = key.split("/")[1]
        assert clip.endswith(".MP4") and len(clip) == len("05151649_0422.MP4") and clip[8] == "_"
        img = cv2.imread(str(small / rel), cv2.IMREAD_UNCHANGED)
        lab = cv2.imread(str(small / "laneseg_label_w16" / (key + ".png")), cv2.IMREAD_UNCHANGED)
        assert img.shape == (SMALL_WH[1], SMALL_WH[0], 3) and lab.shape == img.shape[:2]
        assert lab.dtype == np.uint8 and lab.max() <= 4
        assert (small / (key + ".lines.txt")).exists()
    marker = json.loads((small / synth.MARKER_FILE).read_text())
    assert marker["image_wh"] == list(SMALL_WH) and not synth.in_progress(small)


def test_generator_lines_labels_and_flags_agree(small):
    w, h = SMALL_WH
    grid = np.round(h * (59 - np.arange(59)) / 59.0, 3)
    flags = {}
    for fields in read_list(small / "list/train_gt.txt") + read_list(small / "list/val_gt.txt"):
        flags[fields[0][1:-4]] = tuple(int(f) for f in fields[2:])
    empty = 0
    for path in sorted(glob.glob(str(small / "driver_*/*/*.lines.txt"))):
        key = os.path.relpath(path, small)[: -len(".lines.txt")]
        lanes, text = read_lanes(path)
        label = cv2.imread(str(small / "laneseg_label_w16" / (key + ".png")), cv2.IMREAD_UNCHANGED)
        assert "\n\n" not in text and (text == "" or text.endswith(" \n"))
        if not lanes:
            empty += 1
            assert not label.any()
        for lane in lanes:
            assert lane.shape[0] >= 6
            # y on the official grid (scaled), bottom first, consecutive rows.
            first = int(np.argmin(np.abs(grid - lane[0, 1])))
            np.testing.assert_allclose(lane[:, 1], grid[first : first + len(lane)])
            assert np.all(np.round(lane[:, 0], 3) == lane[:, 0])
        expected = _expected_values(lanes, w, h)
        exist = tuple(int(v in expected.values()) for v in (1, 2, 3, 4))
        if key in flags:
            assert flags[key] == exist, key
        assert set(np.unique(label)) - {0} == set(expected.values()), key
        for i, value in expected.items():
            lane = lanes[i]
            inside = (lane[:, 0] >= 2) & (lane[:, 0] <= w - 3) & (lane[:, 1] <= h - 1)
            x, y = np.round(lane[np.argmax(inside)]).astype(int)
            assert inside.any()
            patch = label[y - 1 : y + 2, x - 1 : x + 2]
            assert set(np.unique(patch)) - {0} == {value}, (key, i)
    assert empty >= 1  # the cross frame (and maybe more)


def test_generator_lines_read_by_the_official_evaluator(small):
    from intrakd_jax.evaluation import culane as culane_eval

    total = 0
    for path in glob.glob(str(small / "driver_37_30frame/*/*.lines.txt")):
        mine, _ = read_lanes(path)
        theirs = culane_eval.read_lane_file(path)
        assert len(theirs) == len(mine)
        for a, b in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(np.float32(a), b)
        total += len(mine)
    res = culane_eval.evaluate(
        small, small, small / "list/test.txt", width=6, im_width=SMALL_WH[0],
        im_height=SMALL_WH[1], workers=1,
    )  # fmt: skip
    assert (res["tp"], res["fp"], res["fn"]) == (total, 0, 0)


def test_reader_on_generated_data(small):
    ds = data_pipelines.get_dataset(
        data_config(small, crop_top=48, image_hw=(24, 112), **{"augment.enabled": False})
    )
    ds.prepare()
    train_gt = read_list(small / "list/train_gt.txt")
    assert ds.keys("train") == [f[0][1:-4] for f in train_gt]
    np.testing.assert_array_equal(
        ds.existence("train"), [[int(v) for v in f[2:]] for f in train_gt]
    )
    assert ds.existence("test") is None
    assert ds.is_labelled("test") and ds.is_labelled("test7_cross")
    assert ds.source_image_hw("test") == (SMALL_WH[1], SMALL_WH[0])
    key = ds.keys("valid")[1]
    assert ds.image_path("valid", key) == str(small / (key + ".jpg"))
    assert ds.example("valid", key).label_path == str(small / "laneseg_label_w16" / (key + ".png"))
    assert ds.annotation_path(key) == str(small / (key + ".lines.txt"))
    for split in culane.SPLITS:
        assert ds.list_problems(split) == [], split

    batches = list(ds.eval_batches("valid", 2))
    assert len(batches) == 2  # 3 frames -> one padded batch
    b = batches[1]
    assert b["image"].shape == (2, 24, 112, 3) and b["image"].dtype == np.float32
    assert b["label"].shape == (2, 24, 112) and b["label"].dtype == np.int32
    np.testing.assert_array_equal(b["mask"], [True, False])
    np.testing.assert_array_equal(b["index"], [2, -1])
    assert np.all(b["label"][1] == 255)
    # Label = cropped PNG, nearest-resized with half-pixel centres (TF), computed here.
    for batch, index in ((batches[0], 0), (batches[0], 1), (b, 2)):
        key = ds.keys("valid")[index]
        raw = cv2.imread(str(small / "laneseg_label_w16" / (key + ".png")), cv2.IMREAD_UNCHANGED)
        crop = raw[48:]
        rows = np.floor((np.arange(24) + 0.5) * crop.shape[0] / 24).astype(int)
        cols = np.floor((np.arange(112) + 0.5) * crop.shape[1] / 112).astype(int)
        np.testing.assert_array_equal(batch["label"][index % 2], crop[rows][:, cols])
    cross = next(iter(ds.eval_batches("test7_cross", 2)))
    assert cross["mask"].tolist() == [True, False] and not cross["label"][0].any()


def test_planted_faults_are_listed_and_stop_strict_reading(small, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(small, root)
    train_gt = read_list(root / "list/train_gt.txt")
    gone_image = root / train_gt[1][0][1:]
    os.remove(gone_image)
    lines = (root / "list/val_gt.txt").read_text().splitlines()
    lines[1] = lines[1].rsplit(" ", 1)[0]  # 5 fields on line 2
    (root / "list/val_gt.txt").write_text("\n".join(lines) + "\n")
    test = read_list(root / "list/test.txt")
    gone_anno = root / (test[0][0][1:-4] + ".lines.txt")
    os.remove(gone_anno)
    gone_label = root / "laneseg_label_w16" / (test[3][0][1:-4] + ".png")
    os.remove(gone_label)

    ds = data_pipelines.get_dataset(data_config(root, crop_top=48, image_hw=(24, 112)))
    train = ds.list_problems("train")
    assert [(p.kind, p.path, p.line) for p in train] == [("missing_file", str(gone_image), None)]
    assert "train_gt.txt:2" in train[0].message
    valid = ds.list_problems("valid")
    assert [(p.kind, p.path, p.line) for p in valid] == [
        ("malformed_line", str(root / "list/val_gt.txt"), 2)
    ]
    problems = {(p.kind, p.path) for p in ds.list_problems("test")}
    assert problems == {("missing_file", str(gone_anno)), ("missing_file", str(gone_label))}
    with pytest.raises(DatasetLayoutError, match=r"train_gt.txt:2: image .* does not exist"):
        ds.examples("train")
    with pytest.raises(DatasetLayoutError, match=r"val_gt.txt:2: expected"):
        ds.examples("valid")
    lenient = data_pipelines.get_dataset(
        data_config(root, crop_top=48, image_hw=(24, 112), skip_corrupt=True)
    )
    assert len(lenient.examples("train")) == N_TRAIN  # the pipeline skips the missing image
    assert not ds.is_labelled("test")  # 8 of 9 test labels: read without labels
    assert all(e.label_path is None for e in ds.examples("test"))
    assert ds.is_labelled("test0_normal")


def test_generation_is_deterministic_resumable_and_guarded(small, tmp_path):
    root = tmp_path / "again"
    synth.generate_culane(root, N_TRAIN, N_VALID, N_TEST, seed=SEED, image_wh=SMALL_WH)
    files = sorted(
        os.path.relpath(p, small) for p in glob.glob(str(small / "**/*"), recursive=True)
    )
    for rel in files:
        if os.path.isfile(small / rel):
            assert (small / rel).read_bytes() == (root / rel).read_bytes(), rel
    # Interrupted run: marker gone, in-progress file back, a frame missing.
    victim = next(p for p in files if p.endswith(".jpg"))
    os.remove(root / victim)
    os.remove(root / synth.MARKER_FILE)
    params = synth.generator_params(N_TRAIN, N_VALID, N_TEST, SEED, SMALL_WH)
    (root / synth.IN_PROGRESS_FILE).write_text(json.dumps(params))
    with pytest.raises(ValueError, match="unfinished"):
        synth.generate_culane(root, N_TRAIN + 1, N_VALID, N_TEST, seed=SEED, image_wh=SMALL_WH)
    synth.generate_culane(root, N_TRAIN, N_VALID, N_TEST, seed=SEED, image_wh=SMALL_WH)
    assert (root / victim).read_bytes() == (small / victim).read_bytes()
    assert (root / "list/train_gt.txt").read_text() == (small / "list/train_gt.txt").read_text()
    assert synth.read_marker(root) == params and not synth.in_progress(root)
    # A config asking for other parameters is refused with both parameter sets.
    cfg = data_config(root, **{"synthetic.enabled": True, "synthetic.num_train": 7})
    cfg.synthetic.image_wh = SMALL_WH
    cfg.synthetic.update(num_valid=N_VALID, num_test=N_TEST, seed=SEED)
    with pytest.raises(DataConfigError, match="holds a synthetic CULane dataset generated with"):
        data_pipelines.get_dataset(cfg).prepare()
    with pytest.raises(ValueError, match="aspect"):
        synth.generator_params(image_wh=(328, 200))


def test_lines_txt_paths_of_images_and_keys():
    assert lines_txt.key_lines_txt_path("/r", "d/a.MP4/00000") == "/r/d/a.MP4/00000.lines.txt"
    assert lines_txt.lines_txt_path("/r", "/d/a.MP4/00000.jpg") == "/r/d/a.MP4/00000.lines.txt"


# ----------------------------------------------------------------------------------------------
# End to end.


def test_smoke_pipeline_trains_and_evaluates(run_smoke_pipeline, tmp_path):
    _, table = run_smoke_pipeline(culane_config)
    for label in ("teacher", "student (baseline)", "student + IntRA-KD", "mIoU", "IoU lane1"):
        assert label in table
    assert synth.read_marker(tmp_path / "data")["image_wh"] == [164, 59]
