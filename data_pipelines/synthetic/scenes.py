"""Reusable drawing of synthetic perspective road scenes (numpy + OpenCV, no TF).

Conventions: camera frame with x right, y down, z forward (metres); the road is the plane
``y = camera.height_m``. A lateral road coordinate ``X`` (metres, relative to the camera at z=0)
follows the road's curve: the world point of ``(X, z)`` is ``(curve.x_at(X, z), h, z)``.
Images are float32 RGB in 0..255 until ``to_uint8``.

The generators of the individual datasets (LLAMAS now, CULane/ApolloScape later) decide which
lanes exist and how labels are written; this module only draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np

# Road paint colours (RGB, 0..255) of every generator's markings.
WHITE_PAINT = (236.0, 236.0, 228.0)
YELLOW_PAINT = (232.0, 196.0, 70.0)


@dataclasses.dataclass(frozen=True)
class PinholeCamera:
    """Pinhole camera looking along the road (no roll/pitch), mounted ``height_m`` above it."""

    fx: float
    fy: float
    cx: float
    cy: float
    height_m: float
    image_wh: tuple[int, int]

    @property
    def matrix(self) -> np.ndarray:
        """Projection matrix ``[[fx,0,cx],[0,fy,cy],[0,0,1]]`` (float64)."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64
        )

    def project(self, xyz: np.ndarray) -> np.ndarray:
        """Projects camera-frame points (N, 3) to pixels (N, 2) as (u, v)."""
        p = np.asarray(xyz, dtype=np.float64) @ self.matrix.T
        return p[:, :2] / p[:, 2:3]

    def row_of_depth(self, z: np.ndarray | float) -> np.ndarray | float:
        """Image row of the road at depth ``z``."""
        return self.cy + self.fy * self.height_m / z

    def depth_of_row(self, v: np.ndarray | float) -> np.ndarray | float:
        """Road depth seen at image row ``v`` (only meaningful below the horizon, v > cy)."""
        return self.fy * self.height_m / (v - self.cy)


def make_camera(
    image_wh: Sequence[int], rng: np.random.Generator | None = None, height_m: float = 1.5
) -> PinholeCamera:
    """A camera scaled to ``image_wh``: focal 1.25 W, horizon at ~40% of the height.

    With ``rng`` the focal length, principal point and mounting height get small jitter.
    """
    w, h = int(image_wh[0]), int(image_wh[1])
    jit = (lambda s: 0.0) if rng is None else (lambda s: float(rng.uniform(-s, s)))
    f = 1.25 * w * (1.0 + jit(0.03))
    return PinholeCamera(
        fx=f,
        fy=f,
        cx=(w - 1) / 2.0 + jit(0.01) * w,
        cy=0.40 * h + jit(0.03) * h,
        height_m=height_m + jit(0.1),
        image_wh=(w, h),
    )


