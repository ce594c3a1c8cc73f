"""Exact CULane evaluator: every rule of the official C++ tool pinned by an independent reference.

References used here (all independent of the code under test): the official C++ spline written out
scalar by scalar with math.pow; the official drawing loop (one cv2.line per segment on a full
canvas); pixel counts of vertical lanes derived by hand; brute-force assignment over permutations.
"""

import itertools
import math
import os

import cv2
import numpy as np
import pytest

from intrakd_jax.evaluation import culane, culane_lanes, culane_raster

W, H = 1640, 590


# ---------------------------------------------------------------------------------------------
# Independent references.


def ref_spline(points, times=50):
    """Spline::splineInterpTimes written out as the C++ code does it (float32 diffs, math.pow)."""
    p = [(np.float32(x), np.float32(y)) for x, y in points]
    n = len(p)

    def diff(i, k):  # float32 subtraction as on cv::Point2f, then promoted to double
        return float(np.float32(p[i + 1][k] - p[i][k]))

    h = [math.sqrt(math.pow(diff(i, 0), 2) + math.pow(diff(i, 1), 2)) for i in range(n - 1)]
    a = [h[i] for i in range(n - 2)]
    b = [2 * (h[i] + h[i + 1]) for i in range(n - 2)]
    c = [h[i + 1] for i in range(n - 2)]
    d = [
        [6 * (diff(i + 1, k) / h[i + 1] - diff(i, k) / h[i]) for i in range(n - 2)] for k in (0, 1)
    ]
    c[0] = c[0] / b[0]
    for k in (0, 1):
        d[k][0] = d[k][0] / b[0]
    for i in range(1, n - 2):
        tmp = b[i] - a[i] * c[i - 1]
        c[i] = c[i] / tmp
        for k in (0, 1):
            d[k][i] = (d[k][i] - a[i] * d[k][i - 1]) / tmp
    m = [[0.0] * n for _ in (0, 1)]
    for k in (0, 1):
        m[k][n - 2] = d[k][n - 3]
        for i in range(n - 4, -1, -1):
            m[k][i + 1] = d[k][i] - c[i] * m[k][i + 2]
        m[k][0] = m[k][n - 1] = 0.0
    out = []
    for i in range(n - 1):
        coef = []
        for k in (0, 1):
            bk = diff(i, k) / h[i] - (2 * h[i] * m[k][i] + h[i] * m[k][i + 1]) / 6
            dk = (m[k][i + 1] - m[k][i]) / (6 * h[i])
            coef.append((float(p[i][k]), bk, m[k][i] / 2, dk))
        delta = h[i] / times
        for j in range(times):
            t = delta * j
            out.append(
                [
                    np.float32(a0 + b1 * t + c2 * math.pow(t, 2) + d3 * math.pow(t, 3))
                    for a0, b1, c2, d3 in coef
                ]
            )
    out.append([p[-1][0], p[-1][1]])
    return np.array(out, np.float32)


def ref_mask(points, width=30):
    """The official get_lane_similarity drawing: one cv::line per segment on a zero canvas."""
    pts = np.asarray(points, np.float32)
    if len(pts) > 2:
        pts = ref_spline(pts)
    ints = np.rint(pts).astype(np.int64)  # cvRound: round half to even (values in range here)
    canvas = np.zeros((H, W), np.uint8)
    for (x0, y0), (x1, y1) in zip(ints[:-1], ints[1:], strict=True):
        cv2.line(canvas, (int(x0), int(y0)), (int(x1), int(y1)), 1, width)
    return canvas


def brute_force_max(sim):
    sim = np.asarray(sim)
    m, n = sim.shape
    if m <= n:
        return max(
            sum(sim[i, j] for i, j in enumerate(perm))
            for perm in itertools.permutations(range(n), m)
        )
    return brute_force_max(sim.T)


def vertical(x, y0=-100, y1=700):
    """A two-point vertical lane crossing the whole image: its caps lie outside."""
    return np.array([[x, y0], [x, y1]], np.float32)


