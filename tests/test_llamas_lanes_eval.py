"""Tests for the official LLAMAS lane metrics (intrakd_jax.evaluation.llamas_lanes).

Every expected number is worked out by hand in the comments. The one OpenCV fact used: a
`cv2.line` of thickness 30 through x = c covers the 31 columns c-15..c+15, so two vertical lanes
that cross the whole canvas at a horizontal distance d <= 31 have IoU (31 - d) / (31 + d).
"""

import itertools
import json
import os

import numpy as np
import pytest

from data_pipelines.formats.lines_txt import write_lines_txt
from intrakd_jax.evaluation import llamas_lanes as ll

H, W = ll.IMAGE_HW


def vertical_lane(x, y0=-100, y1=900):
    """A two-point vertical lane crossing the whole canvas (no end caps inside the image)."""
    return np.array([[x, y0], [x, y1]], dtype=np.float64)


def band_mask(x):
    """Numpy reference of a 30-px cv2 line through column x across the canvas."""
    m = np.zeros((H, W), bool)
    m[:, max(x - 15, 0) : x + 16] = True
    return m


def band_iou(d):
    return (31 - abs(d)) / (31 + abs(d)) if abs(d) <= 31 else 0.0


def marker(sx, sy, ex, ey, z0=5.0, z1=6.0):
    return {
        "lane_marker_id": "m",
        "world_start": {"x": 0.0, "y": 1.5, "z": z0},
        "world_end": {"x": 0.0, "y": 1.5, "z": z1},
        "pixel_start": {"x": sx, "y": sy},
        "pixel_end": {"x": ex, "y": ey},
    }


def label(lanes):
    return {
        "projection_matrix": [[1000.0, 0.0, 638.0], [0.0, 1000.0, 358.0], [0.0, 0.0, 1.0]],
        "lanes": [{"lane_id": lid, "markers": ms} for lid, ms in lanes],
    }


# Lane on x = 1300 - y: markers (600,700)->(610,690) at z 5..6 and (620,680)->(630,670) at z 7..8.
# _extend_lane: nearest marker gradient dx/dy = -1, bottom x = 600 + 16 * -1 = 584 in [0, 1276],
# so a fake marker (584,716)->(600,700) is prepended. Every sampled and interpolated row then
# lies on x = 1300 - y for rows 670..716; rows above 670 stay -1.
DIAG_MARKERS = [marker(600, 700, 610, 690, 5, 6), marker(620, 680, 630, 670, 7, 8)]


def diag_expected():
    xs = [-1.0] * H
    for y in range(670, H):
        xs[y] = float(1300 - y)
    return xs


# ---------------------------------------------------------------------------------------------
# Ground truth: get_horizontal_values_for_four_lanes semantics.


def test_horizontal_values_extension_and_interpolation():
    lanes = ll.horizontal_values_for_four_lanes(label([("l0", DIAG_MARKERS)]))
    assert len(lanes) == 4 and all(len(x) == H for x in lanes)
    l1, l0, r0, r1 = lanes
    assert l0 == diag_expected()
    assert l1 == r0 == r1 == [-1.0] * H


def test_horizontal_values_rounding_and_averaging():
    # Markers in order a, b, c:
    # a (100,500)->(101,494): span 6, slope 1/6; rows 500-i get ir(100 + i/6) for i = 0..6:
    #   100, 100, 100, 100 (100.5 rounds half to even), 101, 101, 101; row 500 also gets the
    #   start x once more.
    # b (120,497)->(130,487): span 10, slope 1; rows 497-i get 120+i (row 497 twice).
    # c (50,560)->(70,540) at z=2 is the nearest marker: dx/dy = -1, bottom x = 50 - 156 < 0,
    #   so the fake marker starts at the left border, y = 560 + 50 = 610: (0,610)->(50,560),
    #   rows 610..560 get 610 - y; c itself gives rows 560..540 the x 50 + (560 - y).
    # Row 497 averages a's 100 with b's 120 twice; rows 501..539 are filled by the official
    # sequential interpolation from 100 (row 500) to 70 (row 540): 100 - 0.75 (y - 500).
    a = marker(100, 500, 101, 494, 10, 11)
    b = marker(120, 497, 130, 487, 12, 13)
    c = marker(50, 560, 70, 540, 2, 3)
    xs = ll.horizontal_values_for_four_lanes(label([("r0", [a, b, c])]))[2]
    assert xs[497] == (100 + 120 + 120) / 3  # 101 instead of 100 if .5 rounded up
    assert xs[496] == (101 + 121) / 2
    assert xs[500] == 100.0
    assert xs[494] == (101 + 123) / 2
    assert xs[487] == 130.0 and xs[486] == -1.0  # top of B, nothing above
    assert xs[610] == 0.0 and xs[611] == -1.0  # left-border fake marker, no extrapolation
    for y in range(540, 561):
        assert xs[y] == 50 + (560 - y)
    for y in range(561, 611):
        assert xs[y] == 610 - y
    for y in range(501, 540):
        assert xs[y] == pytest.approx(100 - 0.75 * (y - 500), abs=1e-9)


