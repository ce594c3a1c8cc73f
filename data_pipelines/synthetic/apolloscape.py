"""Synthetic ApolloScape lane-marking segmentation in the exact on-disk format.

``generate_apolloscape(out_dir, ...)`` writes (``W x H`` = 3384 x 2710 times ``scale``)::

    ColorImage_road0{2,3,4}/ColorImage/Record0NN/Camera {5,6}/<YYMMDD_HHMMSSmmm>_Camera_{5,6}.jpg
    Labels_road0{2,3,4}/Label/Record0NN/Camera {5,6}/<same>_Camera_{5,6}_bin.png
    ColorImage_road05/ColorImage/Record0NN/Camera {5,6}/<...>.jpg             (test, no labels)
    list/train.txt   <image> <label>           (2 fields)
    list/val.txt     <image> <label> 1 1 1 1   (6 fields, like IntRA-KD's val.txt)
    list/test.txt    <image>                   (image only)
    synthetic_apolloscape.json                 (generator parameters; written last)

List paths are relative to the root and spell camera folders ``Camera_N`` like IntRA-KD's lists
(the folders on disk are ``Camera N``, with a space, like the release), so the reader's folder
spelling resolution is exercised. Splits follow the reader's scan rule: ``valid`` is road04
Record015 (and Record017 when there are more than 8 valid frames), ``train`` is road02/03/04
Record001..Record002, ``test`` is road05.

Labels are palette PNGs with index = class id and palette = the table colours (other entries
black), so PIL yields ids while OpenCV/TF yield the table colours (DATASETS.md 3.3, 5). Every
frame is a pinhole view (focal ~0.68 W, horizon ~0.52 H, camera 1.8 m above the road) of a 2-4
lane road: solid/double yellow or white edges, dashed white/yellow or solid dividers, and per
frame a random subset of arrows (thru, left, right, thru-left, thru-right, left-right), stop
lines, zebra crossings, speed-reduction bars, no-parking boxes, parking bays, chevrons and
"other" glyphs; small worn-paint blobs are labelled noise (249). The ego hood (rows from 2310,
columns from 583, as in the official sample GT) is labelled 255 and rows above the IntRA-KD crop
line (1700) are void, as in the released labels. Paint in the image is the label polygon drawn
anti-aliased, so labels are learnable. Output depends only on the arguments.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Sequence

import cv2
import numpy as np
from absl import logging
from PIL import Image

from data_pipelines.formats import apolloscape as apollo
from data_pipelines.synthetic import common, scenes
from data_pipelines.synthetic.scenes import WHITE_PAINT, YELLOW_PAINT
from data_pipelines.util import write_file_atomic

FILES = common.GeneratorFiles("apolloscape", version=1)
MARKER_FILE = FILES.marker_file
IN_PROGRESS_FILE = FILES.in_progress_file
read_marker = FILES.read_marker
in_progress = FILES.in_progress
LIST_FILES = dict(apollo.DEFAULT_LIST_FILES)
MIN_SCALE = 0.02
# Ego-hood region of the official sample ground truth (full-size pixels).
HOOD_TOP = 2310
HOOD_LEFT = 583

_TRAIN_RECORDS = (
    ("road02", "Record001"),
    ("road03", "Record001"),
    ("road04", "Record001"),
    ("road02", "Record002"),
    ("road03", "Record002"),
    ("road04", "Record002"),
)
_VALID_RECORDS = (("road04", "Record015"), ("road04", "Record017"))
_TEST_RECORDS = (("road05", "Record001"), ("road05", "Record002"))
_ROAD_DATES = {"road02": "170927", "road03": "171012", "road04": "171206", "road05": "180116"}
_ID = {label.name: label.id for label in apollo.LABELS}


def scaled_geometry(scale: float) -> dict:
    """Frame size and the crop/hood rows at ``scale`` (full size: 3384 x 2710, crop 1700)."""
    h, w = apollo.IMAGE_HW
    return {
        "image_wh": [int(round(w * scale)), int(round(h * scale))],
        "crop_top": int(round(apollo.CROP_TOP * scale)),
        "hood_top": int(round(HOOD_TOP * scale)),
        "hood_left": int(round(HOOD_LEFT * scale)),
    }


def generator_params(
    num_train: int = 32, num_valid: int = 8, num_test: int = 4, seed: int = 0, scale: float = 1.0
) -> dict:
    """Validated, canonical generator parameters (the content of ``synthetic_apolloscape.json``)."""
    params = FILES.base_params(num_train, num_valid, num_test, seed)
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a number in [{MIN_SCALE}, 1], got {scale!r}") from None
    if not (MIN_SCALE <= scale <= 1.0):
        raise ValueError(f"scale must be in [{MIN_SCALE}, 1] (1 = 3384 x 2710), got {scale!r}")
    return {**params, "scale": scale, **scaled_geometry(scale), "list_files": LIST_FILES}


# ----------------------------------------------------------------------------------------------
# Frame plan and names.


@dataclasses.dataclass(frozen=True)
class FramePlan:
    """Where one frame goes: split, road, record, camera number, timestamp, seeds."""

    split: str
    road: str
    record: str
    camera: int
    ts: str
    record_seed: tuple[int, ...]
    frame_seed: tuple[int, ...]

    @property
    def stem(self) -> str:
        """``<ts>_Camera_N``."""
        return f"{self.ts}_Camera_{self.camera}"

    def image_rel(self, camera_dir: str | None = None) -> str:
        """Image path relative to the root ('/'-separated); ``camera_dir`` overrides the folder."""
        cam = camera_dir or f"Camera {self.camera}"
        return f"ColorImage_{self.road}/ColorImage/{self.record}/{cam}/{self.stem}.jpg"

    def label_rel(self, camera_dir: str | None = None) -> str:
        """Label path relative to the root ('/'-separated)."""
        cam = camera_dir or f"Camera {self.camera}"
        return f"Labels_{self.road}/Label/{self.record}/{cam}/{self.stem}{apollo.LABEL_SUFFIX}"


def _split_counts(n: int, records: Sequence[tuple[str, str]], per_record: int) -> list[int]:
    n_rec = min(len(records), max(1, math.ceil(n / per_record)))
    base, extra = divmod(n, n_rec)
    return [base + (1 if i < extra else 0) for i in range(n_rec)]


def _timestamps(rng: np.random.Generator, date: str, n: int) -> list[str]:
    """``YYMMDD_HHMMSSmmm`` names, increasing by 0.1 .. 0.6 s."""
    ms = int(rng.integers(6 * 3600, 16 * 3600)) * 1000 + int(rng.integers(0, 1000))
    out = []
    for _ in range(n):
        ms += int(rng.integers(100, 600))
        h, rem = divmod(ms, 3600_000)
        m, rem = divmod(rem, 60_000)
        s, milli = divmod(rem, 1000)
        out.append(f"{date}_{h:02d}{m:02d}{s:02d}{milli:03d}")
    return out


def plan_frames(num_train: int, num_valid: int, num_test: int, seed: int) -> list[FramePlan]:
    """Every frame of a generation, in a fixed order (see the module docstring)."""
    plans = []
    layout = (
        ("train", num_train, _TRAIN_RECORDS, 32),
        ("valid", num_valid, _VALID_RECORDS, 8),
        ("test", num_test, _TEST_RECORDS, 8),
    )
    for split_idx, (split, n, records, per_record) in enumerate(layout):
        for rec_idx, n_frames in enumerate(_split_counts(n, records, per_record)):
            road, record = records[rec_idx]
            rec_seed = (seed, split_idx, rec_idx, 0, 0)
            rng = np.random.default_rng(rec_seed)
            first_camera = int(rng.integers(2))
            for frame_idx, ts in enumerate(_timestamps(rng, _ROAD_DATES[road], n_frames)):
                plans.append(
                    FramePlan(
                        split=split,
                        road=road,
                        record=record,
                        camera=5 + (first_camera + frame_idx) % 2,
                        ts=ts,
                        record_seed=rec_seed,
                        frame_seed=(seed, split_idx, rec_idx, 1, frame_idx),
                    )
                )
    return plans


# ----------------------------------------------------------------------------------------------
# Scene drawing.


def make_camera(image_wh: Sequence[int], rng: np.random.Generator) -> scenes.PinholeCamera:
    """ApolloScape-like view: focal ~0.68 W, horizon ~0.52 H, 1.8 m above the road."""
    w, h = int(image_wh[0]), int(image_wh[1])
    f = 0.68 * w * (1.0 + float(rng.uniform(-0.03, 0.03)))
    return scenes.PinholeCamera(
        fx=f,
        fy=f,
        cx=(w - 1) / 2.0 + float(rng.uniform(-0.01, 0.01)) * w,
        cy=(0.52 + float(rng.uniform(-0.015, 0.015))) * h,
        height_m=1.8 + float(rng.uniform(-0.1, 0.1)),
        image_wh=(w, h),
    )


def make_road(rng: np.random.Generator) -> dict:
    """A recording's road: lanes, divider types, dash pattern."""
    n_lanes = int(rng.choice([2, 3, 4], p=[0.3, 0.4, 0.3]))
    left_edge = str(rng.choice(["s_y_d", "ds_y_dn", "s_w_d", "ds_w_dn"], p=[0.4, 0.3, 0.2, 0.1]))
    inner = [
        str(rng.choice(["b_w_g", "s_w_d", "b_y_g"], p=[0.75, 0.15, 0.1]))
        for _ in range(n_lanes - 1)
    ]
    return {
        "n_lanes": n_lanes,
        "lane_width": float(rng.uniform(3.4, 3.8)),
        "dividers": [left_edge, *inner, "s_w_d"],
        "dash_m": float(rng.uniform(4.0, 6.0)),
        "gap_m": float(rng.uniform(6.0, 9.0)),
    }