def curvy_lane(x_bottom, bend, top=300):
    ys = np.arange(H, top, -10, dtype=np.float64)
    frac = (H - ys) / (H - 250)
    xs = x_bottom + (820 - x_bottom) * frac + bend * frac**2
    return np.stack([xs, ys], axis=1)


def fmt(lane):
    return " ".join(f"{x:.3f} {y:.3f}" for x, y in lane)


def make_corpus(root, images):
    """images: {name: (gt_text or None, pred_text or None)}; None means the file is missing."""
    anno, detect = root / "anno", root / "detect"
    anno.mkdir()
    detect.mkdir()
    for name, (gt, pred) in images.items():
        for folder, text in ((anno, gt), (detect, pred)):
            if text is None:
                continue
            path = folder / (name + ".lines.txt")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode() if isinstance(text, str) else text)
    listing = root / "list.txt"
    listing.write_text("".join(f"/{name}.jpg\n" for name in images))
    return anno, detect, listing


# ---------------------------------------------------------------------------------------------
# IoU by hand.


def test_vertical_lane_pixels_and_shift_iou_by_hand():
    # Thickness 30 gives half-width 15: 31 columns over all 590 rows (caps outside the image).
    rast = culane_raster.LaneRasterizer(30)
    for d in (0, 1, 5, 12, 30, 31, 40):
        sim = culane.iou_matrix([vertical(400)], [vertical(400 + d)], rast)
        inter = max(31 - d, 0) * H
        assert sim[0, 0] == inter / (2 * 31 * H - inter)
    lanes = rast.rasterize(*culane_lanes.lane_polylines([vertical(400)]))
    assert lanes.area[0] == 31 * H
    assert lanes.lo[0, 0] == 385 and lanes.hi[0, 0] == 415


def test_iou_exactly_at_threshold_is_not_a_tp(tmp_path):
    # Thickness 2 draws 3 columns; a 1 px shift shares 2 of 4: IoU = 0.5 exactly.
    assert culane.evaluate_lanes([vertical(100)], [vertical(101)], width=2) == (0, 1, 1)
    assert culane.evaluate_lanes([vertical(100)], [vertical(101)], width=2, iou_threshold=0.49) == (
        1,
        0,
        0,
    )
    # Width 30, shift 5: IoU = 26/36; a threshold equal to it is not passed, one just below is.
    t = 26 / 36
    assert culane.evaluate_lanes([vertical(100)], [vertical(105)], iou_threshold=t) == (0, 1, 1)
    below = np.nextafter(t, 0)
    assert culane.evaluate_lanes([vertical(100)], [vertical(105)], iou_threshold=below) == (1, 0, 0)


def test_identical_lanes_give_f1_one(tmp_path):
    lanes = [curvy_lane(x, bend) for x, bend in ((-200, 40), (500, -30), (1100, 10), (1900, -60))]
    text = "\n".join(fmt(lane) for lane in lanes) + "\n"
    anno, detect, listing = make_corpus(
        tmp_path, {"d/a.MP4/00000": (text, text), "d/a.MP4/00001": (text, text)}
    )
    res = culane.evaluate(anno, detect, listing, workers=1)
    assert (res["tp"], res["fp"], res["fn"]) == (8, 0, 0)
    assert res["precision"] == res["recall"] == res["f1"] == 1.0


def test_two_point_lanes_are_one_segment_and_longer_lanes_are_splined():
    two = np.array([[300.25, 580.0], [700.75, 260.0]], np.float32)
    poly = culane_lanes.lane_polyline(two)
    assert poly.tolist() == [[300, 580], [701, 260]]  # cvRound: 300.25 -> 300, 700.75 -> 701
    three = np.array([[300.0, 580.0], [420.0, 420.0], [700.0, 260.0]], np.float32)
    np.testing.assert_array_equal(culane_lanes.spline_points(three), ref_spline(three))
    assert len(culane_lanes.lane_polyline(three)) == 2 * 50 + 1
    # Collinear points: the spline is the straight line, so the masks coincide.
    sim = culane.iou_matrix(
        [vertical(800)],
        [np.array([[800, -100], [800, 300], [800, 700]], np.float32)],
        culane_raster.LaneRasterizer(30),
    )
    assert sim[0, 0] == 1.0
    # A curved 3-point lane is not its 2-point chord.
    sim = culane.iou_matrix([three], [three[[0, 2]]], culane_raster.LaneRasterizer(30))
    assert 0.0 < sim[0, 0] < 0.9


