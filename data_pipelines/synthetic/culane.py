"""Synthetic CULane: perspective road scenes written in the exact CULane on-disk format.

``generate_culane(out_dir, ...)`` writes (DATASETS.md 1.1-1.6 and 5)::

    driver_23_30frame/<MMDDhhmm_NNNN>.MP4/<frame>.jpg         train + valid frames (W x H JPEG)
    driver_37_30frame/<MMDDhhmm_NNNN>.MP4/<frame>.jpg         test frames
    <same>.lines.txt                                          lanes next to every frame
    laneseg_label_w16/<same>.png                              8-bit labels 0..4 (test too)
    list/train_gt.txt, val_gt.txt      "/<img> /laneseg_label_w16/<key>.png e1 e2 e3 e4"
    list/train.txt, val.txt, test.txt  "/<img>"
    list/test_split/test<K>_<category>.txt   "<img>" (no leading '/'; every test frame in one)
    synthetic_culane.json                                     generator parameters (written last)

Frames are numbered in steps of 30 (``00000.jpg``, ``00030.jpg``, ...) like the ``*_30frame``
folders; each clip is one camera on one road. Lanes: the two nearest dividers on each side of the
camera (CULane annotates at most four), as continuous curves through dashes and occluders, one
point per official grid row ``y = 590, 580, ...`` (scaled frames: ``H * (59 - i) / 59``) from the
row where the divider enters the frame (x within 15% of the width outside it) up to its far end;
x has 3 decimals and may be < 0 or > W. The label is drawn from exactly those lines by the port
of the official generator (``data_pipelines.formats.culane.render_seg_label``), so lines, labels
and existence flags agree by construction.

Test categories shape the scene: crowd (many cars), hlight (glare), shadow, noline (worn or no
paint, lanes still annotated), arrow (arrow painted in the ego lane), curve (strong bends),
cross (an intersection: zebra crossing and stop line, no lanes, an empty ``.lines.txt``), night
(dark frame with lights), normal. The first test frame is always ``cross``; test frames cycle
through the categories; train/valid frames draw them with the official test-set frequencies.

Scaled frames (``image_wh`` smaller than 1640x590, same aspect) keep the format: same names,
lists and grid rows (in scaled pixels), every pixel constant of the label generator scaled.

Simplifications: the camera has no roll/pitch and the road is flat (``scenes``); lanes never
come within the official 120 px double-line distance, so its removal rule never fires here.

Output depends only on ``(seed, split, clip, frame)``. Generation is resumable: every file is
written atomically, a frame whose three files exist is not redrawn (its lanes are recomputed
from the geometry stream to rebuild the lists), and the marker is written last.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import cv2
import numpy as np
from absl import logging

from data_pipelines.formats import culane
from data_pipelines.formats.lines_txt import format_lines, key_lines_txt_path
from data_pipelines.synthetic import common, scenes
from data_pipelines.synthetic.scenes import WHITE_PAINT, YELLOW_PAINT
from data_pipelines.util import encode_png, write_file_atomic

FILES = common.GeneratorFiles("culane", version=1)
MARKER_FILE = FILES.marker_file
IN_PROGRESS_FILE = FILES.in_progress_file
read_marker = FILES.read_marker
in_progress = FILES.in_progress
TRAIN_DRIVER = "driver_23_30frame"  # train + valid (all official val frames are in driver_23)
TEST_DRIVER = "driver_37_30frame"
FRAME_STEP = 30  # *_30frame folders hold every 30th frame
MAX_CLIP_FRAMES = 8
EDGE_MARGIN = 0.15  # lanes are annotated while x is within this share of W outside the frame
MIN_LANE_POINTS = 6
JPEG_QUALITY = 92
# Test-category frequencies of the real test set (DATASETS.md 1.3, unconfirmed counts); train and
# valid frames draw their conditions with them.
CATEGORY_COUNTS = (9621, 8113, 486, 930, 4067, 890, 422, 3122, 7029)


def generator_params(
    num_train: int = 64,
    num_valid: int = 16,
    num_test: int = 18,
    seed: int = 0,
    image_wh: Sequence[int] = culane.IMAGE_WH,
) -> dict:
    """Validated, canonical generator parameters (the content of ``synthetic_culane.json``)."""
    params = FILES.base_params(num_train, num_valid, num_test, seed)
    w, h = common.image_wh_ints(image_wh)
    if w < 120:
        raise ValueError(f"image_wh must be at least 120 pixels wide, got {image_wh!r}")
    full_w, full_h = culane.IMAGE_WH
    if abs(h - w * full_h / full_w) > 1.0:
        raise ValueError(
            f"image_wh must keep CULane's {full_w}:{full_h} aspect (height = "
            f"{w * full_h / full_w:.1f} +- 1 for width {w}), got {image_wh!r}"
        )
    return {**params, "image_wh": [w, h]}


# ----------------------------------------------------------------------------------------------
# Scene geometry (lanes) and drawing.


def _ground_quad(
    camera: scenes.PinholeCamera,
    curve: scenes.RoadCurve,
    lat0: float,
    lat1: float,
    z0: float,
    z1: float,
) -> np.ndarray:
    """Pixel corners int32 (4, 2) of the road patch lateral [lat0, lat1] x depth [z0, z1]."""
    corners = np.array(
        [
            [curve.x_at(lat0, z0), camera.height_m, z0],
            [curve.x_at(lat1, z0), camera.height_m, z0],
            [curve.x_at(lat1, z1), camera.height_m, z1],
            [curve.x_at(lat0, z1), camera.height_m, z1],
        ]
    )
    w, h = camera.image_wh
    far = 4 * max(w, h)  # keeps OpenCV's fixed-point maths in range
    return np.clip(np.round(camera.project(corners)), -far, far).astype(np.int32)


def _grid_rows(h: int) -> np.ndarray:
    """The annotation rows ``590 - 10 i`` scaled to a frame of height h, float64, bottom first."""
    return h * (59.0 - np.arange(59, dtype=np.float64)) / 59.0


def lane_points(
    camera: scenes.PinholeCamera, curve: scenes.RoadCurve, lateral: float, z_far: float
) -> np.ndarray:
    """A divider's ``.lines.txt`` points: (K, 2) float64 (x, y), bottom first, 3-decimal x.

    One point per grid row nearer than ``z_far``, from the lowest row where the divider lies within
    ``EDGE_MARGIN * W`` of the frame up to where it leaves that band or ends.
    """
    w, h = camera.image_wh
    rows = _grid_rows(h)
    rows = rows[(rows > camera.cy + 1.0) & (rows >= camera.row_of_depth(z_far))]
    if rows.size == 0:
        return np.zeros((0, 2))
    z = camera.depth_of_row(rows)
    x = camera.cx + camera.fx * curve.x_at(lateral, z) / z
    margin = EDGE_MARGIN * w
    inside = (x >= -margin) & (x <= w - 1 + margin)
    if not inside.any():
        return np.zeros((0, 2))
    first = int(np.argmax(inside))
    stop = first + int(np.argmin(inside[first:])) if not inside[first:].all() else rows.size
    return np.stack([np.round(x[first:stop], 3), np.round(rows[first:stop], 3)], axis=1)


def plan_frame(
    rng: np.random.Generator, camera: scenes.PinholeCamera, road: dict, category: str
) -> dict:
    """The geometry of one frame: road curve, dividers, annotated lanes (cheap, no drawing).

    Args:
        rng: the frame's geometry stream.
        camera: the clip's camera.
        road: the clip's road (``n_lanes``, ``lane_width``, ``dash_m``, ``gap_m``,
            ``left_edge_yellow``).
        category: one of ``culane.TEST_CATEGORIES``.

    Returns:
        ``{"curve", "laterals", "ego", "lane_w", "z_near", "z_far", "lanes", "painted"}``:
        divider offsets (metres, left to right), the ego lane index, the lane width, the depth
        range, the annotated ``.lines.txt`` lanes in file order and the dividers to paint.
    """
    w, h = camera.image_wh
    n_lanes = road["n_lanes"]
    lane_w = road["lane_width"] * float(rng.uniform(0.98, 1.02))
    ego = int(rng.integers(n_lanes))
    offset = float(np.clip(rng.normal(0.0, 0.25), -0.7, 0.7))
    heading = float(rng.normal(0.0, 0.006))
    if rng.random() < 0.1:  # lane change: off-centre and drifting across
        side = 1.0 if rng.random() < 0.5 else -1.0
        offset = side * float(rng.uniform(0.8, 1.5))
        heading = -side * float(rng.uniform(0.01, 0.03))
    curvature = float(rng.uniform(-4e-4, 4e-4)) if rng.random() < 0.6 else 0.0
    if category == "curve":
        curvature = float(rng.choice([-1.0, 1.0]) * rng.uniform(1.2e-3, 2.5e-3))
    curve = scenes.RoadCurve(heading=heading, curvature=curvature)
    z_near = float(camera.depth_of_row(h - 0.5))
    z_horizon = float(camera.depth_of_row(camera.cy + max(2.0, 0.03 * h)))
    z_far = min(float(rng.uniform(45.0, 95.0)), z_horizon)
    laterals = [(k - ego - 0.5) * lane_w - offset for k in range(n_lanes + 1)]
    left = sorted((i for i in range(n_lanes + 1) if laterals[i] < 0), key=lambda i: -laterals[i])
    right = sorted((i for i in range(n_lanes + 1) if laterals[i] >= 0), key=lambda i: laterals[i])
    lanes, painted = [], list(range(n_lanes + 1))
    if category != "cross":
        for i in left[:2] + right[:2]:
            pts = lane_points(camera, curve, laterals[i], z_far)
            if pts.shape[0] >= MIN_LANE_POINTS:
                lanes.append(pts)
            else:  # neither annotated nor painted, so image and label agree
                painted.remove(i)
    order = rng.permutation(len(lanes))  # file order is not left to right
    return {
        "curve": curve,
        "laterals": laterals,
        "ego": ego,
        "lane_w": lane_w,
        "z_near": z_near,
        "z_far": z_far,
        "lanes": [lanes[i] for i in order],
        "painted": painted,
    }


def _add_glare(img: np.ndarray, rng: np.random.Generator, count: int, radius: float, gain: float):
    """Adds ``count`` soft bright spots (sun glare, head lights) in place; radius in pixels."""
    h, w = img.shape[:2]
    for _ in range(count):
        cx, cy = float(rng.uniform(0, w)), float(rng.uniform(0.25 * h, 0.75 * h))
        r = radius * float(rng.uniform(0.6, 1.4))
        x0, x1 = max(0, int(cx - 3 * r)), min(w, int(cx + 3 * r) + 1)
        y0, y1 = max(0, int(cy - 3 * r)), min(h, int(cy + 3 * r) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / np.float32(2.0 * r * r))
        tint = np.asarray(rng.uniform([230, 220, 190], [255, 250, 240]), np.float32)
        img[y0:y1, x0:x1] += (gain * blob)[..., None] * tint


def draw_frame(
    rng: np.random.Generator,
    camera: scenes.PinholeCamera,
    road: dict,
    plan: dict,
    category: str,
) -> np.ndarray:
    """Draws a planned frame; returns RGB uint8 (H, W, 3)."""
    w, h = camera.image_wh
    curve, laterals = plan["curve"], plan["laterals"]
    z_near, lane_w = plan["z_near"], plan["lane_w"]
    img = scenes.draw_background(camera, curve, (laterals[0] - 0.6, laterals[-1] + 0.6), rng)
    z_paint = max(plan["z_far"], min(float(rng.uniform(80.0, 140.0)), plan["z_far"] * 2.0))
    width_m = float(rng.uniform(0.12, 0.16))
    alpha_range = (0.05, 0.25) if category == "noline" else (0.75, 1.0)
    if category != "cross":
        for k in plan["painted"]:
            if category == "noline" and rng.random() < 0.5:
                continue  # worn away entirely; still annotated
            dashed = 0 < k < road["n_lanes"]
            intervals = scenes.stripe_intervals(
                z_near, z_paint, dashed, rng, dash_m=road["dash_m"], gap_m=road["gap_m"]
            )
            lat = laterals[k]
            polys = [
                _ground_quad(camera, curve, lat - width_m / 2, lat + width_m / 2, z0, z1)
                for z0, z1 in intervals
            ]
            colour = YELLOW_PAINT if (k == 0 and road["left_edge_yellow"]) else WHITE_PAINT
            colour = tuple(c * float(rng.uniform(0.85, 1.0)) for c in colour)
            scenes.paint_polygons(img, polys, colour, alpha=float(rng.uniform(*alpha_range)))
    centre = (laterals[plan["ego"]] + laterals[plan["ego"] + 1]) / 2.0
    if category == "arrow":
        z0 = float(rng.uniform(10.0, 22.0))
        shaft = _ground_quad(camera, curve, centre - 0.08, centre + 0.08, z0, z0 + 3.0)
        head = np.array(
            [
                camera.project(np.array([[curve.x_at(centre + d, z), camera.height_m, z]]))[0]
                for d, z in ((-0.35, z0 + 3.0), (0.35, z0 + 3.0), (0.0, z0 + 4.5))
            ]
        )
        scenes.paint_polygons(img, [shaft, np.round(head).astype(np.int32)], WHITE_PAINT, alpha=0.9)
    if category == "cross":
        zc = float(rng.uniform(9.0, 16.0))
        stripes = []
        lat = laterals[0]
        while lat < laterals[-1]:
            stripes.append(_ground_quad(camera, curve, lat, lat + 0.5, zc, zc + 3.5))
            lat += 1.0
        stop = _ground_quad(camera, curve, laterals[0], laterals[-1], zc - 1.6, zc - 1.2)
        scenes.paint_polygons(
            img, [*stripes, stop], WHITE_PAINT, alpha=float(rng.uniform(0.7, 0.95))
        )

    lane_centres = [(k - plan["ego"]) * lane_w + centre for k in range(road["n_lanes"])]
    shadows = {"shadow": int(rng.integers(3, 6))}.get(category, int(rng.choice(2, p=[0.6, 0.4])))
    cars = {"crowd": int(rng.integers(4, 8))}.get(category, int(rng.choice(3, p=[0.5, 0.3, 0.2])))
    scenes.add_shadows(img, camera, curve, rng, count=shadows)
    scenes.add_occluders(img, camera, curve, rng, lane_centres, cars)
    if category == "night":
        img *= np.float32(rng.uniform(0.18, 0.32))
        _add_glare(img, rng, int(rng.integers(2, 6)), 0.012 * w, float(rng.uniform(0.6, 1.0)))
    if category == "hlight":
        _add_glare(img, rng, int(rng.integers(1, 3)), 0.08 * w, float(rng.uniform(0.8, 1.2)))
    img = scenes.add_sensor_noise(img, rng, sigma=float(rng.uniform(0.5, 3.0)))
    return scenes.apply_lighting(img, rng)


# ----------------------------------------------------------------------------------------------
# Writing.


def _clip_plan(n: int) -> list[int]:
    """Frames per clip: at most ``MAX_CLIP_FRAMES``, spread evenly."""
    n_clips = max(1, math.ceil(n / MAX_CLIP_FRAMES))
    base, extra = divmod(n, n_clips)
    return [base + (1 if i < extra else 0) for i in range(n_clips)]


def _clip_name(rng: np.random.Generator, split_idx: int, clip_idx: int) -> str:
    """``MMDDhhmm_NNNN.MP4``, unique within a split (time increases with the clip index)."""
    minutes = clip_idx * 45 + int(rng.integers(0, 40))  # clips at least 5 minutes apart
    day, minute = divmod(minutes, 14 * 60)  # 14 hours of driving a day, from 08:00
    day = (day + 14) % 240  # from May 15th; months of 30 days
    month, dom = 5 + day // 30, 1 + day % 30
    # NNNN: the clip index, in a range of its own per split (train and valid share a driver).
    number = clip_idx % 5000 + 5000 * (split_idx == 1)
    return f"{month:02d}{dom:02d}{8 + minute // 60:02d}{minute % 60:02d}_{number:04d}.MP4"


def _make_road(rng: np.random.Generator) -> dict:
    return {
        "n_lanes": int(rng.choice([2, 3, 4, 5], p=[0.2, 0.35, 0.3, 0.15])),
        "lane_width": float(rng.uniform(3.2, 3.8)),
        "dash_m": float(rng.uniform(4.0, 6.0)),
        "gap_m": float(rng.uniform(6.0, 9.0)),
        "left_edge_yellow": bool(rng.random() < 0.3),
    }


def _write_lists(out_dir: str, rows: dict[str, list[tuple[str, str, tuple]]]) -> None:
    """The list files; rows[split] = (image rel path, category, existence flags), list order."""

    def write(rel: str, lines: list[str]) -> None:
        write_file_atomic(os.path.join(out_dir, rel), "".join(lines).encode("ascii"))

    for split, gt_name, img_name in (("train", "train_gt", "train"), ("valid", "val_gt", "val")):
        gt = [
            f"/{img} /{culane.LABEL_DIR}/{os.path.splitext(img)[0]}.png "
            + " ".join(str(e) for e in exist)
            + "\n"
            for img, _, exist in rows[split]
        ]
        write(f"{culane.LIST_DIR}/{gt_name}.txt", gt)
        write(f"{culane.LIST_DIR}/{img_name}.txt", [f"/{img}\n" for img, _, _ in rows[split]])
    write(f"{culane.LIST_DIR}/test.txt", [f"/{img}\n" for img, _, _ in rows["test"]])
    for split_name, category in zip(culane.CATEGORY_SPLITS, culane.TEST_CATEGORIES, strict=True):
        # Category lists without the leading '/' (the reader and evaluator accept both).
        lines = [f"{img}\n" for img, cat, _ in rows["test"] if cat == category]
        write(f"{culane.LIST_DIR}/test_split/{split_name}.txt", lines)


def generate_culane(
    out_dir: str | os.PathLike,
    num_train: int = 64,
    num_valid: int = 16,
    num_test: int = 18,
    seed: int = 0,
    image_wh: Sequence[int] = culane.IMAGE_WH,
) -> None:
    """Writes a synthetic CULane dataset into ``out_dir`` (see the module docstring).

    Args:
        out_dir: dataset root to create.
        num_train: frames in ``train`` (list/train_gt.txt).
        num_valid: frames in ``valid`` (list/val_gt.txt).
        num_test: frames in ``test`` (list/test.txt and the nine category lists).
        seed: generator seed; the output is a pure function of the arguments.
        image_wh: frame size (width, height) with CULane's aspect; CULane is (1640, 590).

    A finished generation with the same parameters is left as it is; an unfinished one with
    the same parameters is completed (frames whose three files exist are kept).

    Raises:
        ValueError: invalid parameters, or ``out_dir`` holds a finished or unfinished generation
            with other parameters.
    """
    params = generator_params(num_train, num_valid, num_test, seed, image_wh)
    out_dir = os.fspath(out_dir)
    existing = read_marker(out_dir)
    if existing is not None:
        if existing == params:
            return
        raise ValueError(f"{out_dir} holds a synthetic CULane generated with {existing}")
    started = FILES.started_with(out_dir)
    if started is not None and started != params:
        raise ValueError(
            f"{out_dir} holds an unfinished synthetic CULane generation with {started}; "
            f"delete the folder to generate {params}"
        )
    FILES.start(out_dir, params)
    w, h = params["image_wh"]
    counts = {"train": num_train, "valid": num_valid, "test": num_test}
    weights = np.asarray(CATEGORY_COUNTS, np.float64) / sum(CATEGORY_COUNTS)
    tasks = []
    for split_idx, (split, n) in enumerate(counts.items()):
        driver = TEST_DRIVER if split == "test" else TRAIN_DRIVER
        for clip_idx, n_frames in enumerate(_clip_plan(n)):
            clip_rng = np.random.default_rng([seed, split_idx, clip_idx, 0])
            clip = _clip_name(clip_rng, split_idx, clip_idx)
            camera = scenes.make_camera((w, h), clip_rng)
            road = _make_road(clip_rng)
            start = FRAME_STEP * int(clip_rng.integers(0, 60))
            for j in range(n_frames):
                frame_seed = [seed, split_idx, clip_idx, 1, j]
                if split == "test":
                    category = culane.TEST_CATEGORIES[(len(tasks) - num_train - num_valid + 7) % 9]
                else:
                    category = culane.TEST_CATEGORIES[
                        int(np.random.default_rng([*frame_seed, 2]).choice(9, p=weights))
                    ]
                rel = f"{driver}/{clip}/{start + FRAME_STEP * j:05d}.jpg"
                tasks.append((split, rel, category, frame_seed, camera, road))

    def work(task) -> tuple[str, str, tuple]:
        split, rel, category, frame_seed, camera, road = task
        plan = plan_frame(np.random.default_rng([*frame_seed, 0]), camera, road, category)
        key = os.path.splitext(rel)[0]
        paths = (
            os.path.join(out_dir, rel),
            key_lines_txt_path(out_dir, key),
            os.path.join(out_dir, culane.LABEL_DIR, key + ".png"),
        )
        if all(os.path.exists(p) for p in paths):  # finished by an interrupted run
            return rel, category, culane.existence_flags(plan["lanes"], (w, h))
        rgb = draw_frame(np.random.default_rng([*frame_seed, 1]), camera, road, plan, category)
        label, exist = culane.render_seg_label(plan["lanes"], (w, h))
        ok, jpg = cv2.imencode(
            ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        if not ok:
            raise RuntimeError(f"cv2.imencode failed to encode {paths[0]}")
        write_file_atomic(paths[0], jpg.tobytes())
        write_file_atomic(paths[2], encode_png(label))
        write_file_atomic(paths[1], format_lines(plan["lanes"]).encode("ascii"))
        return rel, category, exist

    rows: dict[str, list] = {split: [] for split in counts}
    frame_rows = common.map_frames(work, tasks, "synthetic CULane frames")
    for task, row in zip(tasks, frame_rows, strict=True):
        rows[task[0]].append(row)
    _write_lists(out_dir, rows)
    FILES.finish(out_dir, params)
    logging.info("synthetic CULane written to %s", out_dir)


GENERATOR = common.Generator(FILES, generator_params, generate_culane)