def test_horizontal_values_right_border_and_renaming(tmp_path):
    # Nearest marker (1250,650)->(1240,640): dx/dy = 1, bottom x = 1250 + 66 = 1316 > 1276, so
    # the fake marker starts at the right border, y = 650 + 26 * 1 = 676: (1276,676)->(1250,650);
    # every row 620..676 then lies on x = 600 + y.
    right = [marker(1250, 650, 1240, 640, 5, 6), marker(1230, 630, 1220, 620, 7, 8)]
    # Ids l0 and l2 become l0 and l1 (read_json renaming); "l3" would be dropped: one marker.
    raw = label([("l2", right), ("l0", DIAG_MARKERS), ("l3", [marker(5, 700, 6, 600)])])
    path = tmp_path / "rec" / "ts.json"
    path.parent.mkdir()
    path.write_text(json.dumps(raw))
    l1, l0, r0, r1 = ll.horizontal_values_for_four_lanes(path)
    assert l0 == diag_expected()
    assert l1[676] == 1276.0 and l1[677] == -1.0
    assert l1[650] == 1250.0 and l1[663] == 1263.0
    assert r0 == r1 == [-1.0] * H


def test_gt_lanes_rows_from_300_and_x_nonnegative():
    gt = ll.gt_lanes_from_json(label([("l0", DIAG_MARKERS)]))
    assert len(gt) == 1
    ys = np.arange(670, H)
    np.testing.assert_array_equal(gt[0], np.stack([1300.0 - ys, ys], axis=1))

    # Lanes leaving the image at the left border: marker (x0,250)->(x0+20,230) has dx/dy = -1,
    # so the fake marker starts at (0, 250 + x0). x0 = 40: last row 290, nothing at rows >= 300,
    # dropped; x0 = 50: only row 300 (x = 0), dropped; x0 = 51: rows 300 (x=1) and 301 (x=0).
    def left_lane(x0):
        return [marker(x0, 250, x0 + 20, 230, 5, 6), marker(x0 + 30, 230, x0 + 40, 220, 7, 8)]

    assert ll.gt_lanes_from_json(label([("l0", left_lane(40))])) == []
    assert ll.gt_lanes_from_json(label([("l0", left_lane(50))])) == []
    (kept,) = ll.gt_lanes_from_json(label([("l0", left_lane(51))]))
    assert kept.tolist() == [[1.0, 300.0], [0.0, 301.0]]
    # Left-border lane (fake marker at (0,610)): x = 610 - y >= 0 only down to row 610.
    c = [marker(50, 560, 70, 540, 2, 3), marker(80, 530, 90, 520, 4, 5)]
    (lane,) = ll.gt_lanes_from_json(label([("r1", c)]))
    assert lane[:, 1].min() == 520 and lane[:, 1].max() == 610
    assert np.all(lane[:, 0] >= 0)


def test_bad_label_row_raises():
    bad = [marker(600, 800, 610, 690, 5, 6), marker(620, 680, 630, 670, 7, 8)]
    with pytest.raises(ValueError, match="outside"):
        ll.horizontal_values_for_four_lanes(label([("l0", bad)]))


# ---------------------------------------------------------------------------------------------
# IoU, threshold, truncation, matching.


