"""Synthetic LLAMAS: perspective road scenes written in the exact LLAMAS on-disk format.

``generate_llamas(out_dir, ...)`` writes::

    color_images/{train,valid,test}/<recording>/<ts>_color_rect.png     (W x H RGB)
    grayscale_images/{train,valid,test}/<recording>/<ts>_gray_rect.png  (W x H gray)
    labels/{train,valid}/<recording>/<ts>.json                           (no test labels)
    synthetic_llamas.json                                                (generator parameters)

Every frame is a pinhole view (``[[fx,0,cx],[0,fy,cy],[0,0,1]]``, camera ~1.5 m above the road)
of a 2-4 lane road with curves, lane-change drift, dashed and solid dividers, shadows, cars and
lighting changes. Dividers are labelled by their side and rank from the camera (l0/r0 nearest,
then l1/r1, sometimes l2/r2); every labelled lane meets the constraints of the official scripts
(>= 2 markers, ``pixel_start.y`` in [0, H-1] above ``pixel_end.y``, a ``pixel_start.y`` span of
>= 20 px, a marker with distinct start/end x and y) and ``pixel_* = int(round(P @ world))``.
Some frames carry an id gap (fixed by ``read_json``'s renumbering) or one extra lane that
``read_json`` filters out (one marker, or a span < 20 px; not painted in the image). The marking
paint in the image is exactly the official 0.1 m label quad, so the label is learnable.

Output depends only on ``(seed, split, recording, frame)``: generation is deterministic.
"""

from __future__ import annotations

import calendar
import datetime
import json
import os
from collections.abc import Sequence

import cv2
import numpy as np
from absl import logging

from data_pipelines.formats import llamas
from data_pipelines.synthetic import common, scenes
from data_pipelines.synthetic.scenes import WHITE_PAINT, YELLOW_PAINT
from data_pipelines.util import encode_png, write_file_atomic

FILES = common.GeneratorFiles("llamas", version=1)
MARKER_FILE = FILES.marker_file
IN_PROGRESS_FILE = FILES.in_progress_file
read_marker = FILES.read_marker
in_progress = FILES.in_progress
MIN_LANE_HEIGHT = 20  # official read_json default

_ROADS = ("280S", "280N", "101N", "101S", "85N", "85S", "17S", "237E")
_ORDINALS = ("1st", "2nd", "3rd", "4th")


def generator_params(
    num_train: int = 64,
    num_valid: int = 16,
    num_test: int = 8,
    seed: int = 0,
    image_wh: Sequence[int] = llamas.IMAGE_WH,
) -> dict:
    """Validated, canonical generator parameters (the content of ``synthetic_llamas.json``)."""
    params = FILES.base_params(num_train, num_valid, num_test, seed)
    w, h = common.image_wh_ints(image_wh)
    if w < 64 or h < 48:
        raise ValueError(f"image_wh must be at least (64, 48) to hold lanes, got {image_wh!r}")
    return {**params, "image_wh": [w, h]}


# ----------------------------------------------------------------------------------------------
# Scene and label construction.


def _recording_plan(n: int) -> list[int]:
    """Frames per recording: 1 recording up to 8 frames, 2 up to 32, else 3."""
    n_rec = 1 if n <= 8 else (2 if n <= 32 else 3)
    base, extra = divmod(n, n_rec)
    return [base + (1 if i < extra else 0) for i in range(n_rec)]


def _recording_name(rng: np.random.Generator, split_idx: int, rec_idx: int) -> str:
    start = datetime.datetime(2014, 12, 22, 13, 22, 35)
    when = start + datetime.timedelta(
        days=40 * split_idx + 5 * rec_idx + int(rng.integers(0, 4)),
        seconds=int(rng.integers(0, 6 * 3600)),
    )
    road = _ROADS[int(rng.integers(len(_ROADS)))]
    ordinal = _ORDINALS[int(rng.integers(len(_ORDINALS)))]
    return f"images-{when:%Y-%m-%d-%H-%M-%S}_mapping_{road}_{ordinal}_lane"