class _Canvas:
    """Paints ground-plane polygons into the image (anti-aliased) and the id map (exact)."""

    def __init__(self, camera: scenes.PinholeCamera, curve: scenes.RoadCurve, img, ids):
        self.camera = camera
        self.curve = curve
        self.img = img  # float32 (H, W, 3) RGB
        self.ids = ids  # uint8 (H, W)
        w, h = camera.image_wh
        self._limit = 8 * max(w, h)

    def project(self, lateral_z: np.ndarray) -> np.ndarray:
        """(N, 2) road coordinates (lateral, z) -> int32 (N, 2) pixels (x, y)."""
        lat, z = lateral_z[:, 0], lateral_z[:, 1]
        xyz = np.stack([self.curve.x_at(lat, z), np.full_like(z, self.camera.height_m), z], 1)
        px = np.round(self.camera.project(xyz))
        return np.clip(px, -self._limit, self._limit).astype(np.int32)

    def draw(
        self,
        pieces: Sequence[np.ndarray],
        class_name: str,
        colour: Sequence[float],
        alpha: float,
    ) -> None:
        """Draws convex road-coordinate polygons with class ``class_name`` and paint ``colour``."""
        polys = [self.project(np.asarray(p, np.float64)) for p in pieces]
        polys = [p for p in polys if p[:, 1].max() >= 0]  # pieces wholly above the image
        if not polys:
            return
        scenes.paint_polygons(self.img, polys, colour, alpha=alpha)
        cv2.fillPoly(self.ids, polys, int(_ID[class_name]), lineType=cv2.LINE_8)