def test_iou_of_shifted_vertical_lanes_matches_hand_formula():
    gts = [vertical_lane(300)]
    preds = [vertical_lane(300 + d) for d in (0, 4, 10, 11, 31, 40)]
    ious = ll.lane_iou_matrix(preds, gts)
    expected = [band_iou(d) for d in (0, 4, 10, 11, 31, 40)]
    np.testing.assert_allclose(ious[:, 0], expected, rtol=0, atol=1e-15)
    assert ious[2, 0] == 21 / 41 and ious[3, 0] == 20 / 42


def test_threshold_is_strict_and_coordinates_truncate():
    # Predictions go through the spline, whose samples of x = 310 come out as 309.999...
    # for some points; x = 310.5 truncates to 310 whatever the last bit.
    gt = [vertical_lane(300)]
    # IoU 21/41 = 0.512 at d = 10: a TP at 0.5, not a TP when the threshold equals the IoU.
    assert ll.lane_f1_counts([vertical_lane(310.5)], gt) == (1, 0, 0)
    assert ll.lane_f1_counts([vertical_lane(310.5)], gt, iou_threshold=21 / 41) == (0, 1, 1)
    thr = np.nextafter(21 / 41, 0)
    assert ll.lane_f1_counts([vertical_lane(310.5)], gt, iou_threshold=thr) == (1, 0, 0)
    # x = 310.7 is truncated to 310 (IoU 21/41, TP); rounding to 311 would give 20/42 < 0.5.
    assert ll.lane_f1_counts([vertical_lane(310.7)], gt) == (1, 0, 0)
    assert ll.lane_f1_counts([vertical_lane(311.5)], gt) == (0, 1, 1)


def test_identical_lanes_give_f1_one():
    gt = ll.gt_lanes_from_json(label([("l0", DIAG_MARKERS)]))
    assert ll.lane_f1_counts([gt[0].copy()], gt) == (1, 0, 0)


def test_matching_maximises_total_iou():
    # GT A at x=100, B at x=108; pred P at 102, Q at 96. IoUs (band formula):
    #   P-A d=2 29/33=.879, P-B d=6 25/37=.676, Q-A d=4 27/35=.771, Q-B d=12 19/43=.442.
    # Greedy takes P-A then Q-B (.442 < .5): 1 TP. The maximum total (P-B + Q-A = 1.447 >
    # 1.321) has both above .5: 2 TP. (lane_f1_counts gets x + 0.5, see the truncation test.)
    gts = [vertical_lane(100), vertical_lane(108)]
    preds = [vertical_lane(102), vertical_lane(96)]
    ious = ll.lane_iou_matrix(preds, gts)
    ref = np.array(
        [
            [(band_mask(p) & band_mask(g)).sum() / (band_mask(p) | band_mask(g)).sum() for g in gx]
            for p, gx in [(102, (100, 108)), (96, (100, 108))]
        ]
    )
    np.testing.assert_allclose(ious, ref, rtol=0, atol=0)
    best = max(itertools.permutations(range(2)), key=lambda perm: ious[[0, 1], perm].sum())
    assert best == (1, 0)
    assert ll.lane_f1_counts([vertical_lane(102.5), vertical_lane(96.5)], gts) == (2, 0, 0)
    # One-to-one: two good predictions of one lane give one TP and one FP.
    pair = [vertical_lane(102.5), vertical_lane(98.5)]
    assert ll.lane_f1_counts(pair, [vertical_lane(100), vertical_lane(700)]) == (1, 1, 1)


def test_more_predictions_than_gt_and_vice_versa():
    gts = [vertical_lane(100), vertical_lane(400), vertical_lane(800)]
    preds = [vertical_lane(402.5), vertical_lane(1000.5)]
    # 402 matches 400 (d=2); 1000 matches nothing; 100 and 800 are missed.
    assert ll.lane_f1_counts(preds, gts) == (1, 1, 2)
    assert ll.lane_f1_counts(gts, preds) == (1, 2, 1)
    assert ll.lane_f1_counts([], gts) == (0, 0, 3)
    assert ll.lane_f1_counts(preds, []) == (0, 2, 0)


