"""LLAMAS label reading (official read_json cleaning) and rendering (official 0.1 m quads)."""

import json
import os

import cv2
import numpy as np
import pytest

from data_pipelines.errors import DatasetLayoutError, LabelFormatError
from data_pipelines.formats import llamas
from data_pipelines.llamas import list_samples

# A camera with round numbers so marker corners can be worked out by hand:
# u = 100 x / z + 50, v = 100 y / z + 10, half width = 100 * 0.1 / z / 2 = 5 / z.
P = [[100.0, 0.0, 50.0], [0.0, 100.0, 10.0], [0.0, 0.0, 1.0]]
HW = (100, 100)


def marker(ps_y, pe_y=None, ps_x=10, pe_x=12, ws=(0.0, 0.8, 1.0), we=(0.0, 0.8, 2.0)):
    return {
        "lane_marker_id": "m",
        "world_start": dict(zip("xyz", ws, strict=True)),
        "world_end": dict(zip("xyz", we, strict=True)),
        "pixel_start": {"x": ps_x, "y": ps_y},
        "pixel_end": {"x": pe_x, "y": ps_y - 5 if pe_y is None else pe_y},
    }


def lane(lane_id, ys, **kw):
    return {"lane_id": lane_id, "markers": [marker(y, **kw) for y in ys]}


def write(tmp_path, doc, name="label.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


# ----------------------------------------------------------------------------------------------
# read_json


def test_span_filter_and_renumbering(tmp_path):
    doc = {
        "projection_matrix": P,
        "lanes": [
            lane("l3", [300, 330]),
            lane("l2", [300, 320]),  # span exactly 20: kept
            lane("l1", [300, 319]),  # span 19: dropped before renumbering
            lane("l0", [400, 300, 350]),
            lane("r0", [500, 450]),
            lane("r2", [600, 560]),
        ],
    }
    out = llamas.read_json(write(tmp_path, doc))
    # Remaining ['l3','l2','l0','r0','r2'] become ['l2','l1','l0','r0','r1'] (official example).
    assert [ln["lane_id"] for ln in out["lanes"]] == ["l2", "l1", "l0", "r0", "r1"]
    assert [len(ln["markers"]) for ln in out["lanes"]] == [2, 2, 3, 2, 2]


def test_one_marker_lane_filtered_by_marker_count(tmp_path):
    doc = {
        "projection_matrix": P,
        "lanes": [lane("l0", [300]), lane("l1", [300, 340]), lane("r0", [300, 301])],
    }
    path = write(tmp_path, doc)
    # With the default height filter the single marker (span 0) already goes in step 1 ...
    assert [ln["lane_id"] for ln in llamas.read_json(path)["lanes"]] == ["l0"]
    # ... with min_lane_height=0 it survives step 1 and step 2 (< 2 markers) drops it.
    ids = [ln["lane_id"] for ln in llamas.read_json(path, min_lane_height=0)["lanes"]]
    assert ids == ["l0", "r0"]  # l1 -> l0 after renumbering


def test_numeric_strings_and_casts(tmp_path):
    m = marker(300)
    m["pixel_start"] = {"x": "12", "y": "300"}
    m["pixel_end"] = {"x": 13.9, "y": 280.2}  # numbers truncate like int()
    m["world_start"] = {"x": "1.5", "y": "-0.25", "z": "7"}
    doc = {
        "projection_matrix": [["100", 0, 50], [0, 100, "10"], [0, 0, 1]],
        "lanes": [{"lane_id": "l0", "markers": [m, marker(250)]}],
    }
    out = llamas.read_json(write(tmp_path, doc))
    got = out["lanes"][0]["markers"][0]
    assert got["pixel_start"] == {"x": 12, "y": 300}
    assert got["pixel_end"] == {"x": 13, "y": 280}
    assert got["world_start"] == {"x": 1.5, "y": -0.25, "z": 7.0}
    assert all(type(v) is int for v in got["pixel_start"].values())
    assert all(type(v) is float for v in got["world_start"].values())
    assert out["projection_matrix"][0][0] == 100.0 and out["projection_matrix"][1][2] == 10.0
    assert got["lane_marker_id"] == "m"  # other keys survive


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["lanes"][0]["markers"][1]["pixel_start"].update(y="300.5"),
         "lanes[0].markers[1].pixel_start.y"),
        (lambda d: d["lanes"][0]["markers"][0]["pixel_end"].update(x=True),
         "lanes[0].markers[0].pixel_end.x"),
        (lambda d: d["lanes"][0]["markers"][0]["world_end"].update(z="far"),
         "lanes[0].markers[0].world_end.z"),
        (lambda d: d.pop("lanes"), "lanes"),
        (lambda d: d.pop("projection_matrix"), "projection_matrix"),
        (lambda d: d["lanes"][0]["markers"][1].pop("world_start"),
         "lanes[0].markers[1].world_start"),
        (lambda d: d["lanes"][0]["markers"][0]["world_start"].pop("z"),
         "lanes[0].markers[0].world_start.z"),
        (lambda d: d["lanes"][0].pop("markers"), "lanes[0].markers"),
        (lambda d: d.update(lanes={"l0": []}), "lanes"),
        (lambda d: d["lanes"][0].update(lane_id="x0"), "lanes[0].lane_id"),
        (lambda d: d.update(projection_matrix=[[1, 0], [0, 1]]), "projection_matrix"),
    ],
)  # fmt: skip
def test_malformed_label_names_file_and_field(tmp_path, mutate, field):
    doc = {"projection_matrix": P, "lanes": [lane("l0", [300, 250])]}
    mutate(doc)
    path = write(tmp_path, doc, "bad_label.json")
    with pytest.raises(LabelFormatError) as e:
        llamas.read_json(path)
    assert path in str(e.value)
    assert f"field {field}:" in str(e.value)


