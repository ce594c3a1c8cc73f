"""Images/s of the exact CULane evaluator on a generated corpus of random lanes.

  python benchmarks/culane_eval.py                       # 3,000 images, 1 process and all cores
  python benchmarks/culane_eval.py --images 500 --workers 1 --baseline 100

The corpus mimics CULane test images: 0-4 ground-truth lanes per image (points every 10 px from the
bottom row up to a vanishing region, some leaving the image sideways, about 4 % of images without
lanes as in "cross"), and predictions that are noisy copies (dense float points or 18-point
prob2lines-style integer lanes), partial, missing or extra, plus the corner cases the evaluator must
count right: blank lines, single-point lanes, empty and missing prediction files.

The official tool is not built here. --baseline N times, on the first N images, the work the
official tool does per image (for every GT/prediction pair: draw both lanes with one cv::line per
spline sample on two fresh 590x1640 canvases, then sum both and their product); it runs through the
same OpenCV drawing code, so it estimates the official cost on this machine and corpus.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipelines.formats.lines_txt import format_lines, lines_txt_path  # noqa: E402
from intrakd_jax.evaluation import culane, culane_lanes  # noqa: E402

IM_W, IM_H = 1640, 590


def _gt_lane(rng: np.random.Generator) -> np.ndarray:
    """A CULane-like lane: y = 590, 580, ... up to the vanishing region, x toward (820, 250)."""
    top = int(rng.integers(250, 400))
    ys = np.arange(IM_H, top, -10, dtype=np.float64)
    x_bottom = rng.uniform(-600, IM_W + 600)
    vanish_x = 820 + rng.normal(0, 60)
    frac = (IM_H - ys) / (IM_H - 250)
    curve = rng.normal(0, 80) * frac**2
    xs = x_bottom + (vanish_x - x_bottom) * frac + curve
    start = int(rng.integers(0, max(1, len(ys) // 4))) if rng.random() < 0.3 else 0
    return np.stack([xs, ys], axis=1)[start:]


def _prediction(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A noisy, sometimes partial, copy of a GT lane in one of two output styles."""
    sigma = rng.choice([1.0, 3.0, 8.0, 20.0])
    shift = rng.normal(0, sigma)
    if rng.random() < 0.5:  # dense float points
        lane = gt.copy()
        lane[:, 0] += shift + rng.normal(0, sigma / 3, len(lane))
        lane = np.round(lane, 3)
    else:  # prob2lines style: every 20 px from y = 589, integers
        ys = np.arange(IM_H - 1, gt[-1, 1], -20.0)
        order = np.argsort(gt[:, 1])
        xs = np.interp(ys, gt[order, 1], gt[order, 0]) + shift + rng.normal(0, sigma / 3, len(ys))
        lane = np.stack([np.round(xs), ys], axis=1)
    if rng.random() < 0.2 and len(lane) > 4:  # partial
        a = int(rng.integers(0, len(lane) // 2))
        lane = lane[a : a + int(rng.integers(2, len(lane) - a + 1))]
    return lane


def _extra_lane(rng: np.random.Generator) -> np.ndarray:
    lane = _gt_lane(rng)
    if rng.random() < 0.5:
        lane = lane[:: int(rng.integers(1, 4))]
    return np.round(lane, 1)


def generate(root: Path, images: int, seed: int) -> tuple[Path, Path, Path]:
    """Writes anno/, detect/ and list.txt under root; returns their paths."""
    rng = np.random.default_rng(seed)
    anno, detect = root / "anno", root / "detect"
    names = []
    for i in range(images):
        name = f"/driver_bench_30frame/{i // 100:05d}.MP4/{i % 100:05d}.jpg"
        names.append(name)
        n_gt = 0 if rng.random() < 0.04 else int(rng.choice([1, 2, 3, 4], p=[0.05, 0.2, 0.35, 0.4]))
        gt = [_gt_lane(rng) for _ in range(n_gt)]
        preds = [_prediction(lane, rng) for lane in gt if rng.random() < 0.85]
        preds += [_extra_lane(rng) for _ in range(int(rng.poisson(0.4)))]
        rng.shuffle(preds)
        gt_text = format_lines(gt)
        pred_text = format_lines(preds)
        corner = rng.random()
        if corner < 0.01 and pred_text:
            pred_text = pred_text.replace("\n", "\n\n", 1)  # blank line: an empty lane
        elif corner < 0.02:
            pred_text += f"{rng.uniform(0, IM_W):.1f} {rng.uniform(300, IM_H):.1f}\n"  # 1 point
        elif corner < 0.03:
            pred_text = ""
        gt_file = Path(lines_txt_path(anno, name))
        gt_file.parent.mkdir(parents=True, exist_ok=True)
        gt_file.write_text(gt_text)
        if corner < 0.05 and corner >= 0.03:
            continue  # missing prediction file
        pred_file = Path(lines_txt_path(detect, name))
        pred_file.parent.mkdir(parents=True, exist_ok=True)
        pred_file.write_text(pred_text)
    list_file = root / "list.txt"
    list_file.write_text("\n".join(names) + "\n")
    return anno, detect, list_file


def official_like_seconds(anno: Path, detect: Path, names: list[str]) -> float:
    """CPU seconds of the official tool's per-pair drawing and summing on these images."""
    start = time.process_time()
    for name in names:
        gt = culane_lanes.read_lane_file(lines_txt_path(anno, name)) or []
        pred = culane_lanes.read_lane_file(lines_txt_path(detect, name)) or []
        if not gt or not pred:
            continue
        for lane_a in gt:
            for lane_b in pred:
                # The official tool splines and draws both lanes again for every pair.
                pa, pb = culane_lanes.lane_polyline(lane_a), culane_lanes.lane_polyline(lane_b)
                if pa is None or pb is None:
                    continue
                im1 = np.zeros((IM_H, IM_W), np.uint8)
                im2 = np.zeros((IM_H, IM_W), np.uint8)
                cv2.polylines(im1, [pa.reshape(-1, 1, 2)], False, 1, 30)  # = per-segment cv::line
                cv2.polylines(im2, [pb.reshape(-1, 1, 2)], False, 1, 30)
                cv2.sumElems(im1)
                cv2.sumElems(im2)
                cv2.sumElems(cv2.multiply(im1, im2))
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 1}",
                        help="comma-separated process counts to time")  # fmt: skip
    parser.add_argument("--baseline", type=int, default=200,
                        help="images for the official-work estimate (0: skip)")  # fmt: skip
    parser.add_argument("--keep", default=None, help="write the corpus here and keep it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        t = time.perf_counter()
        anno, detect, list_file = generate(root, args.images, args.seed)
        print(f"corpus: {args.images} images in {root} ({time.perf_counter() - t:.1f} s to write)")
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
        names = culane.read_list(list_file)
        counts = np.array(
            [len(culane_lanes.read_lane_file(lines_txt_path(anno, n)) or []) for n in names]
        )
        pcounts = np.array(
            [len(culane_lanes.read_lane_file(lines_txt_path(detect, n)) or []) for n in names]
        )
        print(f"lanes per image: GT {counts.mean():.2f}, predicted {pcounts.mean():.2f}, "
              f"pairs {np.mean(counts * pcounts):.2f}")  # fmt: skip
        result = None
        for workers in [int(w) for w in args.workers.split(",")]:
            culane.evaluate(anno, detect, list_file, workers=workers)  # warm-up (page cache)
            cpu = time.process_time()
            res = culane.evaluate(anno, detect, list_file, workers=workers)
            cpu = time.process_time() - cpu
            rate = res["images"] / res["seconds"]
            extra = f", main-process CPU {cpu:.2f} s" if workers == 1 else ""
            print(f"workers={workers}: {res['seconds']:.2f} s wall, {rate:.1f} images/s "
                  f"({rate / workers:.1f} per process){extra}")  # fmt: skip
            if result is not None:
                assert all(res[k] == result[k] for k in ("tp", "fp", "fn")), "counts differ"
            result = res
        print(
            f"tp {result['tp']} fp {result['fp']} fn {result['fn']} "
            f"F1 {100 * result['f1']:.2f} (missing predictions {result['missing_detect']})"
        )
        print(f"load average {os.getloadavg()[0]:.2f} after the timed runs")
        if args.baseline:
            n = min(args.baseline, len(names))
            seconds = official_like_seconds(anno, detect, names[:n])
            print(f"official-equivalent drawing work: {seconds / n * 1e3:.1f} ms CPU per image "
                  f"on the first {n} images ({n / seconds:.1f} images/s on one core)")  # fmt: skip


if __name__ == "__main__":
    main()