def _rect(lat0: float, lat1: float, z0: float, z1: float) -> np.ndarray:
    return np.array([[lat0, z0], [lat1, z0], [lat1, z1], [lat0, z1]], np.float64)


def _line_pieces(
    lateral: float, width: float, intervals: Sequence[tuple[float, float]], piece_m: float = 2.0
) -> list[np.ndarray]:
    """Quads of a longitudinal line, cut into short pieces so that they follow the curve."""
    out = []
    for z0, z1 in intervals:
        n = max(1, math.ceil((z1 - z0) / piece_m))
        edges = np.linspace(z0, z1, n + 1)
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            out.append(_rect(lateral - width / 2, lateral + width / 2, a, b))
    return out


def _arrow_pieces(kind: str, centre: float, z0: float, length: float) -> list[np.ndarray]:
    """Convex pieces of an arrow painted in a lane, pointing away from the camera."""
    shaft_w, head_w, head_l, arm_d = 0.2, 0.7, 1.4, 0.5

    def t(u0, u1, v0, v1):
        return _rect(centre + u0, centre + u1, z0 + v0, z0 + v1)

    def thru() -> list[np.ndarray]:
        tip = np.array(
            [
                [centre - head_w / 2, z0 + length - head_l],
                [centre + head_w / 2, z0 + length - head_l],
                [centre, z0 + length],
            ]
        )
        return [t(-shaft_w / 2, shaft_w / 2, 0.0, length - head_l), tip]

    def turn(side: float, v: float) -> list[np.ndarray]:
        # An arm from the shaft towards `side` (-1 left, +1 right) at depth v, then a head.
        arm_end = 0.75 * side
        arm = t(min(0.0, arm_end), max(0.0, arm_end), v, v + arm_d)
        head = np.array(
            [
                [centre + arm_end, z0 + v - 0.35],
                [centre + arm_end, z0 + v + arm_d + 0.35],
                [centre + arm_end + 0.55 * side, z0 + v + arm_d / 2],
            ]
        )
        return [arm, head]

    shaft_top = length - 0.4
    if kind == "a_w_t":
        return thru()
    if kind in ("a_w_l", "a_w_r", "a_w_lr"):
        pieces = [t(-shaft_w / 2, shaft_w / 2, 0.0, shaft_top)]
        if kind in ("a_w_l", "a_w_lr"):
            pieces += turn(-1.0, shaft_top - arm_d)
        if kind in ("a_w_r", "a_w_lr"):
            pieces += turn(1.0, shaft_top - arm_d)
        return pieces
    if kind in ("a_w_tl", "a_w_tr"):
        return thru() + turn(-1.0 if kind == "a_w_tl" else 1.0, 0.45 * length)
    raise ValueError(f"unknown arrow kind {kind!r}")