def _timestamps(rng: np.random.Generator, rec_name: str, n: int) -> list[str]:
    """``<sec>_<10 digits>`` names, increasing (units of 1e-10 s, like the real dataset)."""
    when = datetime.datetime.strptime(rec_name[7:26], "%Y-%m-%d-%H-%M-%S")
    units = calendar.timegm(when.timetuple()) * 10**10 + int(rng.integers(0, 10**7)) * 1000
    out = []
    for _ in range(n):
        units += int(rng.integers(5 * 10**5, 3 * 10**6)) * 1000  # 0.05 .. 0.3 s apart
        out.append(f"{units // 10**10}_{units % 10**10:010d}")
    return out


def _rounded_matrix(camera: scenes.PinholeCamera) -> list[list[float]]:
    return [[round(float(v), 4) for v in row] for row in camera.matrix]


def _pixel(p: np.ndarray, xyz: Sequence[float]) -> dict:
    q = p @ np.asarray(xyz, dtype=np.float64)
    return {"x": int(round(q[0] / q[2])), "y": int(round(q[1] / q[2]))}


def _lane_markers(
    p: np.ndarray,
    camera: scenes.PinholeCamera,
    curve: scenes.RoadCurve,
    lateral: float,
    intervals: Sequence[tuple[float, float]],
    check_rows: bool = True,
) -> list[dict]:
    """The json markers of one divider: pieces visible in the image, ordered near to far."""
    w, h = camera.image_wh
    markers = []
    for z0, z1 in intervals:
        ws = [round(float(curve.x_at(lateral, z0)), 4), round(camera.height_m, 4), round(z0, 4)]
        we = [round(float(curve.x_at(lateral, z1)), 4), round(camera.height_m, 4), round(z1, 4)]
        ps, pe = _pixel(p, ws), _pixel(p, we)
        if check_rows and not (0 <= pe["y"] < ps["y"] <= h - 1):
            continue
        half = p[0, 0] * llamas.MARKER_WIDTH_M / ws[2] / 2.0 + 1.0
        if max(ps["x"], pe["x"]) + half < 0 or min(ps["x"], pe["x"]) - half > w - 1:
            continue
        markers.append(
            {
                "world_start": dict(zip("xyz", ws, strict=True)),
                "world_end": dict(zip("xyz", we, strict=True)),
                "pixel_start": ps,
                "pixel_end": pe,
            }
        )
    return markers


def lane_meets_official_constraints(markers: Sequence[dict], image_h: int) -> bool:
    """True if a lane survives ``read_json`` and suits the official spline scripts.

    >= 2 markers; ``pixel_start.y`` span >= 20; every ``pixel_start.y`` in [0, H-1] and above
    ``pixel_end.y``; at least one marker with distinct start/end x and y.
    """
    if len(markers) < 2:
        return False
    ys = [m["pixel_start"]["y"] for m in markers]
    if max(ys) - min(ys) < MIN_LANE_HEIGHT:
        return False
    if not all(0 <= m["pixel_end"]["y"] < m["pixel_start"]["y"] <= image_h - 1 for m in markers):
        return False
    return any(
        m["pixel_start"]["x"] != m["pixel_end"]["x"]
        and m["pixel_start"]["y"] != m["pixel_end"]["y"]
        for m in markers
    )


