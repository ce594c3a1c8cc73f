r"""Exact CULane lane F1: the official SCNN C++ evaluator re-implemented in numpy + OpenCV.

Counts (TP, FP, FN) equal those of the official tool (SCNN @428d5e0 ``tools/lane_evaluation``,
DATASETS.md sections 1.9 and 1.9a) because every step reproduces its arithmetic:

* reading and splining: `culane_lanes` (C++ ``stream >> double`` reading, the official natural
  cubic spline in the same float32/float64 operations, ``cvRound``);
* drawing: `culane_raster` (exactly the pixels of ``cv::line(..., width)``, LINE_8, fast), then
  IoU = |A and B| / (|A| + |B| - |A and B|); TP needs IoU > threshold (strict);
* matching (here): the official Kuhn-Munkres code (``pipartiteGraph``) replayed step by step,
  equality slack 1e-2 included. That slack can make it keep a matching up to 0.01 per row below
  the true maximum (for one GT lane and predictions of IoU 0.499 and 0.505 it keeps 0.499: no
  TP), so an exact assignment solver would not give identical counts.

Decisions where the official tool is undefined (DATASETS.md 1.9a), documented here: consecutive
duplicate points (see `culane_lanes`); a GT and a predicted lane that both draw nothing inside the
image (0/0 in the C++ tool) get IoU 0.

Command line (same flags and output file as the official ``evaluate`` binary, plus ``--output``
for JSON, ``-j`` processes, progress with ETA)::

  python -m intrakd_jax.evaluation.culane -a ANNO -d DETECT -l LIST \
      -w 30 -t 0.5 -c 1640 -r 590 -o OUT [--output OUT.json]
  python -m intrakd_jax.evaluation.culane -a ANNO -d DETECT \
      --categories ROOT/list/test_split -o OUT_DIR [--output OUT.json]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.formats.lines_txt import lines_txt_path
from intrakd_jax.evaluation import cli, pool
from intrakd_jax.evaluation.culane_lanes import lane_polylines, read_lane_file
from intrakd_jax.evaluation.culane_raster import LaneRasterizer

CATEGORIES = ("normal", "crowd", "hlight", "shadow", "noline", "arrow", "curve", "cross", "night")
_KM_SLACK = 1e-2  # equality tolerance of the official pipartiteGraph
_CHUNK = 64  # images per worker task: the rasterizer draws a whole chunk at once


# ---------------------------------------------------------------------------------------------
# Matching: the official Kuhn-Munkres (pipartiteGraph::match), replayed operation by operation.


def official_match(similarity: Sequence[Sequence[float]]) -> list[int]:
    """Row -> column matching chosen by the official tool (``Counter::makeMatch``).

    Args:
      similarity: (num_gt, num_pred) IoU matrix as nested sequences, both sizes >= 1.

    Returns:
      For each GT row, its matched prediction column or -1.
    """
    rows = len(similarity)
    cols = len(similarity[0]) if rows else 0
    if rows == 0 or cols == 0:
        raise ValueError(f"official_match: empty similarity matrix ({rows}x{cols})")
    exchange = rows > cols
    if exchange:
        mat = [[float(similarity[j][i]) for j in range(rows)] for i in range(cols)]
        n_left, n_right = cols, rows
    else:
        mat = [[float(v) for v in row] for row in similarity]
        n_left, n_right = rows, cols
    left_match = [-1] * n_left
    right_match = [-1] * n_right
    right_w = [0.0] * n_right
    left_w = []
    for i in range(n_left):
        w = -1e5
        for j in range(n_right):
            if w < mat[i][j]:
                w = mat[i][j]
        left_w.append(w)
    left_used = [False] * n_left
    right_used = [False] * n_right

    def dfs(u: int) -> bool:
        left_used[u] = True
        for v in range(n_right):
            if not right_used[v] and abs(left_w[u] + right_w[v] - mat[u][v]) < _KM_SLACK:
                right_used[v] = True
                if right_match[v] == -1 or dfs(right_match[v]):
                    right_match[v] = u
                    left_match[u] = v
                    return True
        return False

    aborted = False
    for u in range(n_left):
        for _ in range(100_000):  # the C++ loops forever here; no valid input gets near this
            for i in range(n_left):
                left_used[i] = False
            for j in range(n_right):
                right_used[j] = False
            if dfs(u):
                break
            d = 1e10
            for i in range(n_left):
                if left_used[i]:
                    for j in range(n_right):
                        if not right_used[j]:
                            d = min(d, left_w[i] + right_w[j] - mat[i][j])
            if d == 1e10:
                aborted = True
                break
            for i in range(n_left):
                if left_used[i]:
                    left_w[i] -= d
            for j in range(n_right):
                if right_used[j]:
                    right_w[j] += d
        else:
            raise RuntimeError(f"official_match: Kuhn-Munkres did not converge on {similarity!r}")
        if aborted:
            break
    return list(right_match) if exchange else list(left_match)


# ---------------------------------------------------------------------------------------------
# Per image and per list.


def count_images(
    images: Sequence[tuple[Sequence[np.ndarray] | None, Sequence[np.ndarray] | None]],
    rasterizer: LaneRasterizer,
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """(TP, FP, FN) per image, as ``Counter::count_im_pair``, all images drawn in one batch.

    Args:
      images: (gt_lanes, pred_lanes) per image; lanes are (N, 2) float32 arrays as read (N < 2
        allowed), None means no lanes.
      rasterizer: drawing settings (width, canvas size).
      iou_threshold: a matched pair is a TP when its IoU is strictly greater.

    Returns:
      (num_images, 3) int64 array of tp, fp, fn.
    """
    out = np.zeros((len(images), 3), np.int64)
    lanes: list[np.ndarray] = []
    spans = []
    for k, (gt, pred) in enumerate(images):
        n_gt, n_pred = len(gt or ()), len(pred or ())
        if n_gt == 0:
            out[k] = (0, n_pred, 0)
        elif n_pred == 0:
            out[k] = (0, 0, n_gt)
        else:  # only images with lanes on both sides are drawn, as in the official tool
            spans.append((k, len(lanes), n_gt, n_pred))
            lanes.extend(gt)
            lanes.extend(pred)
    if not spans:
        return out
    drawn = rasterizer.rasterize(*lane_polylines(lanes))
    for k, start, n_gt, n_pred in spans:
        rows = np.arange(start, start + n_gt)
        sim = drawn.iou(rows, np.arange(start + n_gt, start + n_gt + n_pred))
        match = official_match(sim.tolist())
        tp = sum(1 for i, j in enumerate(match) if j >= 0 and sim[i, j] > iou_threshold)
        out[k] = (tp, n_pred - tp, n_gt - tp)
    return out


def iou_matrix(
    gt_lanes: Sequence[np.ndarray],
    pred_lanes: Sequence[np.ndarray],
    rasterizer: LaneRasterizer,
) -> np.ndarray:
    """(num_gt, num_pred) float64 IoU matrix of the official tool for one image."""
    lanes = [np.asarray(lane, np.float32).reshape(-1, 2) for lane in (*gt_lanes, *pred_lanes)]
    drawn = rasterizer.rasterize(*lane_polylines(lanes))
    n_gt = len(gt_lanes)
    return drawn.iou(np.arange(n_gt), np.arange(n_gt, len(lanes)))


def count_image(
    gt_lanes: Sequence[np.ndarray],
    pred_lanes: Sequence[np.ndarray],
    rasterizer: LaneRasterizer,
    iou_threshold: float = 0.5,
) -> tuple[int, int, int]:
    """(TP, FP, FN) of one image (see `count_images`)."""
    tp, fp, fn = count_images([(gt_lanes, pred_lanes)], rasterizer, iou_threshold)[0].tolist()
    return tp, fp, fn


def evaluate_lanes(
    gt_lanes: Sequence[np.ndarray],
    pred_lanes: Sequence[np.ndarray],
    width: int = 30,
    iou_threshold: float = 0.5,
    im_width: int = 1640,
    im_height: int = 590,
) -> tuple[int, int, int]:
    """(TP, FP, FN) for one image given in memory (lanes as (N, 2) arrays of x, y).

    Points are converted to float32 first, as the official reader stores them.
    """
    return count_image(
        [np.asarray(lane, np.float64).reshape(-1, 2).astype(np.float32) for lane in gt_lanes],
        [np.asarray(lane, np.float64).reshape(-1, 2).astype(np.float32) for lane in pred_lanes],
        LaneRasterizer(width, im_width, im_height),
        iou_threshold,
    )


_WORKER_RASTERIZERS: dict[tuple[int, int, int], LaneRasterizer] = {}


def _count_files(
    task: tuple[Sequence[tuple[str, str]], tuple[int, float, int, int]],
) -> np.ndarray:
    """Worker: (k, 5) int64 rows tp, fp, fn, anno_missing, detect_missing of (pairs, settings)."""
    pairs, (width, threshold, im_width, im_height) = task
    key = (width, im_width, im_height)
    rasterizer = _WORKER_RASTERIZERS.get(key)
    if rasterizer is None:
        rasterizer = _WORKER_RASTERIZERS[key] = LaneRasterizer(width, im_width, im_height)
    out = np.zeros((len(pairs), 5), np.int64)
    images = []
    for k, (anno_file, detect_file) in enumerate(pairs):
        gt = read_lane_file(anno_file)
        pred = read_lane_file(detect_file)
        images.append((gt, pred))
        out[k, 3] = gt is None
        out[k, 4] = pred is None
    out[:, :3] = count_images(images, rasterizer, threshold)
    return out


def read_list(list_file: str | os.PathLike[str]) -> list[str]:
    """Image paths of a CULane list file (first field of each non-blank line).

    Raises:
      FileNotFoundError: when the list file does not exist.
    """
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"CULane list file not found: {os.fspath(list_file)!r}")
    with open(list_file, encoding="utf-8", errors="surrogateescape") as handle:
        return [line.split()[0] for line in handle if line.strip()]


def _count_many(
    pairs: list[tuple[str, str]],
    settings: tuple[int, float, int, int],
    workers: int | None,
) -> np.ndarray:
    chunks = [pairs[i : i + _CHUNK] for i in range(0, len(pairs), _CHUNK)]
    parts = pool.map_images(
        _count_files,
        [(chunk, settings) for chunk in chunks],
        workers=workers,
        what="CULane F1 images",
        units=[len(chunk) for chunk in chunks],
    )
    return np.concatenate(parts) if parts else np.zeros((0, 5), np.int64)


def scores(tp: int, fp: int, fn: int) -> dict[str, Any]:
    """Official precision / recall / F (``Counter::get_precision`` etc.) from counts.

    Precision is -1 when tp + fp = 0 and recall is -1 when tp + fn = 0, as in the C++ tool; F is
    2PR / (P + R) evaluated in doubles, NaN when P = R = 0 (the tool prints ``-nan``).
    """
    precision = -1.0 if tp + fp == 0 else tp / float(tp + fp)
    recall = -1.0 if tp + fn == 0 else tp / float(tp + fn)
    denominator = precision + recall
    f1 = -math.nan if denominator == 0 else 2 * precision * recall / denominator
    return {
        "tp": int(tp), "fp": int(fp), "fn": int(fn),
        "precision": precision, "recall": recall, "f1": f1,
    }  # fmt: skip


def _check_dirs(anno_dir: str | os.PathLike[str], detect_dir: str | os.PathLike[str]) -> None:
    for flag, folder in (("anno_dir (-a)", anno_dir), ("detect_dir (-d)", detect_dir)):
        if not os.path.isdir(folder):
            raise NotADirectoryError(f"CULane {flag} is not a directory: {os.fspath(folder)!r}")


def evaluate(
    anno_dir: str | os.PathLike[str],
    detect_dir: str | os.PathLike[str],
    list_file: str | os.PathLike[str],
    width: int = 30,
    iou_threshold: float = 0.5,
    im_width: int = 1640,
    im_height: int = 590,
    *,
    workers: int | None = None,
) -> dict[str, Any]:
    """CULane F1 over a list of images, with the official tool's TP / FP / FN.

    Args:
      anno_dir: dataset root holding ``<image path without ext>.lines.txt`` ground truth.
      detect_dir: prediction root with the same layout; a missing file means no lanes.
      list_file: image list (``test.txt`` or a ``test_split`` file), one path per line.
      width: lane thickness in pixels (official ``-w``, 30).
      iou_threshold: TP when the matched IoU is strictly greater (``-t``, 0.5).
      im_width: canvas width (``-c``, 1640).
      im_height: canvas height (``-r``, 590).
      workers: processes (None: all CPU cores; 1: in this process).

    Returns:
      ``{"tp", "fp", "fn", "precision", "recall", "f1"}`` with the official values (see `scores`),
      plus ``"images"``, ``"missing_anno"`` and ``"missing_detect"`` (file counts) and
      ``"seconds"`` (wall time).

    Raises:
      FileNotFoundError: missing list file.
      NotADirectoryError: missing annotation or prediction directory.
      ValueError: non-positive width or image size.
    """
    start = time.perf_counter()
    _check_dirs(anno_dir, detect_dir)
    if not math.isfinite(iou_threshold):
        raise ValueError(f"iou_threshold must be finite, got {iou_threshold}")
    LaneRasterizer(width, im_width, im_height)  # validates the drawing settings up front
    images = read_list(list_file)
    pairs = [(lines_txt_path(anno_dir, p), lines_txt_path(detect_dir, p)) for p in images]
    settings = (int(width), float(iou_threshold), int(im_width), int(im_height))
    totals = _count_many(pairs, settings, workers).sum(axis=0)
    result = scores(int(totals[0]), int(totals[1]), int(totals[2]))
    result.update(
        images=len(images),
        missing_anno=int(totals[3]),
        missing_detect=int(totals[4]),
        seconds=time.perf_counter() - start,
    )
    return result


def category_list(list_dir: str | os.PathLike[str], index: int) -> str:
    """Path of ``test{index}_{name}.txt`` in a CULane ``list/test_split`` folder."""
    return os.path.join(os.fspath(list_dir), f"test{index}_{CATEGORIES[index]}.txt")


def evaluate_categories(
    anno_dir: str | os.PathLike[str],
    detect_dir: str | os.PathLike[str],
    list_dir: str | os.PathLike[str],
    width: int = 30,
    iou_threshold: float = 0.5,
    im_width: int = 1640,
    im_height: int = 590,
    *,
    workers: int | None = None,
) -> dict[str, dict[str, Any]]:
    """The nine CULane test categories and their total (as ``calTotal.m``: summed counts).

    Args:
      anno_dir: dataset root.
      detect_dir: prediction root.
      list_dir: folder with ``test0_normal.txt`` ... ``test8_night.txt``.
      width: lane thickness (30).
      iou_threshold: IoU threshold (0.5).
      im_width: canvas width (1640).
      im_height: canvas height (590).
      workers: processes (None: all CPU cores).

    Returns:
      ``{category: result}`` for the nine categories in the official order plus ``"total"``; each
      result is as in `evaluate`. All images of all lists are evaluated in one process pool.
    """
    start = time.perf_counter()
    _check_dirs(anno_dir, detect_dir)
    LaneRasterizer(width, im_width, im_height)
    lists = [read_list(category_list(list_dir, k)) for k in range(len(CATEGORIES))]
    pairs = [
        (lines_txt_path(anno_dir, p), lines_txt_path(detect_dir, p)) for imgs in lists for p in imgs
    ]
    settings = (int(width), float(iou_threshold), int(im_width), int(im_height))
    rows = _count_many(pairs, settings, workers)
    seconds = time.perf_counter() - start
    out: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, imgs in zip(CATEGORIES, lists, strict=True):
        part = rows[offset : offset + len(imgs)].sum(axis=0)
        offset += len(imgs)
        out[name] = scores(int(part[0]), int(part[1]), int(part[2]))
        out[name].update(images=len(imgs), missing_anno=int(part[3]), missing_detect=int(part[4]))
    total = rows.sum(axis=0)
    out["total"] = scores(int(total[0]), int(total[1]), int(total[2]))
    out["total"].update(
        images=len(pairs),
        missing_anno=int(total[3]),
        missing_detect=int(total[4]),
        seconds=seconds,
    )
    return out


# ---------------------------------------------------------------------------------------------
# Output in the official formats.


def _cxx_double(value: float) -> str:
    """``std::ostream << double`` with default flags (%g, 6 significant digits)."""
    if math.isnan(value):
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"
    return f"{value:.6g}"


def format_official_output(result: dict[str, Any], output_file: str) -> str:
    """Text the official tool writes to its ``-o`` file."""
    return (
        f"file: {output_file}\n"
        f"tp: {result['tp']} fp: {result['fp']} fn: {result['fn']}\n"
        f"precision: {_cxx_double(result['precision'])}\n"
        f"recall: {_cxx_double(result['recall'])}\n"
        f"Fmeasure: {_cxx_double(result['f1'])}\n\n"
    )


def write_official_output(result: dict[str, Any], output_file: str) -> None:
    """Writes the official output file (``file:``, ``tp: fp: fn:``, precision, recall, Fmeasure)."""
    folder = os.path.dirname(output_file)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(output_file, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(format_official_output(result, output_file))


def _percent(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.2f}"


def category_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the literature: F1 (%) per category, FP for cross, total F1."""
    lines = ["| category | images | F1 (%) |", "|---|---:|---:|"]
    for name in CATEGORIES:
        res = results[name]
        value = f"FP {res['fp']}" if name == "cross" else _percent(res["f1"])
        lines.append(f"| {name} | {res['images']} | {value} |")
    total = results["total"]
    lines.append(f"| total | {total['images']} | {_percent(total['f1'])} |")
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = cli.new_parser(
        "intrakd_jax.evaluation.culane",
        "CULane lane F1 with the official evaluator's exact TP/FP/FN.",
    )
    parser.add_argument("-a", dest="anno_dir", required=True, help="annotation root")
    parser.add_argument("-d", dest="detect_dir", required=True, help="prediction root")
    parser.add_argument(
        "-i", dest="im_dir", default=None, help="image root (ignored, as officially)"
    )
    parser.add_argument("-l", dest="list_file", default=None, help="image list file")
    parser.add_argument("-w", dest="width", type=int, default=30, help="lane width (30)")
    parser.add_argument("-t", dest="iou_threshold", type=float, default=0.5, help="IoU threshold")
    parser.add_argument("-c", dest="im_width", type=int, default=1640, help="image width")
    parser.add_argument("-r", dest="im_height", type=int, default=590, help="image height")
    parser.add_argument("-f", dest="frame", default=None, help="ignored, as officially")
    parser.add_argument("-s", dest="show", action="store_true", help="visualise (not supported)")
    parser.add_argument(
        "-o",
        dest="official_output",
        default=None,
        help="the official tool's output file (default ./output.txt); with --categories, a "
        "folder for out{k}_{category}.txt and out_total.txt (--output writes JSON)",
    )
    parser.add_argument(
        "--categories",
        dest="list_dir",
        default=None,
        help="folder with test0_normal.txt .. test8_night.txt: print the per-category table",
    )
    return parser