def test_bad_json_syntax_names_file(tmp_path):
    path = write(tmp_path, '{"lanes": [', "broken.json")
    with pytest.raises(LabelFormatError, match="broken.json.*invalid json"):
        llamas.read_json(path)


# ----------------------------------------------------------------------------------------------
# rendering


def one_lane_label(lane_id, ws=(0.0, 0.8, 1.0), we=(0.0, 0.8, 2.0)):
    return {
        "projection_matrix": P,
        "lanes": [{"lane_id": lane_id, "markers": [marker(90, 50, ws=ws, we=we)]}],
    }


def test_marker_quad_corners_and_rounding():
    # Near end z=1: u=50, v=90, half width 5 -> x 45, 55.  Far end z=2: u=50, v=50, half width
    # 2.5 -> x 47.5 and 52.5, which round half to even to 48 and 52.
    m = one_lane_label("l1")["lanes"][0]["markers"][0]
    pts = llamas.marker_polygon(P, m["world_start"], m["world_end"])
    np.testing.assert_array_equal(pts, [[45, 90], [55, 90], [52, 50], [48, 50]])
    assert pts.dtype == np.int32


def reference_class_map(corners, color_bgr):
    """Official procedure written out: BGR canvas, AA fill twice, exact colour match."""
    img = np.zeros(HW + (3,), np.uint8)
    pts = np.array(corners, np.int32)
    cv2.fillConvexPoly(img, pts, color_bgr, cv2.LINE_AA, 0)
    cv2.fillConvexPoly(img, pts, color_bgr, cv2.LINE_AA, 0)
    return img, np.all(img == np.array(color_bgr, np.uint8), axis=-1)


def inside_margin(corners, margin):
    """Pixel centres at least ``margin`` px inside the convex polygon (counter-clockwise)."""
    yy, xx = np.mgrid[0 : HW[0], 0 : HW[1]].astype(np.float64)
    c = np.asarray(corners, np.float64)
    ok = np.ones(HW, bool)
    for a, b in zip(c, np.roll(c, -1, axis=0), strict=True):
        edge = b - a
        normal = np.array([edge[1], -edge[0]]) / np.hypot(*edge)  # inward for this winding
        ok &= (xx - a[0]) * normal[0] + (yy - a[1]) * normal[1] >= margin
    return ok


def test_multiclass_render_matches_hand_computed_quad():
    corners = [[45, 90], [55, 90], [52, 50], [48, 50]]
    label = llamas.render_multiclass_label(one_lane_label("l1"), HW)
    assert label.dtype == np.uint8 and label.shape == HW
    # Pixels well inside the quad are class 1 (l1); pixels well outside are background.
    interior = inside_margin(corners, 1.5)
    outside = ~inside_margin(corners, -1.5)
    assert interior.sum() > 100
    assert np.all(label[interior] == 1)
    assert np.all(label[outside] == 0)
    assert label[70, 50] == 1 and label[70, 44] == 0 and label[49, 50] == 0
    # Anti-aliased edge pixels (drawn, but not in the exact class colour) are background.
    img, exact = reference_class_map(corners, (0, 0, 255))
    aa_edge = img.any(axis=-1) & ~exact
    assert aa_edge.sum() > 20
    assert np.all(label[aa_edge] == 0)
    np.testing.assert_array_equal(label, np.where(exact, 1, 0))