def test_spline_matches_scalar_reference_and_natural_cubic_spline():
    from scipy.interpolate import CubicSpline

    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(3, 30))
        ys = np.sort(rng.uniform(-50, 650, n))[::-1]
        lane = np.stack([rng.uniform(0, W) + np.cumsum(rng.normal(0, 25, n)), ys], 1).astype(
            np.float32
        )
        got = culane_lanes.spline_points(lane)
        np.testing.assert_array_equal(got, ref_spline(lane))
        # The same curve from scipy: natural cubic spline over cumulative chord length.
        chord = np.concatenate(
            [[0], np.cumsum(np.hypot(*np.diff(lane.astype(np.float64), axis=0).T))]
        )
        spline = CubicSpline(chord, lane.astype(np.float64), bc_type="natural")
        t = (chord[:-1, None] + np.diff(chord)[:, None] * np.arange(50)[None] / 50).reshape(-1)
        np.testing.assert_allclose(got[:-1], spline(t), atol=1e-3)


def test_rasterizer_equals_official_drawing_loop():
    rng = np.random.default_rng(1)
    lanes = []
    for k in range(90):
        n = int(rng.integers(2, 35))
        kind = k % 6
        if kind == 0:  # CULane-like, often leaving the image sideways and at the bottom
            lane = curvy_lane(
                rng.uniform(-500, W + 500), rng.normal(0, 80), top=int(rng.integers(250, 400))
            )
        elif kind == 1:  # noisy dense points
            ys = np.sort(rng.uniform(-50, 650, n))[::-1]
            lane = np.stack([rng.uniform(0, W) + np.cumsum(rng.normal(0, 20, n)), ys], 1)
        elif kind == 2:  # arcs and U-turns (rows with two spans)
            t = np.linspace(0, np.pi * rng.uniform(0.5, 2), n)
            lane = np.stack(
                [820 + rng.uniform(50, 600) * np.cos(t), 300 + rng.uniform(20, 250) * np.sin(t)], 1
            )
        elif kind == 3:  # prob2lines-style integer lanes, 20 px apart, shallow ones included
            ys = np.arange(589, 589 - 20 * n, -20.0)
            x0, x1 = rng.uniform(-600, W + 600, 2)
            lane = np.stack([np.round(x0 + (x1 - x0) * np.arange(n) / max(n - 1, 1)), ys], 1)
        elif kind == 4:  # along a border
            ys = np.arange(589, 589 - 10 * n, -10.0)
            lane = np.stack(
                [rng.choice([2.0, 1637.0, -15.0, 1655.0]) + np.cumsum(rng.normal(0, 4, n)), ys], 1
            )
        else:  # two-point lanes anywhere
            lane = rng.uniform([-200, -100], [W + 200, H + 100], (2, 2))
        lanes.append(np.asarray(lane, np.float32))
    for width in (30, 16, 2):
        rast = culane_raster.LaneRasterizer(width)
        drawn = rast.rasterize(*culane_lanes.lane_polylines(lanes))
        for i, lane in enumerate(lanes):
            ref = ref_mask(lane, width)
            assert drawn.area[i] == ref.sum(), (width, i)
            np.testing.assert_array_equal(drawn.mask(i).to_image(W, H), ref, err_msg=f"{width} {i}")
        assert not rast._canvas.any()


# ---------------------------------------------------------------------------------------------
# Reading files like the C++ tool.


