"""Pictures of predictions: class maps coloured over the input, and side-by-side grids.

Used for the per-stage ``examples.png`` and the pipeline's ``comparison.png`` (input, ground truth,
teacher, baseline student, distilled student for a few validation images).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

# Background black, then well-separated colours (RGB) for lane/marking classes; ignore is grey.
_BASE_PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [255, 225, 25],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
    ],
    np.uint8,
)
IGNORE_RGB = np.array([128, 128, 128], np.uint8)


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 RGB colours; extra classes get deterministic random colours."""
    if num_classes <= len(_BASE_PALETTE):
        return _BASE_PALETTE[:num_classes]
    rng = np.random.default_rng(0)
    extra = rng.integers(40, 255, size=(num_classes - len(_BASE_PALETTE), 3), dtype=np.uint8)
    return np.concatenate([_BASE_PALETTE, extra])


def colorize(label_hw: np.ndarray, num_classes: int) -> np.ndarray:
    """Class map -> (H, W, 3) uint8 RGB; values outside the classes (ignore, 255) are grey."""
    label_hw = np.asarray(label_hw)
    colours = np.concatenate([palette(num_classes), IGNORE_RGB[None]])
    index = np.where((label_hw >= 0) & (label_hw < num_classes), label_hw, num_classes)
    return colours[index]


def overlay(
    image_rgb: np.ndarray, label_hw: np.ndarray, num_classes: int, alpha: float = 0.7
) -> np.ndarray:
    """Colours non-background classes over an RGB uint8 image."""
    coloured = colorize(label_hw, num_classes)
    mask = (np.asarray(label_hw) != 0)[..., None]
    blended = (1 - alpha) * image_rgb.astype(np.float32) + alpha * coloured.astype(np.float32)
    return np.where(mask, blended, image_rgb).astype(np.uint8)


def denormalize(image_hwc: np.ndarray, mean_rgb: Sequence[float], std_rgb: Sequence[float]):
    """Undoes the input normalisation for display -> uint8 RGB."""
    img = image_hwc * np.asarray(std_rgb, np.float32) + np.asarray(mean_rgb, np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def grid(
    rows: Sequence[Sequence[np.ndarray]], column_titles: Sequence[str], pad: int = 4
) -> np.ndarray:
    """Tiles equally sized RGB images into a grid with a title bar above each column."""
    h, w = rows[0][0].shape[:2]
    title_h = 22
    out = np.full(
        (title_h + len(rows) * (h + pad), len(column_titles) * (w + pad), 3), 255, np.uint8
    )
    for j, title in enumerate(column_titles):
        cv2.putText(
            out,
            title,
            (j * (w + pad) + 4, 16),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = title_h + i * (h + pad), j * (w + pad)
            out[y : y + h, x : x + w] = tile
    return out


def save_png(path: str, rgb: np.ndarray) -> None:
    """Writes an RGB uint8 image (creating folders)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