def make_frame(
    rng: np.random.Generator, camera: scenes.PinholeCamera, road: dict
) -> tuple[np.ndarray, dict]:
    """Draws one frame and its LLAMAS label.

    Args:
        rng: the frame's random generator.
        camera: the recording's camera.
        road: the recording's road layout (``n_lanes``, ``lane_width``, ``dash_m``, ``gap_m``,
            ``left_edge_yellow``).

    Returns:
        (RGB uint8 image (H, W, 3), label json dict without ``image_name``).
    """
    w, h = camera.image_wh
    p = np.array(_rounded_matrix(camera))
    n_lanes, lane_w = road["n_lanes"], road["lane_width"] * float(rng.uniform(0.98, 1.02))
    ego = int(rng.integers(n_lanes))
    offset = float(np.clip(rng.normal(0.0, 0.25), -0.8, 0.8))
    heading = float(rng.normal(0.0, 0.008))
    if rng.random() < 0.15:  # lane change: far off-centre and drifting across
        side = 1.0 if rng.random() < 0.5 else -1.0
        offset = side * float(rng.uniform(0.8, 1.6))
        heading = -side * float(rng.uniform(0.015, 0.04))
    curvature = float(rng.uniform(-6e-4, 6e-4)) if rng.random() < 0.7 else 0.0
    curve = scenes.RoadCurve(heading=heading, curvature=curvature)

    z_near = float(camera.depth_of_row(h - 1.45))
    z_far = min(
        float(rng.uniform(50.0, 80.0)), float(camera.depth_of_row(camera.cy + max(2.0, 0.025 * h)))
    )

    laterals = [(k - ego - 0.5) * lane_w - offset for k in range(n_lanes + 1)]
    left = sorted((x for x in laterals if x < 0), reverse=True)
    right = sorted(x for x in laterals if x >= 0)
    ids = {x: f"l{i}" for i, x in enumerate(left)} | {x: f"r{i}" for i, x in enumerate(right)}

    img = scenes.draw_background(camera, curve, (laterals[0] - 0.6, laterals[-1] + 0.6), rng)
    lanes = []
    for k, lateral in enumerate(laterals):
        dashed = 0 < k < n_lanes
        intervals = scenes.stripe_intervals(
            z_near, z_far, dashed, rng, dash_m=road["dash_m"], gap_m=road["gap_m"]
        )
        markers = _lane_markers(p, camera, curve, lateral, intervals)
        if not lane_meets_official_constraints(markers, h):
            continue  # neither labelled nor painted, so image and label agree
        colour = YELLOW_PAINT if (k == 0 and road["left_edge_yellow"]) else WHITE_PAINT
        colour = tuple(c * float(rng.uniform(0.85, 1.0)) for c in colour)
        polys = [
            q
            for m in markers
            if (q := llamas.marker_polygon(p, m["world_start"], m["world_end"])) is not None
        ]
        scenes.paint_polygons(img, polys, colour, alpha=float(rng.uniform(0.75, 1.0)))
        lanes.append({"lane_id": ids[lateral], "markers": markers})

    _add_id_gap(lanes, rng)
    extra = _filtered_lane(p, camera, curve, laterals, lane_w, lanes, z_near, z_far, rng)
    if extra is not None:
        lanes.append(extra)
    order = rng.permutation(len(lanes))
    lanes = [lanes[i] for i in order]
    for lane in lanes:
        for j, m in enumerate(lane["markers"]):
            # Keys in the order of the real files: id first.
            lane["markers"][j] = {"lane_marker_id": f"{lane['lane_id']}_{j:03d}", **m}

    lane_centres = [(k - ego) * lane_w - offset for k in range(n_lanes)]
    count_p = [0.35, 0.35, 0.2, 0.1]
    scenes.add_shadows(img, camera, curve, rng, count=int(rng.choice(4, p=count_p)))
    scenes.add_occluders(img, camera, curve, rng, lane_centres, int(rng.choice(4, p=count_p)))
    img = scenes.add_sensor_noise(img, rng, sigma=float(rng.uniform(0.5, 3.0)))
    return scenes.apply_lighting(img, rng), {"projection_matrix": p.tolist(), "lanes": lanes}


def _add_id_gap(lanes: list[dict], rng: np.random.Generator) -> None:
    """Sometimes shifts the outermost id of a side by one (l1 -> l2), leaving a gap."""
    if rng.random() >= 0.2:
        return
    side = "l" if rng.random() < 0.5 else "r"
    mine = [lane for lane in lanes if lane["lane_id"][0] == side]
    if len(mine) >= 2:
        outer = max(mine, key=lambda lane: int(lane["lane_id"][1:]))
        outer["lane_id"] = f"{side}{int(outer['lane_id'][1:]) + 1}"


def _filtered_lane(p, camera, curve, laterals, lane_w, lanes, z_near, z_far, rng) -> dict | None:
    """Sometimes an extra, unpainted lane that read_json must drop (1 marker or span < 20 px)."""
    if rng.random() >= 0.3:
        return None
    h = camera.image_wh[1]
    side = "l" if rng.random() < 0.5 else "r"
    lateral = laterals[0] - lane_w if side == "l" else laterals[-1] + lane_w
    used = [int(lane["lane_id"][1:]) for lane in lanes if lane["lane_id"][0] == side]
    lane_id = f"{side}{max(used, default=-1) + 1}"
    if rng.random() < 0.5:
        # Short lane: far pieces whose start rows lie within < 20 px of each other.
        z0 = float(camera.depth_of_row(camera.cy + (MIN_LANE_HEIGHT - 2) * 1.6))
        z0 = min(max(z0, z_near), z_far - 6.0)
        intervals = [(z0 + 3.0 * i, z0 + 3.0 * i + 1.5) for i in range(3)]
        markers = _lane_markers(p, camera, curve, lateral, intervals, check_rows=False)
        ys = [m["pixel_start"]["y"] for m in markers]
        if len(markers) >= 2 and max(ys) - min(ys) < MIN_LANE_HEIGHT:
            return {"lane_id": lane_id, "markers": markers}
    intervals = [(z_near + 2.0, z_near + 4.0)]
    markers = _lane_markers(p, camera, curve, lateral, intervals, check_rows=False)
    if len(markers) != 1 or not (0 <= markers[0]["pixel_start"]["y"] <= h - 1):
        return None
    return {"lane_id": lane_id, "markers": markers}