def test_parser_follows_cxx_stream_extraction():
    def pts(line):
        return culane_lanes.parse_lane_line(line).tolist()

    assert pts("1 2 3 4") == [[1, 2], [3, 4]]
    assert pts("1 2 3") == [[1, 2]]  # an x without its y is dropped
    assert pts(" \t1.5\t2e1 \r") == [[1.5, 20]]
    assert pts("-5-3") == [[-5, -3]]  # two numbers without a space
    assert pts("1.5.25 7") == [[1.5, 0.25]]  # '1.5' then '.25'; 7 has no partner
    assert pts("5 12abc 7 8") == [[5, 12]]  # 'abc' stops the line
    assert pts("12abc 5") == []
    assert pts("1 2 1e400 3") == [[1, 2]]  # overflow fails the extraction
    assert pts("1 2 nan 3") == [[1, 2]]  # C++ does not read nan/inf
    assert pts("1e 2") == []
    assert pts("") == [] and pts("   ") == []
    assert culane_lanes.parse_lane_line("0.1 0.2").dtype == np.float32


def test_blank_lines_are_lanes_and_file_endings(tmp_path):
    a, b = fmt(curvy_lane(300, 20)), fmt(curvy_lane(1300, -20))
    anno, detect, listing = make_corpus(
        tmp_path,
        {
            "d/v.MP4/00000": (f"{a}\n\n{b}\n", f"{a}\n{b}\n"),  # blank GT line: one more GT lane
            "d/v.MP4/00001": (
                f"{a}\r\n{b}",
                f"{a}\r\n   \r\n{b}",
            ),  # CRLF, no final newline, spaces
        },
    )
    assert len(culane_lanes.read_lane_file(anno / "d/v.MP4/00000.lines.txt")) == 3
    assert len(culane_lanes.read_lane_file(detect / "d/v.MP4/00001.lines.txt")) == 3
    res = culane.evaluate(anno, detect, listing, workers=1)
    assert (res["tp"], res["fp"], res["fn"]) == (4, 1, 1)


def test_missing_and_empty_files(tmp_path):
    a, b = fmt(curvy_lane(300, 20)), fmt(curvy_lane(1300, -20))
    two = f"{a}\n{b}\n"
    anno, detect, listing = make_corpus(
        tmp_path,
        {
            "d/m.MP4/00000": (two, None),  # missing prediction: 2 FN
            "d/m.MP4/00001": (two, ""),  # empty prediction: 2 FN
            "d/m.MP4/00002": (None, two),  # missing GT: 2 FP
            "d/m.MP4/00003": ("", f"{a}\n"),  # empty GT (a 'cross' image): 1 FP
        },
    )
    res = culane.evaluate(anno, detect, listing, workers=1)
    assert (res["tp"], res["fp"], res["fn"]) == (0, 3, 4)
    assert (res["images"], res["missing_anno"], res["missing_detect"]) == (4, 1, 1)


def test_short_lanes_count_but_never_match():
    lane = curvy_lane(600, 0)
    one_point = lane[:1]
    # A 1-point GT and a 1-point prediction at the same place: IoU 0 by rule, FP and FN.
    assert culane.evaluate_lanes([one_point], [one_point]) == (0, 1, 1)
    assert culane.evaluate_lanes([lane, one_point], [lane]) == (1, 0, 1)
    assert culane.evaluate_lanes([lane], [lane, np.zeros((0, 2))]) == (1, 1, 0)


def test_undefined_corners_follow_documented_rules():
    # Consecutive duplicates of a >2-point lane are dropped (NaN in the C++ tool).
    dup = np.array([[500, 580], [500, 580], [650, 300]], np.float32)
    np.testing.assert_array_equal(
        culane_lanes.lane_polyline(dup), culane_lanes.lane_polyline(dup[1:])
    )
    # Lanes that both draw nothing inside the image: IoU 0, not NaN.
    outside = np.array([[-500, 100], [-400, 300]], np.float32)
    assert culane.iou_matrix([outside], [outside], culane_raster.LaneRasterizer(30))[0, 0] == 0.0
    # A two-point lane of one repeated point is the round cap cv::line(p, p) draws.
    dot = culane_raster.LaneRasterizer(30).draw(np.array([[800, 300], [800, 300]]))
    ref = np.zeros((H, W), np.uint8)
    cv2.line(ref, (800, 300), (800, 300), 1, 30)
    np.testing.assert_array_equal(dot.to_image(W, H), ref)