def test_lanes_outside_canvas_get_iou_zero_not_nan():
    # Both lanes lie left of the canvas: the official 0/0 is defined as 0 here.
    ious = ll.lane_iou_matrix([vertical_lane(-100)], [vertical_lane(-200)])
    assert ious.tolist() == [[0.0]]
    assert ll.lane_f1_counts([vertical_lane(-100)], [vertical_lane(-200)]) == (0, 1, 1)


# ---------------------------------------------------------------------------------------------
# Spline resampling of predictions.


def test_two_point_and_collinear_spline_are_uniform_in_arc_length():
    # A 2-point lane is a k=1 spline: 50 points evenly between the ends.
    out = ll.interpolate_lane(np.array([[10.0, 700.0], [60.0, 300.0]]))
    ref = np.stack([np.linspace(10, 60, 50), np.linspace(700, 300, 50)], axis=1)
    np.testing.assert_allclose(out, ref, atol=1e-9)
    # Unevenly spaced collinear points (k=3, chord-length parameter): still evenly spaced
    # samples along the segment, because the parameter is proportional to arc length.
    pts = np.array([[10.0, 700.0], [15.0, 660.0], [40.0, 460.0], [60.0, 300.0]])
    np.testing.assert_allclose(ll.interpolate_lane(pts), ref, atol=1e-6)


def test_spline_passes_through_points_and_drops_consecutive_duplicates():
    pts = np.array([[100.0, 700.0], [130.0, 600.0], [130.0, 600.0], [180.0, 450.0], [260, 320]])
    out = ll.interpolate_lane(pts)
    assert out.shape == (50, 2)
    np.testing.assert_allclose(out[0], pts[0], atol=1e-9)
    np.testing.assert_allclose(out[-1], pts[-1], atol=1e-9)
    np.testing.assert_allclose(out, ll.interpolate_lane(np.delete(pts, 2, axis=0)), atol=0)
    # Curved lane: the spline bends away from the straight chords (so differs from a polyline).
    dedup = np.delete(pts, 2, axis=0)
    chord_x = np.interp(out[:, 1], dedup[::-1, 1], dedup[::-1, 0])
    assert np.abs(out[:, 0] - chord_x).max() > 0.5
    # Only one distinct point left: a lane that covers nothing (counts as a false positive).
    single = ll.interpolate_lane(np.array([[5.0, 5.0], [5.0, 5.0]]))
    assert single.shape == (1, 2)
    dot = np.array([[300.0, 500.0], [300.0, 500.0]])
    assert ll.lane_f1_counts([dot], [vertical_lane(300)]) == (0, 1, 1)


# ---------------------------------------------------------------------------------------------
# Files: .lines.txt reading/writing and the directory evaluation.


def test_lines_txt_round_trip_and_format(tmp_path):
    path = tmp_path / "rec" / "a.lines.txt"
    lanes = [np.array([[10, 700], [20.5, 600], [1e-3, 500]]), np.array([[1.0, 2.0]]), []]
    write_lines_txt(path, lanes)  # the project's one .lines.txt writer; empty lanes skipped
    assert path.read_text() == "10 700 20.5 600 0.001 500 \n1 2 \n"
    back = ll.read_lines_txt(path)  # the 1-point lane is dropped by the LLAMAS loader rule
    assert len(back) == 1
    np.testing.assert_array_equal(back[0], lanes[0])


def test_read_lines_txt_blank_short_missing_and_bad(tmp_path):
    p = tmp_path / "x.lines.txt"
    p.write_text("\n1 2\n  \n3 4 5 6\r\n7 8 9 10")
    lanes = ll.read_lines_txt(p)  # blank and 1-point lines dropped (LLAMAS loader rule)
    assert [lane.tolist() for lane in lanes] == [[[3, 4], [5, 6]], [[7, 8], [9, 10]]]
    assert ll.read_lines_txt(tmp_path / "missing.lines.txt") == []
    with pytest.raises(FileNotFoundError):
        ll.read_lines_txt(tmp_path / "missing.lines.txt", missing_ok=False)
    p.write_text("1 2 3\n")
    with pytest.raises(ValueError, match="even number"):
        ll.read_lines_txt(p)
    p.write_text("1 2 a b\n")
    with pytest.raises(ValueError, match="x.lines.txt:1"):
        ll.read_lines_txt(p)


