"""prob2lines: the official MATLAB algorithm on hand-built score maps, and the .lines.txt writer."""

import math
from fractions import Fraction

import numpy as np
import pytest

from data_pipelines.formats.lines_txt import format_lines, lines_txt_path, write_lines_txt
from intrakd_jax.evaluation import culane, culane_lanes
from intrakd_jax.evaluation.prob2lines import average_score_maps, prob2lines, sample_rows

MAP_H, MAP_W = 208, 976


def matlab_round(q: Fraction) -> int:
    """uint16() of a non-negative value: halves away from zero (exact rational arithmetic)."""
    return math.floor(q + Fraction(1, 2))


def expected_x(col0: int) -> int:
    """x written by main.m for a 0-based arg-max column: uint16(id*1640/976) - 1, id 1-based."""
    return matlab_round(Fraction((col0 + 1) * 1640, 976)) - 1


def test_sample_rows_match_getlane():
    map_rows, image_rows = sample_rows(MAP_H)
    want = [matlab_round(208 - Fraction((i - 1) * 20, 350) * 208) - 1 for i in range(1, 19)]
    assert map_rows.tolist() == want
    assert want[0] == 207 and want[-1] == 5  # 208 and uint16(5.94) = 6, 1-based
    assert image_rows.tolist() == [589 - 20 * i for i in range(18)]
    with pytest.raises(ValueError, match="outside"):
        sample_rows(MAP_H, num_points=40)


def test_prob2lines_on_hand_built_maps():
    rows, ys = sample_rows(MAP_H)
    maps = np.zeros((4, MAP_H, MAP_W), np.uint8)
    cols = [60, 0, 975, 487, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312, 313]
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        maps[0, r, c] = 77 if i != 5 else 76  # 77/255 > 0.3 >= 76/255: row 5 is not a point
    maps[0, rows[6], 100] = maps[0, rows[6], 200] = 90  # a tie: the first column wins
    maps[1] = 200  # strong map but the lane does not exist
    maps[2, rows[3], 400] = 255  # a single valid point: the lane is dropped
    maps[3, rows[:4], 700] = 128
    lanes = prob2lines(maps, [0.9, 0.2, 0.7, 0.5])
    cols[6] = 100
    want = [
        (expected_x(c), int(y)) for i, (c, y) in enumerate(zip(cols, ys, strict=True)) if i != 5
    ]
    assert lanes[0].tolist() == [list(p) for p in want]
    assert want[0] == (102, 589)  # id 61: 61*1640/976 = 102.5 exactly, MATLAB rounds up to 103
    assert want[1] == (1, 569) and want[2] == (1639, 549) and want[3] == (819, 529)
    assert [len(lane) for lane in lanes[1:]] == [0, 0, 0]  # absent, one point, exist 0.5 not > 0.5
    lanes = prob2lines(maps, [False, False, False, True])
    assert lanes[3].tolist() == [[expected_x(700), int(y)] for y in ys[:4]]


def test_prob2lines_float_probabilities_and_errors():
    rows, ys = sample_rows(MAP_H)
    probs = np.zeros((1, MAP_H, MAP_W), np.float32)
    probs[0, rows[0], 10] = 0.31
    probs[0, rows[1], 20] = 0.29  # not > 0.3
    probs[0, rows[2], 30] = 0.9
    assert prob2lines(probs, [1.0])[0].tolist() == [[expected_x(10), 589], [expected_x(30), 549]]
    with pytest.raises(ValueError, match="num_lanes, H, W"):
        prob2lines(probs[0], [1.0])
    with pytest.raises(ValueError, match="exist"):
        prob2lines(probs, [1.0, 1.0])


def test_average_score_maps_truncate_then_box_blur():
    probs = np.full((2, 40, 50), 0.5, np.float32)
    probs[1] = 0.0
    probs[1, 20, 25] = 1.0
    scores = average_score_maps(probs)
    assert scores.dtype == np.uint8
    assert np.all(scores[0] == 127)  # trunc(127.5)
    # One 255 pixel spread over a 9x9 box: 255/81 = 3.15 -> 3 on the box, 0 elsewhere.
    assert np.all(scores[1, 16:25, 21:30] == 3)
    assert scores[1].sum() == 3 * 81


def test_writer_format_and_round_trip(tmp_path):
    lanes = [
        np.array([[102, 589], [1, 569]]),
        np.zeros((0, 2)),
        np.array([[10.5, 300.25], [11.0, 290.0]]),
    ]
    assert format_lines(lanes) == "102 589 1 569 \n10.5 300.25 11 290 \n"
    assert format_lines([]) == ""
    path = lines_txt_path(tmp_path / "pred", "/driver_37_30frame/05181432_0203.MP4/00000.jpg")
    assert path == str(tmp_path / "pred" / "driver_37_30frame/05181432_0203.MP4/00000.lines.txt")
    write_lines_txt(path, lanes)
    back = culane_lanes.read_lane_file(path)
    assert len(back) == 2  # the empty lane is not written (a blank line would be an FP lane)
    np.testing.assert_array_equal(back[1], np.float32(lanes[2]))
    with pytest.raises(ValueError, match="finite"):
        format_lines([np.array([[np.nan, 1.0]])])
    with pytest.raises(ValueError, match="lane 0"):
        format_lines([np.zeros((3, 3))])


def test_written_predictions_evaluate_to_f1_one(tmp_path):
    rows, _ = sample_rows(MAP_H)
    maps = np.zeros((4, MAP_H, MAP_W), np.uint8)
    for slot, start in enumerate((100, 350, 600, 850)):
        for i, r in enumerate(rows):
            maps[slot, r, start + 4 * i * (1 if slot > 1 else -1)] = 200
    lanes = prob2lines(maps, [1, 1, 1, 1])
    name = "driver_x/a.MP4/00000.jpg"
    write_lines_txt(lines_txt_path(tmp_path / "gt", name), lanes)
    write_lines_txt(lines_txt_path(tmp_path / "pred", name), lanes)
    (tmp_path / "list.txt").write_text(name + "\n")
    res = culane.evaluate(tmp_path / "gt", tmp_path / "pred", tmp_path / "list.txt", workers=1)
    assert (res["tp"], res["fp"], res["fn"], res["f1"]) == (4, 0, 0, 1.0)