# ----------------------------------------------------------------------------------------------
# Writing.


def generate_llamas(
    out_dir: str | os.PathLike,
    num_train: int = 64,
    num_valid: int = 16,
    num_test: int = 8,
    seed: int = 0,
    image_wh: Sequence[int] = llamas.IMAGE_WH,
) -> None:
    """Writes a synthetic LLAMAS dataset into ``out_dir`` (see the module docstring).

    ``out_dir`` should be empty, missing, or an earlier generation with the same parameters
    (files are overwritten atomically, so concurrent or interrupted runs leave no torn files).
    ``synthetic_llamas.json`` is written last and marks a finished generation.

    Args:
        out_dir: dataset root to create.
        num_train: frames in ``train``.
        num_valid: frames in ``valid``.
        num_test: frames in ``test`` (written without labels).
        seed: generator seed; the output is a pure function of the arguments.
        image_wh: frame size (width, height); LLAMAS is (1276, 717).
    """
    params = generator_params(num_train, num_valid, num_test, seed, image_wh)
    out_dir = os.fspath(out_dir)
    FILES.start(out_dir, params)
    counts = {"train": num_train, "valid": num_valid, "test": num_test}
    w, h = params["image_wh"]
    tasks = []
    for split_idx, (split, n) in enumerate(counts.items()):
        for rec_idx, n_frames in enumerate(_recording_plan(n)):
            rec_rng = np.random.default_rng([seed, split_idx, rec_idx, 0, 0])
            rec = _recording_name(rec_rng, split_idx, rec_idx)
            camera = scenes.make_camera((w, h), rec_rng)
            road = {
                "n_lanes": int(rec_rng.choice([2, 3, 4], p=[0.25, 0.45, 0.3])),
                "lane_width": float(rec_rng.uniform(3.4, 3.9)),
                "dash_m": float(rec_rng.uniform(2.5, 3.5)),
                "gap_m": float(rec_rng.uniform(7.0, 10.0)),
                "left_edge_yellow": bool(rec_rng.random() < 0.5),
            }
            for frame_idx, ts in enumerate(_timestamps(rec_rng, rec, n_frames)):
                frame_seed = [seed, split_idx, rec_idx, 1, frame_idx]
                tasks.append((split, rec, ts, frame_seed, camera, road))

    def work(task) -> None:
        split, rec, ts, frame_seed, camera, road = task
        rgb, label = make_frame(np.random.default_rng(frame_seed), camera, road)
        _write_frame(out_dir, split, rec, ts, rgb, label)

    common.map_frames(work, tasks, "synthetic LLAMAS frames")
    FILES.finish(out_dir, params)
    logging.info("synthetic LLAMAS written to %s", out_dir)


def _encode_photo_png(img: np.ndarray) -> bytes:
    return encode_png(img, photo=True)


def _write_frame(out_dir: str, split: str, rec: str, ts: str, rgb: np.ndarray, label: dict) -> None:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    color_path = os.path.join(out_dir, "color_images", split, rec, ts + llamas.COLOR_SUFFIX)
    gray_path = os.path.join(out_dir, "grayscale_images", split, rec, ts + llamas.GRAY_SUFFIX)
    write_file_atomic(color_path, _encode_photo_png(bgr))
    write_file_atomic(gray_path, _encode_photo_png(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)))
    if split == "test":
        return  # like the real dataset: test labels are not public
    doc = {"image_name": f"{split}/{rec}/{ts}{llamas.COLOR_SUFFIX}", **label}
    label_path = os.path.join(out_dir, "labels", split, rec, ts + ".json")
    write_file_atomic(label_path, json.dumps(doc, indent=1).encode())


GENERATOR = common.Generator(FILES, generator_params, generate_llamas)