_ARROWS = ("a_w_t", "a_w_l", "a_w_r", "a_w_tl", "a_w_tr", "a_w_lr")


def _paint(rng: np.random.Generator, base: Sequence[float]) -> tuple[tuple[float, ...], float]:
    """A worn paint colour and opacity."""
    shade = float(rng.uniform(0.85, 1.0))
    return tuple(c * shade for c in base), float(rng.uniform(0.75, 1.0))


def make_frame(
    rng: np.random.Generator, camera: scenes.PinholeCamera, road: dict, geometry: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Draws one frame.

    Args:
        rng: the frame's random generator.
        camera: the recording's camera.
        road: the recording's road (``make_road``).
        geometry: ``scaled_geometry`` of the generation (crop and hood rows).

    Returns:
        (RGB uint8 image (H, W, 3), uint8 (H, W) class ids from the table).
    """
    w, h = camera.image_wh
    n_lanes, lane_w = road["n_lanes"], road["lane_width"] * float(rng.uniform(0.98, 1.02))
    ego = int(rng.integers(n_lanes))
    offset = float(np.clip(rng.normal(0.0, 0.3), -0.9, 0.9))
    heading = float(rng.normal(0.0, 0.01))
    curvature = float(rng.uniform(-1.5e-3, 1.5e-3)) if rng.random() < 0.6 else 0.0
    curve = scenes.RoadCurve(heading=heading, curvature=curvature)
    laterals = [(k - ego - 0.5) * lane_w - offset for k in range(n_lanes + 1)]
    centres = [(k - ego) * lane_w - offset for k in range(n_lanes)]
    left, right = laterals[0], laterals[-1]

    z_near = float(camera.depth_of_row(h - 1.45))
    z_far = min(80.0, float(camera.depth_of_row(camera.cy + max(2.0, 0.02 * h))))
    img = scenes.draw_background(camera, curve, (left - 0.8, right + 0.8), rng)
    ids = np.zeros((h, w), np.uint8)
    canvas = _Canvas(camera, curve, img, ids)

    # Transverse markings first decide where longitudinal lines stop (at the stop line).
    stop_z = float(rng.uniform(7.0, 12.0)) if rng.random() < 0.3 else None
    zebra = rng.random() < 0.3
    far = stop_z if stop_z is not None else z_far

    for k, (lateral, kind) in enumerate(zip(laterals, road["dividers"], strict=True)):
        yellow = "_y_" in kind
        colour, alpha = _paint(rng, YELLOW_PAINT if yellow else WHITE_PAINT)
        width = float(rng.uniform(0.15, 0.2))
        dashed = kind.startswith("b_")
        intervals = scenes.stripe_intervals(
            z_near, far if 0 < k < n_lanes else z_far, dashed, rng, road["dash_m"], road["gap_m"]
        )
        if kind.startswith("ds_"):  # double solid: two lines, one line-width apart
            pieces = _line_pieces(lateral - width, width, intervals)
            pieces += _line_pieces(lateral + width, width, intervals)
        else:
            pieces = _line_pieces(lateral, width, intervals)
        canvas.draw(pieces, kind, colour, alpha)

    if stop_z is not None:
        colour, alpha = _paint(rng, WHITE_PAINT)
        canvas.draw([_rect(laterals[0], right, stop_z, stop_z + 0.4)], "s_w_s", colour, alpha)
    if zebra:
        z0 = (stop_z + 1.5) if stop_z is not None else float(rng.uniform(6.0, 11.0))
        depth = float(rng.uniform(3.0, 4.5))
        colour, alpha = _paint(rng, WHITE_PAINT)
        stripes = []
        x = left - 1.0 + float(rng.uniform(0.0, 0.6))
        while x < right + 1.0:
            stripes.append(_rect(x, x + 0.45, z0, z0 + depth))
            x += 1.05
        canvas.draw(stripes, "c_wy_z", colour, alpha)

    if rng.random() < 0.65:  # arrows in 1..n lanes, before the stop line
        lanes = rng.permutation(n_lanes)[: int(rng.integers(1, n_lanes + 1))]
        length = float(rng.uniform(4.0, 5.5))
        z0 = float(rng.uniform(4.5, 8.0))
        if stop_z is not None:
            z0 = min(z0, stop_z - length - 0.8)
        colour, alpha = _paint(rng, WHITE_PAINT)
        for lane in lanes:
            kind = str(rng.choice(_ARROWS))
            canvas.draw(_arrow_pieces(kind, centres[lane], z0, length), kind, colour, alpha)

    if rng.random() < 0.15:  # speed-reduction bars across the ego lane
        colour, alpha = _paint(rng, WHITE_PAINT)
        z0 = float(rng.uniform(5.0, 9.0))
        lo, hi = laterals[ego] + 0.3, laterals[ego + 1] - 0.3
        bars = [_rect(lo, hi, z0 + 1.0 * i, z0 + 1.0 * i + 0.45) for i in range(4)]
        canvas.draw(bars, "b_n_sr", colour, alpha)

    if rng.random() < 0.15:  # yellow no-parking box with a cross on the right shoulder
        colour, alpha = _paint(rng, YELLOW_PAINT)
        x0, x1 = right + 0.4, right + 2.6
        z0 = float(rng.uniform(5.0, 9.0))
        z1 = z0 + float(rng.uniform(4.0, 6.0))
        lw = 0.2
        pieces = [
            _rect(x0, x1, z0, z0 + lw),
            _rect(x0, x1, z1 - lw, z1),
            _rect(x0, x0 + lw, z0, z1),
            _rect(x1 - lw, x1, z0, z1),
            np.array([[x0, z0], [x0 + lw, z0], [x1, z1], [x1 - lw, z1]]),
            np.array([[x1 - lw, z0], [x1, z0], [x0 + lw, z1], [x0, z1]]),
        ]
        canvas.draw(pieces, "r_wy_np", colour, alpha)
    elif rng.random() < 0.2:  # parking bays on the right shoulder
        colour, alpha = _paint(rng, WHITE_PAINT)
        x0, x1 = right + 0.3, right + 2.8
        z0 = float(rng.uniform(4.5, 7.0))
        pieces = [_rect(x1 - 0.15, x1, z0, z0 + 16.0)]
        pieces += [_rect(x0, x1, z0 + 5.5 * i, z0 + 5.5 * i + 0.15) for i in range(4)]
        canvas.draw(pieces, "s_w_p", colour, alpha)

    if rng.random() < 0.2:  # "other" markings: glyph-like blocks in a lane
        colour, alpha = _paint(rng, WHITE_PAINT)
        c = centres[int(rng.integers(n_lanes))]
        z0 = float(rng.uniform(5.0, 10.0))
        blocks = []
        for i in range(int(rng.integers(2, 4))):
            zz = z0 + 1.6 * i
            blocks.append(_rect(c - 0.6, c + 0.6, zz, zz + 0.25))
            blocks.append(_rect(c - 0.6, c - 0.4, zz, zz + 1.2))
        canvas.draw(blocks, "om_n_n", colour, alpha)

    if rng.random() < 0.1:  # chevron (diverging area) stripes left of the road (ignored class)
        colour, alpha = _paint(rng, WHITE_PAINT)
        z0 = float(rng.uniform(5.0, 8.0))
        pieces = [
            np.array(
                [
                    [left - 2.0, z0 + 1.5 * i],
                    [left - 1.7, z0 + 1.5 * i],
                    [left - 0.4, z0 + 1.5 * i + 1.0],
                    [left - 0.7, z0 + 1.5 * i + 1.0],
                ]
            )
            for i in range(4)
        ]
        canvas.draw(pieces, "s_w_c", colour, alpha)

    for _ in range(int(rng.choice(4, p=[0.3, 0.3, 0.25, 0.15]))):  # worn paint: noise (249)
        cx = float(rng.uniform(left, right))
        cz = float(rng.uniform(5.0, 13.0))
        n = 8
        ang = np.sort(rng.uniform(0.0, 2 * np.pi, n))
        rad = rng.uniform(0.15, 0.5, n)
        blob = np.stack([cx + rad * np.cos(ang), cz + 1.5 * rad * np.sin(ang)], 1)
        hull = cv2.convexHull(blob.astype(np.float32)).reshape(-1, 2).astype(np.float64)
        canvas.draw([hull], "noise", (175.0, 175.0, 170.0), float(rng.uniform(0.25, 0.45)))

    count_p = [0.5, 0.3, 0.15, 0.05]
    scenes.add_shadows(img, camera, curve, rng, count=int(rng.choice(4, p=count_p)))
    scenes.add_occluders(img, camera, curve, rng, centres, int(rng.choice(4, p=[0.6, 0.3, 0.1, 0])))

    # Ego hood: a dark panel, labelled ignored (255) like the official sample ground truth.
    top, lft = geometry["hood_top"], geometry["hood_left"]
    if top < h and lft < w:
        shade = np.linspace(60.0, 25.0, h - top, dtype=np.float32)[:, None, None]
        img[top:, lft:] = shade * np.array([1.0, 1.02, 1.08], np.float32)
        ids[top:, lft:] = apollo.IGNORED_ID
    ids[: geometry["crop_top"]] = apollo.VOID_ID  # released labels are void above the crop

    img = scenes.add_sensor_noise(img, rng, sigma=float(rng.uniform(0.5, 3.0)))
    return scenes.apply_lighting(img, rng), ids


# ----------------------------------------------------------------------------------------------
# Writing.


def encode_label_png(ids_hw: np.ndarray) -> bytes:
    """Palette PNG of class ids: index = id, palette = table colours (other entries black)."""
    ids_hw = np.asarray(ids_hw)
    if ids_hw.ndim != 2 or ids_hw.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W) ids, got {ids_hw.dtype} {ids_hw.shape}")
    img = Image.fromarray(ids_hw)
    img.putpalette(apollo.ID_PALETTE.tobytes())  # turns the gray image into a palette one
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _list_text(plans: Sequence[FramePlan], split: str) -> str:
    lines = []
    for p in sorted(plans, key=lambda p: p.image_rel()):
        cam = f"Camera_{p.camera}"  # IntRA-KD's list spelling
        if split == "train":
            lines.append(f"{p.image_rel(cam)} {p.label_rel(cam)}")
        elif split == "valid":
            lines.append(f"{p.image_rel(cam)} {p.label_rel(cam)} 1 1 1 1")
        else:
            lines.append(p.image_rel(cam))
    return "".join(line + "\n" for line in lines)


def generate_apolloscape(
    out_dir: str | os.PathLike,
    num_train: int = 32,
    num_valid: int = 8,
    num_test: int = 4,
    seed: int = 0,
    scale: float = 1.0,
) -> None:
    """Writes a synthetic ApolloScape lane-segmentation dataset (see the module docstring).

    ``out_dir`` should be empty, missing, or an earlier generation with the same parameters
    (files are overwritten atomically, so interrupted runs leave no torn files).
    ``synthetic_apolloscape.json`` is written last and marks a finished generation.

    Args:
        out_dir: dataset root to create.
        num_train: frames in ``train``.
        num_valid: frames in ``valid``.
        num_test: frames in ``test`` (road05, written without labels).
        seed: generator seed; the output is a pure function of the arguments.
        scale: frame size factor (1 = 3384 x 2710); crop and hood rows scale with it.
    """
    params = generator_params(num_train, num_valid, num_test, seed, scale)
    out_dir = os.fspath(out_dir)
    FILES.start(out_dir, params)
    plans = plan_frames(num_train, num_valid, num_test, seed)
    wh = params["image_wh"]
    cameras: dict[tuple[int, ...], tuple[scenes.PinholeCamera, dict]] = {}
    for p in plans:
        if p.record_seed not in cameras:
            rng = np.random.default_rng([*p.record_seed, 7])
            cameras[p.record_seed] = (make_camera(wh, rng), make_road(rng))

    def work(p: FramePlan) -> None:
        camera, road = cameras[p.record_seed]
        rgb, ids = make_frame(np.random.default_rng(p.frame_seed), camera, road, params)
        ok, jpg = cv2.imencode(
            ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92]
        )
        if not ok:
            raise RuntimeError("cv2.imencode failed to encode a JPEG")
        write_file_atomic(os.path.join(out_dir, *p.image_rel().split("/")), jpg.tobytes())
        if p.split != "test":  # road05 labels are not public
            write_file_atomic(
                os.path.join(out_dir, *p.label_rel().split("/")), encode_label_png(ids)
            )

    common.map_frames(work, plans, "synthetic ApolloScape frames")
    for split, rel in LIST_FILES.items():
        text = _list_text([p for p in plans if p.split == split], split)
        write_file_atomic(os.path.join(out_dir, *rel.split("/")), text.encode())
    FILES.finish(out_dir, params)
    logging.info("synthetic ApolloScape written to %s", out_dir)


GENERATOR = common.Generator(FILES, generator_params, generate_apolloscape)