def _write_label(root, rec, ts, lanes):
    path = os.path.join(root, rec, ts + ".json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(label(lanes), f)
    return path


def test_evaluate_lane_f1_directory(tmp_path):
    labels = tmp_path / "labels" / "valid"
    preds = tmp_path / "pred"
    # Image 1: GT l0 on x = 1300 - y (rows 670..716). Predictions: the same lane (TP) and one
    # 200 px to the left (IoU 0: FP). -> TP 1, FP 1, FN 0.
    _write_label(labels, "rec_a", "100_1", [("l0", DIAG_MARKERS)])
    gt = ll.gt_lanes_from_json(label([("l0", DIAG_MARKERS)]))[0]
    write_lines_txt(preds / "rec_a" / "100_1.lines.txt", [gt, gt - [200, 0]])
    # Image 2: same GT, prediction file missing -> FN 1.
    _write_label(labels, "rec_a", "100_2", [("l0", DIAG_MARKERS)])
    # Image 3: no GT lane (only a lane with a single marker, filtered by read_json), one
    # predicted lane -> FP 1.
    _write_label(labels, "rec_b", "200_1", [("l0", [marker(5, 700, 6, 600)])])
    write_lines_txt(preds / "rec_b" / "200_1.lines.txt", [gt])
    # Image 4: empty prediction file -> FN 1.
    _write_label(labels, "rec_b", "200_2", [("l0", DIAG_MARKERS)])
    (preds / "rec_b" / "200_2.lines.txt").write_text("")

    res = ll.evaluate_lane_f1(labels, preds)
    assert (res["tp"], res["fp"], res["fn"], res["num_images"]) == (1, 2, 2, 4)
    assert res["precision"] == pytest.approx(1 / 3)
    assert res["recall"] == pytest.approx(1 / 3)
    assert res["f1"] == pytest.approx(1 / 3)
    # Same with an explicit list and two processes.
    paths = sorted(str(p) for p in labels.rglob("*.json"))
    assert ll.evaluate_lane_f1(paths, preds, workers=2) == res
    # Only image 2: no TP -> P = R = F1 = 0 (official LLAMAS convention).
    res2 = ll.evaluate_lane_f1([paths[1]], preds)
    assert res2 == {
        "tp": 0,
        "fp": 0,
        "fn": 1,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "num_images": 1,
    }
    with pytest.raises(FileNotFoundError):
        ll.evaluate_lane_f1([paths[1]], preds, missing_ok=False)
    with pytest.raises(FileNotFoundError, match="no .json"):
        ll.evaluate_lane_f1(tmp_path / "pred", preds)


def test_prediction_path_uses_last_two_components():
    assert ll.prediction_path("/p", "/x/labels/valid/rec_1/123_456.json") == os.path.join(
        "/p", "rec_1/123_456.lines.txt"
    )


# ---------------------------------------------------------------------------------------------
# Lane regression benchmark.


def test_lane_regression_writer_and_error(tmp_path):
    ref = [-1.0] * H
    for y in range(300, 400):
        ref[y] = 100.0
    det_full = [0.0] * H
    det_full[300:400] = [103.0] * 100  # |error| 3 on the 100 referenced rows
    assert ll.lane_regression_error(ref, det_full) == 3.0
    det_short = [float("nan")] * (H - 300)
    det_short[:100] = [99.0] * 100
    assert ll.lane_regression_error(ref, det_short) == 1.0
    with pytest.raises(ValueError, match="nan"):
        ll.lane_regression_error(ref, [float("nan")] * H)

    path = tmp_path / "sub" / "reg.json"
    lanes = {k: det_full for k in ll.LANE_IDS}
    assert ll.write_lane_regression_json(path, {"rec/1_2": lanes, "rec/1_3.json": lanes}) == 2
    data = json.loads(path.read_text())
    assert sorted(data) == ["rec/1_2.json", "rec/1_3.json"]
    assert data["rec/1_2.json"]["r1"] == det_full
    with pytest.raises(ValueError, match="lacks lane"):
        ll.write_lane_regression_json(path, {"rec/1": {"l1": det_full}})
    with pytest.raises(ValueError, match="values"):
        ll.write_lane_regression_json(path, {"rec/1": {k: [1.0] * 10 for k in ll.LANE_IDS}})