# ---------------------------------------------------------------------------------------------
# Matching.


def test_matching_takes_maximum_total_iou_not_greedy():
    # Widths 31 px, IoU(d) = (31 - d) / (31 + d): GT0-P0 29/33 is the single best pair, but the
    # maximum total pairs GT0-P1 (23/39) with GT1-P0 (24/38): two TPs instead of one.
    gt = [vertical(500), vertical(509)]
    pred = [vertical(502), vertical(492)]
    sim = culane.iou_matrix(gt, pred, culane_raster.LaneRasterizer(30))
    np.testing.assert_array_equal(sim, [[29 / 33, 23 / 39], [24 / 38, 14 / 48]])
    assert culane.official_match(sim.tolist()) == [1, 0]
    assert culane.evaluate_lanes(gt, pred) == (2, 0, 0)
    # More GT than predictions: the official code transposes the matrix.
    assert culane.evaluate_lanes(gt + [vertical(1500)], pred) == (2, 0, 1)


def test_official_matching_reaches_the_maximum_when_it_is_clear():
    rng = np.random.default_rng(3)
    for _ in range(150):
        m, n = (int(v) for v in rng.integers(1, 5, 2))
        sim = np.round(rng.uniform(0, 1, (m, n)), 3)
        match = culane.official_match(sim.tolist())
        assert len(match) == m
        cols = [j for j in match if j >= 0]
        assert len(cols) == len(set(cols)) == min(m, n)
        totals = sorted(
            {round(sum(sim[i, j] for i, j in zip(rows, perm, strict=True)), 9)
             for rows in itertools.permutations(range(m), min(m, n))
             for perm in itertools.permutations(range(n), min(m, n))}
        )  # fmt: skip
        got = sum(sim[i, j] for i, j in enumerate(match) if j >= 0)
        if len(totals) == 1 or totals[-1] - totals[-2] > 0.01 * min(m, n):
            assert got == pytest.approx(brute_force_max(sim))


def test_official_matching_keeps_its_equality_slack():
    # pipartiteGraph treats |lw + rw - w| < 0.01 as an equality edge: with one GT row and
    # predictions of IoU 0.499 and 0.505 it takes the first, so the official tool finds no TP.
    assert culane.official_match([[0.499, 0.505]]) == [0]
    assert culane.official_match([[0.505, 0.499]]) == [0]
    assert culane.official_match([[0.40, 0.505]]) == [1]


# ---------------------------------------------------------------------------------------------
# Scores, output files, command line, categories, processes.


def test_scores_follow_official_formulas():
    res = culane.scores(3, 1, 2)
    assert (res["precision"], res["recall"]) == (0.75, 0.6)
    assert res["f1"] == 2 * 0.75 * 0.6 / (0.75 + 0.6)
    assert culane.scores(0, 0, 5)["precision"] == -1.0  # no detections
    assert culane.scores(0, 3, 0)["recall"] == -1.0  # no ground truth
    assert math.isnan(culane.scores(0, 3, 5)["f1"])
    text = culane.format_official_output(culane.scores(0, 3, 5), "out.txt")
    assert text == "file: out.txt\ntp: 0 fp: 3 fn: 5\nprecision: 0\nrecall: 0\nFmeasure: -nan\n\n"
    text = culane.format_official_output(culane.scores(2, 1, 1), "o")
    third = "0.666667"  # 2/3 with 6 significant digits, as std::ostream prints it
    assert (
        text
        == f"file: o\ntp: 2 fp: 1 fn: 1\nprecision: {third}\nrecall: {third}\nFmeasure: {third}\n\n"
    )