def test_each_class_gets_its_id_and_outer_lanes_stay_background():
    xs = [(i - 2.5) * 0.15 for i in range(6)]  # lateral positions of l2, l1, l0, r0, r1, r2
    lanes = [
        {"lane_id": lane_id, "markers": [marker(90, 50, ws=(x, 0.8, 1.0), we=(x, 0.8, 2.0))]}
        for lane_id, x in zip(["l2", "l1", "l0", "r0", "r1", "r2"], xs, strict=True)
    ]
    label = llamas.render_multiclass_label({"projection_matrix": P, "lanes": lanes}, HW)
    z = 80.0 / 75.0  # depth seen at row v = 85 (v = 80 / z + 10)
    for x, expected in zip(xs, [0, 1, 2, 3, 4, 0], strict=True):
        u = int(round(100 * x / z + 50))
        assert label[85, u] == expected, (x, u)
    assert set(np.unique(label)) == {0, 1, 2, 3, 4}


def test_l2_colour_does_not_leak_into_classes_but_counts_in_binary():
    label = one_lane_label("l2")
    assert not np.any(llamas.render_multiclass_label(label, HW))
    binary = llamas.render_binary_label(label, HW)
    assert set(np.unique(binary)) == {0, 1}
    corners = [[45, 90], [55, 90], [52, 50], [48, 50]]
    assert np.all(binary[inside_margin(corners, 1.5)] == 1)
    assert np.all(binary[~inside_margin(corners, -1.5)] == 0)


def test_marker_with_equal_rounded_rows_is_skipped():
    # Both ends at z = 2 -> v = 50 for both: the official code skips the marker.
    label = one_lane_label("r0", ws=(0.0, 0.8, 2.0), we=(0.3, 0.8, 2.0))
    m = label["lanes"][0]["markers"][0]
    assert llamas.marker_polygon(P, m["world_start"], m["world_end"]) is None
    assert not np.any(llamas.render_multiclass_label(label, HW))
    assert not np.any(llamas.render_binary_label(label, HW))
    # Drawing that flat quad anyway would have produced pixels, so the skip is observable.
    img = np.zeros(HW, np.uint8)
    flat = np.array([[45, 50], [55, 50], [67, 50], [63, 50]], np.int32)
    cv2.fillConvexPoly(img, flat, 1, cv2.LINE_AA, 0)
    assert img.any()


def test_render_uses_cleaned_ids(tmp_path):
    # 'l3' alone is renumbered to 'l0' by read_json and must render as class 2 (l0).
    doc = one_lane_label("l3")
    doc["lanes"][0]["markers"].append(marker(60, 55, ws=(0.0, 0.8, 2.0), we=(0.0, 0.8, 2.2)))
    label = llamas.read_json(write(tmp_path, doc), min_lane_height=20)
    assert [ln["lane_id"] for ln in label["lanes"]] == ["l0"]
    assert llamas.render_multiclass_label(label, HW)[70, 50] == 2


# ----------------------------------------------------------------------------------------------
# list_samples


def make_tree(root, split, image_keys, label_keys):
    for key in image_keys:
        p = os.path.join(root, "color_images", split, key + llamas.COLOR_SUFFIX)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "wb").close()
    if label_keys is not None:
        os.makedirs(os.path.join(root, "labels", split), exist_ok=True)
        for key in label_keys:
            p = os.path.join(root, "labels", split, key + ".json")
            os.makedirs(os.path.dirname(p), exist_ok=True)
            open(p, "w").close()


def test_list_samples_pairs_sorted(tmp_path):
    keys = ["rec_b/1419283521_0744236000", "rec_a/1419283522_0000000000", "rec_a/1419283521_9"]
    make_tree(tmp_path, "valid", keys, keys)
    samples = list_samples(tmp_path, "valid")
    assert [s.key for s in samples] == sorted(keys)
    s = samples[0]
    assert s.image_path == os.path.join(
        tmp_path, "color_images", "valid", s.key + "_color_rect.png"
    )
    assert s.label_path == os.path.join(tmp_path, "labels", "valid", s.key + ".json")


def test_list_samples_test_split_without_labels(tmp_path):
    make_tree(tmp_path, "test", ["rec/1_0000000001"], None)
    assert list_samples(tmp_path, "test")[0].label_path is None


def test_image_without_label_and_label_without_image(tmp_path):
    make_tree(tmp_path / "a", "train", ["rec/1_1", "rec/1_2"], ["rec/1_1"])
    with pytest.raises(DatasetLayoutError) as e:
        list_samples(tmp_path / "a", "train")
    msg = str(e.value)
    assert "1_2_color_rect.png" in msg and os.path.join("labels", "train", "rec", "1_2.json") in msg
    make_tree(tmp_path / "b", "train", ["rec/1_1"], ["rec/1_1", "rec/1_3"])
    with pytest.raises(DatasetLayoutError) as e:
        list_samples(tmp_path / "b", "train")
    msg = str(e.value)
    assert os.path.join("labels", "train", "rec", "1_3.json") in msg and "1_3_color_rect.png" in msg


def test_missing_split_folder(tmp_path):
    with pytest.raises(DatasetLayoutError, match="color_images"):
        list_samples(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown LLAMAS split"):
        list_samples(tmp_path, "training")
