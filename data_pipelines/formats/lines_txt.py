"""CULane ``.lines.txt`` lane files: paths and writing (no TensorFlow, imported by evaluators).

One lane per line as ``x y`` pairs (DATASETS.md 1.4); the reader, the synthetic generator and
the prediction writers share these primitives.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np


def strip_extension(image_path: str) -> str:
    """Cuts at the last ``.`` of the whole path, as the official evaluator does."""
    dot = image_path.rfind(".")
    return image_path if dot < 0 else image_path[:dot]


def lines_txt_path(root: str | os.PathLike[str], image_path: str) -> str:
    """``<root>/<image path without extension>.lines.txt``; leading ``/`` of the entry dropped.

    Args:
      root: annotation root or prediction directory.
      image_path: list entry such as ``/driver_37_30frame/05181432_0203.MP4/00000.jpg`` (an
        image path with its extension; for a reader key use ``key_lines_txt_path``).

    Returns:
      The path the official evaluator reads for that image.
    """
    return os.path.join(os.fspath(root), strip_extension(image_path).lstrip("/") + ".lines.txt")


def key_lines_txt_path(root: str | os.PathLike[str], key: str) -> str:
    """``<root>/<key>.lines.txt`` for a reader key (image path without extension)."""
    return os.path.join(os.fspath(root), key.lstrip("/") + ".lines.txt")


def format_coordinate(value: float | int | np.number) -> str:
    """A ``.lines.txt`` coordinate: integral values as ints, others as the shortest exact decimal.

    The shortest round-trip repr parses back to the same double, so an evaluator's truncation
    to int sees exactly the value that was written.
    """
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    as_float = float(value)
    if not math.isfinite(as_float):
        raise ValueError(f"write_lines_txt: lane coordinates must be finite, got {as_float!r}")
    if as_float.is_integer() and abs(as_float) < 2**53:
        return str(int(as_float))
    return repr(as_float)  # shortest round-trip decimal, parsed exactly by the C++ reader


def format_lines(lanes: Sequence[np.ndarray | Sequence[Sequence[float]]]) -> str:
    """The text of a ``.lines.txt`` file: one lane per line as ``x y `` pairs.

    Empty lanes are skipped, because the official reader counts every line, blank ones included,
    as a lane (a blank line would be a guaranteed false positive).

    Args:
      lanes: sequence of (K, 2) point arrays (x, y).

    Returns:
      The file content (``""`` for an image without lanes).
    """
    out = []
    for index, lane in enumerate(lanes):
        pts = np.asarray(lane)
        if pts.size == 0:
            continue
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"write_lines_txt: lane {index} must be (K, 2), got shape {pts.shape}")
        # MATLAB writes "%d %d " per point: keep its trailing space for byte-identical files.
        out.append(
            "".join(f"{format_coordinate(x)} {format_coordinate(y)} " for x, y in pts) + "\n"
        )
    return "".join(out)


def write_lines_txt(
    path: str | os.PathLike[str], lanes: Sequence[np.ndarray | Sequence[Sequence[float]]]
) -> None:
    """Writes one CULane lane file (creating its folder).

    Args:
      path: destination, normally ``lines_txt_path(detect_dir, image_path)``.
      lanes: sequence of (K, 2) arrays of (x, y); empty lanes are skipped (see `format_lines`).
    """
    text = format_lines(lanes)
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="ascii", newline="\n") as handle:
        handle.write(text)