@dataclasses.dataclass(frozen=True)
class RoadCurve:
    """Lateral shape of the road: ``x(X, z) = X + heading*z + curvature*z**2``.

    ``heading`` (dx/dz at the camera) models a lane change / yaw drift; ``curvature`` a bend.
    """

    heading: float = 0.0
    curvature: float = 0.0

    def x_at(self, lateral: np.ndarray | float, z: np.ndarray | float) -> np.ndarray | float:
        """World x of lateral road coordinate ``lateral`` at depth ``z``."""
        return lateral + self.heading * z + self.curvature * z * z

    def lateral_of(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Inverse of ``x_at`` at fixed depth."""
        return x - self.heading * z - self.curvature * z * z


def stripe_intervals(
    z_near: float,
    z_far: float,
    dashed: bool,
    rng: np.random.Generator,
    dash_m: float = 3.0,
    gap_m: float = 9.0,
    solid_piece_m: float = 4.0,
) -> list[tuple[float, float]]:
    """Depth intervals ``(z0, z1)`` of the painted pieces of one divider within [z_near, z_far].

    Dashed dividers repeat ``dash_m`` paint + ``gap_m`` gap with a random phase; solid dividers
    are cut into ``solid_piece_m`` pieces (straight chords that follow curves closely).
    """
    pieces = []
    if dashed:
        period = dash_m + gap_m
        z = z_near - float(rng.uniform(0.0, period))
        while z < z_far:
            z0, z1 = max(z, z_near), min(z + dash_m, z_far)
            if z1 - z0 > 0.2:
                pieces.append((z0, z1))
            z += period
    else:
        z = z_near
        while z < z_far - 0.2:
            pieces.append((z, min(z + solid_piece_m, z_far)))
            z += solid_piece_m
    return pieces


def _smooth_noise(shape_hw: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise in [-1, 1], (H, W) float32 (a small random grid upsampled)."""
    h, w = shape_hw
    gh = max(2, int(round(cells * h / max(h, w))))
    gw = max(2, int(round(cells * w / max(h, w))))
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def scaled_camera(camera: PinholeCamera, factor: int) -> PinholeCamera:
    """The same view on a grid ``factor`` times coarser (pixel centres kept aligned)."""
    w, h = camera.image_wh
    shift = (factor - 1) / 2.0
    return PinholeCamera(
        fx=camera.fx / factor,
        fy=camera.fy / factor,
        cx=(camera.cx - shift) / factor,
        cy=(camera.cy - shift) / factor,
        height_m=camera.height_m,
        image_wh=(-(-w // factor), -(-h // factor)),
    )


def draw_background(
    camera: PinholeCamera,
    curve: RoadCurve,
    road_lateral: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Sky, tree line, asphalt between ``road_lateral`` (metres) and shoulders; float32 RGB.

    Depth haze blends the road into the sky colour towards the horizon. Large frames are drawn
    at half resolution and upsampled (the background is smooth; markings are drawn later at
    full resolution).
    """
    w_full, h_full = camera.image_wh
    factor = 2 if w_full >= 400 else 1
    cam = scaled_camera(camera, factor) if factor > 1 else camera
    w, h = cam.image_wh
    img = np.empty((h, w, 3), np.float32)
    v = np.arange(h, dtype=np.float32)[:, None]
    u = np.arange(w, dtype=np.float32)[None, :]

    sky_top = np.array(rng.uniform([120, 140, 170], [190, 205, 235]), np.float32)
    sky_bottom = np.array(rng.uniform([170, 175, 180], [230, 230, 235]), np.float32)
    t = np.clip(v / max(cam.cy, 1.0), 0.0, 1.0)[..., None]  # (h, 1, 1)
    img[:] = sky_top * (1 - t) + sky_bottom * t

    # Tree line / embankment just above the horizon, with a ragged top edge.
    tree_h = (0.04 + 0.05 * rng.random()) * h
    edge = cam.cy - tree_h * (0.6 + 0.4 * _smooth_noise((1, w), 24, rng)[0])
    tree_col = np.array(rng.uniform([35, 50, 30], [80, 100, 70]), np.float32)
    img[(v >= edge[None, :]) & (v <= cam.cy + 1)] = tree_col

    rows = np.nonzero(v[:, 0] > cam.cy + 0.5)[0]
    if rows.size:
        z = cam.depth_of_row(rows.astype(np.float32))[:, None]  # (R, 1)
        x = (u - cam.cx) * z / cam.fx  # (R, W)
        lateral = curve.lateral_of(x, z)
        asphalt = np.float32(rng.uniform(75, 125)) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
        shoulder = np.array(rng.uniform([60, 70, 45], [130, 125, 100]), np.float32)
        tex = 10.0 * _smooth_noise((rows.size, w), 40, rng) + 4.0 * _smooth_noise(
            (rows.size, w), 160, rng
        )
        on_road = (lateral >= road_lateral[0]) & (lateral <= road_lateral[1])
        ground = np.where(on_road[..., None], asphalt, shoulder)
        ground += tex[..., None]
        haze = (1.0 - np.exp(-z / np.float32(rng.uniform(120, 300))))[..., None]  # (R, 1, 1)
        img[rows] = ground * (1 - haze) + sky_bottom * haze
    if factor > 1:
        img = cv2.resize(img, (w_full, h_full), interpolation=cv2.INTER_LINEAR)
    return img


def paint_polygons(
    img: np.ndarray, polygons: Sequence[np.ndarray], color_rgb: Sequence[float], alpha: float = 1.0
) -> None:
    """Blends ``color_rgb`` into ``img`` (in place) over int32 (4, 2) polygons, anti-aliased."""
    if not polygons:
        return
    h, w = img.shape[:2]
    allpts = np.concatenate(polygons)
    # Work inside the polygons' bounding box (+1 px of anti-aliasing): markings are thin.
    x0, y0 = np.clip(allpts.min(axis=0) - 2, 0, [w, h])
    x1, y1 = np.clip(allpts.max(axis=0) + 3, 0, [w, h])
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for pts in polygons:
        cv2.fillConvexPoly(mask, pts - np.array([x0, y0], np.int32), 255, cv2.LINE_AA, 0)
    ys, xs = np.nonzero(mask)
    a = (mask[ys, xs].astype(np.float32) * np.float32(alpha / 255.0))[:, None]
    ys += y0
    xs += x0
    img[ys, xs] = img[ys, xs] * (1.0 - a) + a * np.asarray(color_rgb, np.float32)


def add_shadows(
    img: np.ndarray, camera: PinholeCamera, curve: RoadCurve, rng: np.random.Generator, count: int
) -> None:
    """Darkens ``count`` soft shadows in place: bands across the road (bridges) or blobs."""
    if count <= 0:
        return
    w, h = camera.image_wh
    mask = np.zeros((h, w), np.float32)
    for _ in range(count):
        strength = float(rng.uniform(0.3, 0.6))
        if rng.random() < 0.6:
            z0 = float(rng.uniform(6.0, 40.0))
            z1 = z0 + float(rng.uniform(1.0, 8.0))
            lat0, lat1 = sorted(rng.uniform(-15.0, 15.0, size=2))
            lat1 = max(lat1, lat0 + 4.0)
            corners = np.array(
                [
                    [curve.x_at(lat0, z0), camera.height_m, z0],
                    [curve.x_at(lat1, z0), camera.height_m, z0],
                    [curve.x_at(lat1, z1), camera.height_m, z1],
                    [curve.x_at(lat0, z1), camera.height_m, z1],
                ]
            )
            pts = np.round(camera.project(corners)).astype(np.int32)
            pts = np.clip(pts, -4 * max(w, h), 4 * max(w, h))
            cv2.fillConvexPoly(mask, pts, strength, cv2.LINE_AA)
        else:
            centre = (int(rng.uniform(0, w)), int(rng.uniform(camera.cy, h)))
            axes = (int(rng.uniform(0.05, 0.25) * w), int(rng.uniform(0.02, 0.1) * h))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, strength, -1)
    k = max(3, (w // 150) | 1)
    mask = cv2.GaussianBlur(mask, (k, k), 0)
    mask[: max(0, int(camera.cy) + 1)] = 0.0  # shadows fall on the ground, not the sky
    img *= (1.0 - np.clip(mask, 0.0, 0.8))[..., None]


def add_occluders(
    img: np.ndarray,
    camera: PinholeCamera,
    curve: RoadCurve,
    rng: np.random.Generator,
    lane_centres: Sequence[float],
    count: int,
) -> None:
    """Draws ``count`` cars as dark boxes standing in random lanes (in place), far ones first."""
    if count <= 0 or not lane_centres:
        return
    h_img = camera.image_wh[1]
    cars = [
        (float(rng.uniform(8.0, 60.0)), float(rng.choice(np.asarray(lane_centres))))
        for _ in range(count)
    ]
    for z, lateral in sorted(cars, reverse=True):
        x = curve.x_at(lateral + float(rng.uniform(-0.4, 0.4)), z)
        u = camera.cx + camera.fx * x / z
        v_bottom = camera.row_of_depth(z)
        half_w = camera.fx * float(rng.uniform(0.85, 1.0)) / z
        height = camera.fy * float(rng.uniform(1.3, 1.8)) / z
        x0, x1 = int(round(u - half_w)), int(round(u + half_w))
        y0, y1 = int(round(v_bottom - height)), int(round(v_bottom))
        if y1 < 0 or y0 >= h_img:
            continue
        body = np.array(rng.uniform([15, 15, 15], [90, 90, 95]), np.float32)
        cv2.rectangle(img, (x0, y0), (x1, y1), body.tolist(), -1)
        # Rear window (sky reflection) and a dark shadow band at the bottom.
        win_y1 = y0 + int(0.4 * (y1 - y0))
        inset = (x1 - x0) // 8
        window = (body * 1.6 + 20).tolist()
        cv2.rectangle(img, (x0 + inset, y0 + (y1 - y0) // 12), (x1 - inset, win_y1), window, -1)
        cv2.rectangle(img, (x0 - 1, y1 - max(1, (y1 - y0) // 10)), (x1 + 1, y1), (10, 10, 10), -1)
        lamp = max(1, (x1 - x0) // 10)
        for lx in (x0 + lamp, x1 - 2 * lamp):
            cv2.rectangle(
                img, (lx, win_y1 + lamp), (lx + lamp, win_y1 + 2 * lamp), (170, 20, 20), -1
            )


def apply_lighting(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth illumination gradient, then global gain, colour tint and gamma; returns uint8.

    The gradient is one in-place float pass; gain/tint/gamma go through a per-channel lookup
    table on the rounded uint8 image (much cheaper than a float ``pow`` over the frame).
    """
    h, w = img.shape[:2]
    gx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :] * np.float32(rng.uniform(-0.2, 0.2))
    gy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None] * np.float32(rng.uniform(-0.15, 0.15))
    img *= (1.0 + gx + gy)[..., None]
    gain = float(rng.uniform(0.55, 1.35))
    gamma = float(rng.uniform(0.8, 1.25))
    tint = rng.uniform(0.92, 1.08, size=3)
    levels = np.arange(256, dtype=np.float64)[:, None] / 255.0
    lut = np.clip(np.rint(levels**gamma * 255.0 * gain * tint[None, :]), 0, 255).astype(np.uint8)
    return cv2.LUT(to_uint8(img), lut[:, None, :])


def add_sensor_noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Adds zero-mean pixel noise of standard deviation ``sigma`` (0..255 units), in place.

    Uniform noise (cheaper to draw than Gaussian), one luminance plane shared by the channels.
    """
    if sigma <= 0:
        return img
    noise = rng.random(size=img.shape[:2], dtype=np.float32)
    noise -= np.float32(0.5)
    noise *= np.float32(sigma * np.sqrt(12.0))
    img += noise[..., None]
    return img


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Rounds (half up) and clips a float image to uint8; clobbers ``img``."""
    np.clip(img, 0.0, 255.0, out=img)
    img += np.float32(0.5)
    return img.astype(np.uint8)