def _small_split(tmp_path):
    a, b = fmt(curvy_lane(300, 20)), fmt(curvy_lane(1300, -20))
    images = {
        f"drv/c.MP4/{k:05d}": (f"{a}\n{b}\n" if k % 4 else "", f"{a}\n" if k % 3 else f"{b}\n{a}\n")
        for k in range(18)
    }
    anno, detect, listing = make_corpus(tmp_path, images)
    split = tmp_path / "test_split"
    split.mkdir()
    names = list(images)
    for k, cat in enumerate(culane.CATEGORIES):
        (split / f"test{k}_{cat}.txt").write_text(
            "".join(f"{n}.jpg\n" for n in names[2 * k : 2 * k + 2])
        )
    return anno, detect, listing, split


def test_cli_writes_official_output_file(tmp_path, capsys):
    anno, detect, listing, _ = _small_split(tmp_path)
    out = str(tmp_path / "res" / "out.txt")
    args = ["-a", f"{anno}/", "-d", f"{detect}/", "-i", "x", "-l", str(listing)]
    args += ["-w", "30", "-t", "0.5", "-c", "1640", "-r", "590", "-f", "1", "-o", out, "-j", "1"]
    rc = culane.main(args)
    assert rc == 0
    res = culane.evaluate(anno, detect, listing, workers=1)
    with open(out) as handle:
        assert handle.read() == culane.format_official_output(res, out)
    assert f"tp: {res['tp']} fp: {res['fp']} fn: {res['fn']}" in capsys.readouterr().out


def test_categories_table_and_totals(tmp_path, capsys):
    anno, detect, listing, split = _small_split(tmp_path)
    results = culane.evaluate_categories(anno, detect, split, workers=1)
    whole = culane.evaluate(anno, detect, listing, workers=1)
    assert [results["total"][k] for k in ("tp", "fp", "fn")] == [
        whole[k] for k in ("tp", "fp", "fn")
    ]
    assert sum(results[c]["images"] for c in culane.CATEGORIES) == 18
    out_dir = str(tmp_path / "outs")
    rc = culane.main(
        ["-a", str(anno), "-d", str(detect), "--categories", str(split), "-o", out_dir]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert f"| cross | 2 | FP {results['cross']['fp']} |" in table
    assert f"| total | 18 | {100 * results['total']['f1']:.2f} |" in table
    assert "images/s" in table
    assert sorted(os.listdir(tmp_path / "outs"))[0] == "out0_normal.txt"


def test_processes_give_the_same_counts(tmp_path):
    rng = np.random.default_rng(7)
    images = {}
    for k in range(140):  # more than two chunks of 64 images
        gt = [
            curvy_lane(rng.uniform(-300, 1900), rng.normal(0, 50))
            for _ in range(int(rng.integers(0, 4)))
        ]
        pred = [lane + rng.normal(0, 6, lane.shape) for lane in gt if rng.random() < 0.8]
        images[f"p/q.MP4/{k:05d}"] = (
            "".join(fmt(g) + "\n" for g in gt),
            "".join(fmt(p) + "\n" for p in pred),
        )
    anno, detect, listing = make_corpus(tmp_path, images)
    serial = culane.evaluate(anno, detect, listing, workers=1)
    parallel = culane.evaluate(anno, detect, listing, workers=2)
    assert [serial[k] for k in ("tp", "fp", "fn")] == [parallel[k] for k in ("tp", "fp", "fn")]
    assert serial["tp"] > 0


def test_bad_arguments_are_reported(tmp_path):
    anno, detect, listing = make_corpus(tmp_path, {"a/b.MP4/00000": ("", "")})
    with pytest.raises(FileNotFoundError, match="list file"):
        culane.evaluate(anno, detect, tmp_path / "nope.txt")
    with pytest.raises(NotADirectoryError, match="detect_dir"):
        culane.evaluate(anno, tmp_path / "missing", listing)
    with pytest.raises(ValueError, match="width"):
        culane.evaluate(anno, detect, listing, width=0)
    assert culane.main(["-a", str(anno), "-d", str(detect)]) == 2
