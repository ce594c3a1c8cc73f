"""A picture of a kd_table result: every seed of every method, beside the baseline and teacher.

One panel per (dataset twin, student); one row per method with a dot per seed and a bar at the
mean of the dataset's official metric; a dashed line marks the baseline student's mean and a
solid one the teacher. Drawn with Pillow (no plotting library in the install).

Usage: ``python benchmarks/kd_plot.py RESULTS.json [--output RESULTS.png]``; kd_table.py draws
the same picture beside its report.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_WIDTH, _LABEL_W, _ROW_H, _MARGIN = 980, 300, 24, 16
_SEED_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw(payload: Mapping[str, Any]) -> Image.Image:
    """The figure of a kd_table payload (its JSON).

    Args:
      payload: kd_table's JSON: ``results`` (one dict per cell), ``<dataset>/<student>``
        entries holding the ``teacher`` result, and optionally ``labels`` (method -> row label)
        and ``official_names`` (dataset -> name of its official metric, the x axis).

    Returns:
      The RGB image.
    """
    labels = payload.get("labels", {})
    official_names = payload.get("official_names", {})
    panels: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for r in payload["results"]:
        panel = panels.setdefault((r["dataset"], r["student"]), {})
        panel.setdefault(r["method"], {})[r["seed"]] = float(r["official"])
    if not panels:
        raise ValueError("the payload has no results to draw")
    height = _MARGIN + _ROW_H + sum(_ROW_H * (len(m) + 3) for m in panels.values())
    image = Image.new("RGB", (_WIDTH, height), "white")
    pen = ImageDraw.Draw(image)
    font, bold = _font(13), _font(15)
    seeds = sorted({r["seed"] for r in payload["results"]})
    x = _MARGIN
    for k, seed in enumerate(seeds):
        color = _SEED_COLORS[k % len(_SEED_COLORS)]
        pen.ellipse([x, _MARGIN + 4, x + 8, _MARGIN + 12], fill=color)
        pen.text((x + 12, _MARGIN), f"seed {seed}", fill="black", font=font)
        x += 70
    legend = "black bar: mean over seeds   dashed: baseline mean   solid: teacher"
    pen.text((x + 10, _MARGIN), legend, fill="black", font=font)
    y = _MARGIN + _ROW_H
    for (dataset, student), methods in panels.items():
        teacher = float(payload[f"{dataset}/{student}"]["teacher"]["official"])
        values = [v for vs in methods.values() for v in vs.values()] + [teacher]
        lo, hi = min(values), max(values)
        pad = max(0.02, 0.05 * (hi - lo))
        lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
        x0, x1 = _LABEL_W, _WIDTH - _MARGIN

        def x_of(v: float, lo: float = lo, hi: float = hi, x0: int = x0, x1: int = x1) -> float:
            return x0 + (v - lo) / (hi - lo) * (x1 - x0)

        title = f"{dataset} twin, student {student}: {official_names.get(dataset, 'official')}"
        pen.text((_MARGIN, y), title, fill="black", font=bold)
        y += _ROW_H
        top, bottom = y, y + _ROW_H * len(methods)
        for i in range(1, len(methods), 2):
            pen.rectangle([x0, top + i * _ROW_H, x1, top + (i + 1) * _ROW_H], fill=(243, 243, 243))
        base = methods.get("baseline")
        if base:
            xb = x_of(float(np.mean(list(base.values()))))
            for yy in range(top, bottom, 6):
                pen.line([(xb, yy), (xb, min(yy + 3, bottom))], fill=(120, 120, 120))
        xt = x_of(teacher)
        pen.line([(xt, top), (xt, bottom)], fill=(0, 0, 0), width=2)
        text = f"teacher {teacher:.3f}"
        tx = xt + 3 if xt + 90 < x1 else xt - 3 - pen.textlength(text, font=font)
        pen.text((tx, bottom + 2), text, fill="black", font=font)
        for i, (method, vs) in enumerate(methods.items()):
            yc = top + i * _ROW_H + _ROW_H // 2
            pen.text((_MARGIN, yc - 8), labels.get(method, method), fill="black", font=font)
            xm = x_of(float(np.mean(list(vs.values()))))
            pen.line([(xm, yc - 8), (xm, yc + 8)], fill="black", width=3)
            for seed, v in vs.items():
                xv, color = x_of(v), _SEED_COLORS[seeds.index(seed) % len(_SEED_COLORS)]
                pen.ellipse([xv - 4, yc - 4, xv + 4, yc + 4], fill=color)
        for v in np.linspace(lo, hi, 6):
            pen.line([(x_of(v), bottom), (x_of(v), bottom + 4)], fill="black")
            pen.text((min(x_of(v) - 14, x1 - 34), bottom + 14), f"{v:.3f}", fill="black", font=font)
        pen.line([(x0, bottom), (x1, bottom)], fill="black")
        y = bottom + 2 * _ROW_H
    return image


def write(path: str, payload: Mapping[str, Any]) -> None:
    """Draws ``payload`` and saves it as PNG at ``path``."""
    image = draw(payload)
    tmp = path + ".tmp.png"
    image.save(tmp)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: redraw the picture of a saved table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="kd_table's JSON report (RESULTS.json)")
    parser.add_argument("--output", help="PNG path (default: beside the JSON, .png)")
    args = parser.parse_args(argv)
    with open(args.results) as f:
        payload = json.load(f)
    output = args.output or os.path.splitext(args.results)[0] + ".png"
    write(output, payload)
    print(output)


if __name__ == "__main__":
    main()
