"""Synthetic LLAMAS generator: on-disk format, official constraints, round trip, determinism."""

import filecmp
import json
import os
import re

import cv2
import numpy as np
import pytest

from data_pipelines.formats import llamas
from data_pipelines.llamas import list_samples
from data_pipelines.synthetic.llamas import MARKER_FILE, generate_llamas

SMALL_WH = (160, 90)
COUNTS = {"train": 10, "valid": 4, "test": 2}
REC_RE = re.compile(
    r"^images-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}_mapping_[0-9A-Z]+_\d(st|nd|rd|th)_lane$"
)
TS_RE = re.compile(r"^\d{10}_\d{10}$")
MARKER_KEYS = {"lane_marker_id", "world_start", "world_end", "pixel_start", "pixel_end"}


def gen(root, seed=0, wh=SMALL_WH, counts=COUNTS):
    generate_llamas(root, counts["train"], counts["valid"], counts["test"], seed=seed, image_wh=wh)
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return gen(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    return gen(
        tmp_path_factory.mktemp("full"), wh=(1276, 717), counts=dict(train=2, valid=1, test=1)
    )


def files_of(root):
    out = []
    for dirpath, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(dirpath, n), root) for n in names]
    return sorted(out)


def check_format(root, wh, counts):
    w, h = wh
    for split, n in counts.items():
        recs = sorted(os.listdir(os.path.join(root, "color_images", split)))
        assert recs and all(REC_RE.match(r) for r in recs), recs
        names = [
            (rec, name)
            for rec in recs
            for name in os.listdir(os.path.join(root, "color_images", split, rec))
        ]
        assert len(names) == n
        for rec, name in names:
            assert name.endswith("_color_rect.png") and TS_RE.match(name[: -len("_color_rect.png")])
            ts = name[: -len("_color_rect.png")]
            color = cv2.imread(
                os.path.join(root, "color_images", split, rec, name), cv2.IMREAD_UNCHANGED
            )
            gray = cv2.imread(
                os.path.join(root, "grayscale_images", split, rec, ts + "_gray_rect.png"),
                cv2.IMREAD_UNCHANGED,
            )
            assert color.shape == (h, w, 3) and color.dtype == np.uint8
            assert gray.shape == (h, w) and gray.dtype == np.uint8
            label = os.path.join(root, "labels", split, rec, ts + ".json")
            assert os.path.isfile(label) == (split != "test")
    assert not os.path.exists(os.path.join(root, "labels", "test"))
    assert sorted(os.listdir(root)) == sorted(
        ["color_images", "grayscale_images", "labels", MARKER_FILE]
    )


def test_format_at_default_size(full_size):
    check_format(full_size, (1276, 717), dict(train=2, valid=1, test=1))


def test_format_small(small):
    check_format(small, SMALL_WH, COUNTS)
    with open(os.path.join(small, MARKER_FILE)) as f:
        assert json.load(f)["image_wh"] == list(SMALL_WH)


def raw_labels(root, split):
    for s in list_samples(root, split):
        with open(s.label_path) as f:
            yield s, json.load(f)


def test_json_schema_and_pixel_projection(small):
    w, h = SMALL_WH
    for split in ("train", "valid"):
        for s, doc in raw_labels(small, split):
            assert set(doc) == {"image_name", "projection_matrix", "lanes"}
            assert doc["image_name"] == f"{split}/{s.key}_color_rect.png"
            (fx, z0, cx), (z1, fy, cy), last = doc["projection_matrix"]
            assert z0 == z1 == 0 and last == [0, 0, 1] and fx > 0 and fy > 0
            for lane in doc["lanes"]:
                assert set(lane) == {"lane_id", "markers"} and lane["lane_id"][0] in "lr"
                for m in lane["markers"]:
                    assert set(m) == MARKER_KEYS
                    assert set(m["world_start"]) == set(m["world_end"]) == set("xyz")
                    assert set(m["pixel_start"]) == set(m["pixel_end"]) == set("xy")
                    assert 0 < m["world_start"]["z"] < m["world_end"]["z"]
                    for wk, pk in (("world_start", "pixel_start"), ("world_end", "pixel_end")):
                        x, y, z = (m[wk][c] for c in "xyz")
                        assert m[pk] == {
                            "x": int(round((fx * x + cx * z) / z)),
                            "y": int(round((fy * y + cy * z) / z)),
                        }


def test_official_constraints_and_filtered_lanes(small):
    h = SMALL_WH[1]
    filtered = gaps = 0
    for split in ("train", "valid"):
        for s, doc in raw_labels(small, split):
            clean = llamas.read_json(s.label_path)
            kept = {id(lane) for lane in doc["lanes"] if _survives(lane)}
            assert len(clean["lanes"]) == len(kept)
            filtered += len(doc["lanes"]) - len(kept)
            for lane in doc["lanes"]:
                if id(lane) not in kept:
                    continue
                ms = lane["markers"]
                assert len(ms) >= 2
                assert all(0 <= m["pixel_end"]["y"] < m["pixel_start"]["y"] <= h - 1 for m in ms)
                assert any(
                    m["pixel_start"]["x"] != m["pixel_end"]["x"]
                    and m["pixel_start"]["y"] != m["pixel_end"]["y"]
                    for m in ms
                )
            for side in "lr":
                side_lanes = [ln for ln in doc["lanes"] if ln["lane_id"][0] == side]
                nums = sorted(int(ln["lane_id"][1:]) for ln in side_lanes if id(ln) in kept)
                gaps += nums != list(range(len(nums)))
    assert filtered >= 1  # some frame carries a lane read_json must drop
    assert gaps >= 1  # some frame needs renumbering


def _survives(lane):
    ys = [m["pixel_start"]["y"] for m in lane["markers"]]
    return len(ys) >= 2 and max(ys) - min(ys) >= 20


def test_round_trip_labels_have_lanes_where_markings_are_painted(full_size):
    for split in ("train", "valid"):
        for s in list_samples(full_size, split):
            label = llamas.read_json(s.label_path)
            multi = llamas.render_multiclass_label(label)
            assert multi.shape == (717, 1276)
            assert np.isin(multi, [1, 2, 3, 4]).any()
            # Painted markings: brighter than the road just beside them (visible at full size).
            gray = cv2.imread(s.image_path, cv2.IMREAD_GRAYSCALE).astype(np.float64)
            mark = llamas.render_binary_label(label).astype(bool)
            near = cv2.dilate(mark.astype(np.uint8), np.ones((1, 15), np.uint8)).astype(bool)
            beside = near & ~cv2.dilate(mark.astype(np.uint8), np.ones((1, 5), np.uint8)).astype(
                bool
            )
            assert gray[mark].mean() > gray[beside].mean() + 25


def test_round_trip_through_list_samples_small(small):
    for split, n in COUNTS.items():
        samples = list_samples(small, split)
        assert len(samples) == n
        assert all((s.label_path is None) == (split == "test") for s in samples)
    found = set()
    for s in list_samples(small, "train"):
        found |= set(
            np.unique(llamas.render_multiclass_label(llamas.read_json(s.label_path), (90, 160)))
        )
    assert found == {0, 1, 2, 3, 4}


def test_deterministic_for_a_seed(small, tmp_path):
    again = gen(tmp_path / "again")
    names = files_of(small)
    assert names == files_of(again)
    match, mismatch, errors = filecmp.cmpfiles(small, again, names, shallow=False)
    assert not mismatch and not errors
    other = gen(tmp_path / "other", seed=1)
    rec = sorted(os.listdir(os.path.join(other, "color_images", "train")))
    assert rec != sorted(os.listdir(os.path.join(small, "color_images", "train")))