def _check_args(args: argparse.Namespace) -> dict[str, Any]:
    """Usage checks before any image is read; returns the evaluation settings."""
    if args.show:
        raise cli.UsageError("-s (visualisation) is not supported")
    if (args.list_file is None) == (args.list_dir is None):
        raise cli.UsageError("give exactly one of -l LIST and --categories LIST_DIR")
    cli.require_dir(args.anno_dir, "-a")
    cli.require_dir(args.detect_dir, "-d")
    if args.list_file is not None:
        cli.require_file(args.list_file, "-l")
    else:
        cli.require_dir(args.list_dir, "--categories")
        for k in range(len(CATEGORIES)):
            cli.require_file(category_list(args.list_dir, k), "--categories: list")
    if not math.isfinite(args.iou_threshold):
        raise cli.UsageError(f"-t must be a finite number, got {args.iou_threshold}")
    try:
        LaneRasterizer(args.width, args.im_width, args.im_height)
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    return dict(
        width=args.width, iou_threshold=args.iou_threshold, im_width=args.im_width,
        im_height=args.im_height, workers=args.workers,
    )  # fmt: skip


def _run(args: argparse.Namespace) -> dict[str, Any]:
    settings = _check_args(args)
    if args.list_file is not None:
        result = evaluate(args.anno_dir, args.detect_dir, args.list_file, **settings)
        write_official_output(result, args.official_output or "./output.txt")
        print(f"tp: {result['tp']} fp: {result['fp']} fn: {result['fn']}")
        print(f"precision: {_cxx_double(result['precision'])}")
        print(f"recall: {_cxx_double(result['recall'])}")
        print(f"Fmeasure: {_cxx_double(result['f1'])}")
        total = result
    else:
        result = evaluate_categories(args.anno_dir, args.detect_dir, args.list_dir, **settings)
        if args.official_output:
            for k, name in enumerate(CATEGORIES):
                path = os.path.join(args.official_output, f"out{k}_{name}.txt")
                write_official_output(result[name], path)
            path = os.path.join(args.official_output, "out_total.txt")
            write_official_output(result["total"], path)
        print(category_table(result))
        total = result["total"]
    images, seconds = total["images"], total["seconds"]
    if total["missing_anno"]:
        print(
            f"warning: {total['missing_anno']} of {images} ground-truth files are missing "
            f"(check -a); they count as images without lanes",
            file=sys.stderr,
        )
    if total["missing_detect"]:
        print(
            f"warning: {total['missing_detect']} of {images} prediction files are missing "
            f"(check -d); they count as images without predicted lanes, as officially",
            file=sys.stderr,
        )
    rate = images / seconds if seconds > 0 else float("inf")
    workers = pool.resolve_workers(args.workers)
    print(f"{images} images in {seconds:.2f} s: {rate:.1f} images/s (up to {workers} processes)")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (see `evaluation.cli`)."""
    return cli.run(_build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
