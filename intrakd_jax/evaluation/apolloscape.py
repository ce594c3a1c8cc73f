"""ApolloScape lane segmentation: official mIoU, internal mIoU, submission writer.

* The class table (dataset-api `helpers/laneMarkDetection.py`, DATASETS.md 3.4, with the
  IntRA-KD 37-class train ids) and its lookup tables are `data_pipelines.formats.apolloscape`.
* Official metric (dataset-api `evaluation/evalPixelLevelSemanticLabeling.py`, which runs
  cityscapesScripts with this table, DATASETS.md 3.6): a confusion matrix over the 256 possible
  label ids of full-size id images, `conf[gt, pred]`, every pixel counted. For each class c with
  ignoreInEval False: TP = conf[c, c]; FN = row sum - TP (predictions of ignored or unknown ids
  included); FP = column c summed over ground-truth rows that are neither ignored nor c, so a
  prediction on ignored ground truth is never a false positive. IoU = TP / (TP + FP + FN), nan
  when that is 0; ignored classes are nan. The "Score Average" is the mean of the non-nan IoUs,
  which with the public table includes `void` (id 0); `include_void=False` leaves it out.
* Internal IntRA-KD metric (`train_erfnet_vanilla.py`): 37 x 37 confusion over train ids without
  ground-truth 255; mIoU = mean over all 37 classes of diag / (row + col - diag + 1e-20), absent
  classes counting 0.
* Submission (IntRA-KD `road_npy2img.py`, dataset-api README, DATASETS.md 3.5, 3.7): train id ->
  id, nearest resize to 3384 x 1010, pasted at row 1700 of a zero 3384 x 2710 canvas, one 8-bit
  gray PNG per test image, zipped as `test/road05/<name>.png`.

Command line (the official script's mIoU over id PNGs; predictions are matched to ground truth
by file name, so the official sample layout, the batch job's ``predictions/<road>/`` and an
unzipped submission all work)::

  python -m intrakd_jax.evaluation.apolloscape --gt LABEL_DIR --pred PRED_DIR \
      [--without_void] [--workers N] [--output result.json]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import zipfile
from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np
from PIL import Image

from data_pipelines.formats.apolloscape import (
    CATEGORIES,
    CROP_TOP,
    ID_TO_LABEL,
    IGNORED_ID_MASK,
    IMAGE_HW,
    INTRAKD_TRAINID_TO_ID,
    KNOWN_ID_MASK,
    LABELS,
    NUM_IDS,
    NUM_INTRAKD_CLASSES,
    VOID_ID,
)
from data_pipelines.util import encode_png
from intrakd_jax.evaluation import cli, pool

FULL_HW = IMAGE_HW  # the submission canvas: the official image (height, width)


# ----------------------------------------------------------------------------------------------
# Official metric.


def _as_id_image(arr: Any, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected a single-channel (H, W) id image, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"{what}: expected integer ids, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= NUM_IDS):
        raise ValueError(f"{what}: ids must lie in [0, {NUM_IDS}), got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


def confusion_over_ids(gt_ids: np.ndarray, pred_ids: np.ndarray) -> np.ndarray:
    """Official confusion counts of one image pair: int64 (256, 256), rows = ground-truth id.

    Every pixel is counted (nothing is masked at this stage, as in cityscapesScripts).

    Args:
      gt_ids: (H, W) ground-truth ids (PIL palette indices of a `_bin.png`).
      pred_ids: (H, W) predicted ids, same shape.

    Returns:
      The counts.

    Raises:
      ValueError: shapes differ, an image is not single-channel, ids are outside [0, 256), or a
        ground-truth id is not in the class table (the official "Unknown label with id").
    """
    gt = _as_id_image(gt_ids, "confusion_over_ids: gt_ids")
    pred = _as_id_image(pred_ids, "confusion_over_ids: pred_ids")
    if gt.shape != pred.shape:
        raise ValueError(
            f"confusion_over_ids: gt_ids shape {gt.shape} != pred_ids shape {pred.shape} "
            "(the official script needs predictions of the ground-truth size)"
        )
    counts = np.bincount((gt * NUM_IDS + pred).ravel(), minlength=NUM_IDS * NUM_IDS)
    conf = counts.reshape(NUM_IDS, NUM_IDS)
    unknown = np.flatnonzero(~KNOWN_ID_MASK & (conf.sum(axis=1) > 0))
    if unknown.size:
        raise ValueError(f"confusion_over_ids: unknown ground-truth label id(s) {unknown.tolist()}")
    return conf


def _check_conf(conf: Any, n: int, what: str) -> np.ndarray:
    conf = np.asarray(conf)
    if conf.shape != (n, n):
        raise ValueError(f"{what}: conf must be ({n}, {n}), got {conf.shape}")
    if np.any(conf < 0):
        raise ValueError(f"{what}: conf has negative counts")
    return conf.astype(np.int64)


def _mean_valid(values: Iterable[float]) -> float:
    valid = [v for v in values if not math.isnan(v)]
    return float(sum(valid) / len(valid)) if valid else math.nan


def official_miou_from_confusion(conf: np.ndarray, include_void: bool = True) -> dict[str, Any]:
    """Official ApolloScape class and category IoUs from a (256, 256) id confusion matrix.

    Args:
      conf: int (256, 256) counts, rows = ground-truth id, columns = predicted id (the sum of
        `confusion_over_ids` over the images).
      include_void: count `void` (id 0) in "miou" like the public script (default); False
        averages the 17 marking classes only. Both values are returned in any case.

    Returns:
      {"iou": {name: IoU or nan} for all 38 classes (nan for ignored classes and for classes
      with TP + FP + FN = 0), "tp"/"fp"/"fn": {name: int} for the 18 evaluated classes,
      "miou" (per `include_void`), "miou_with_void", "miou_without_void",
      "category_iou": {category: IoU or nan}, "category_miou", "num_pixels"}.

    Raises:
      ValueError: if `conf` is not (256, 256) or has negative entries.
    """
    conf = _check_conf(conf, NUM_IDS, "official_miou_from_confusion")
    valid_rows = np.flatnonzero(KNOWN_ID_MASK & ~IGNORED_ID_MASK)
    iou: dict[str, float] = {}
    tps: dict[str, int] = {}
    fps: dict[str, int] = {}
    fns: dict[str, int] = {}
    for label in LABELS:
        if label.ignore_in_eval:
            iou[label.name] = math.nan
            continue
        c = label.id
        tp = int(conf[c, c])
        fn = int(conf[c, :].sum()) - tp
        fp = int(conf[valid_rows[valid_rows != c], c].sum())
        denom = tp + fp + fn
        iou[label.name] = tp / denom if denom else math.nan
        tps[label.name], fps[label.name], fns[label.name] = tp, fp, fn

    # cityscapesScripts getIouScoreForCategory: TP over the category block, FP from valid rows
    # outside the category.
    category_iou: dict[str, float] = {}
    for category in CATEGORIES:
        ids = [lb.id for lb in LABELS if lb.category == category and not lb.ignore_in_eval]
        if not ids:
            category_iou[category] = math.nan
            continue
        other_rows = [lb.id for lb in LABELS if not lb.ignore_in_eval and lb.category != category]
        tp = int(conf[np.ix_(ids, ids)].sum())
        fn = int(conf[ids, :].sum()) - tp
        fp = int(conf[np.ix_(other_rows, ids)].sum())
        denom = tp + fp + fn
        category_iou[category] = tp / denom if denom else math.nan

    with_void = _mean_valid(iou.values())
    without_void = _mean_valid(v for k, v in iou.items() if k != ID_TO_LABEL[VOID_ID].name)
    return {
        "iou": iou,
        "tp": tps,
        "fp": fps,
        "fn": fns,
        "miou": with_void if include_void else without_void,
        "miou_with_void": with_void,
        "miou_without_void": without_void,
        "category_iou": category_iou,
        "category_miou": _mean_valid(category_iou.values()),
        "num_pixels": int(conf.sum()),
    }


class OfficialMIoU:
    """Accumulates the official id confusion matrix over images; see `official_miou_...`."""

    def __init__(self, include_void: bool = True) -> None:
        """Creates an empty accumulator.

        Args:
          include_void: default for `result` (the public script includes void).
        """
        self.include_void = include_void
        self.conf = np.zeros((NUM_IDS, NUM_IDS), dtype=np.int64)
        self.num_images = 0

    def update(self, gt_ids: np.ndarray, pred_ids: np.ndarray) -> None:
        """Adds one full-size (H, W) image pair of ids (see `confusion_over_ids`)."""
        self.conf += confusion_over_ids(gt_ids, pred_ids)
        self.num_images += 1

    def result(self, include_void: bool | None = None) -> dict[str, Any]:
        """Official scores so far, plus "num_images".

        Raises:
          RuntimeError: if no image has been added.
        """
        if self.num_images == 0:
            raise RuntimeError("OfficialMIoU.result: no images were added")
        res = official_miou_from_confusion(
            self.conf, self.include_void if include_void is None else include_void
        )
        res["num_images"] = self.num_images
        return res


def read_id_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an id PNG like the official script: `np.array(PIL.Image.open(path))`.

    For palette PNGs (the released `_bin.png` labels) this yields the palette indices, i.e. the
    ids; for 8-bit gray PNGs (submissions) the gray values.

    Raises:
      ValueError: the image is not single-channel.
      OSError: the file cannot be read.
    """
    with Image.open(path) as img:
        arr = np.array(img)
    if arr.ndim != 2:
        raise ValueError(
            f"{os.fspath(path)}: expected a single-channel id image (palette or gray PNG), "
            f"got shape {arr.shape}"
        )
    return arr


def confusion_of_files(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Summed official confusion (`confusion_over_ids`) of (prediction, ground truth) PNG pairs.

    Raises:
      ValueError: a size mismatch, a multi-channel image or an unknown ground-truth id (the
        message names both files).
      OSError: a file is missing or not an image (named).
    """
    conf = np.zeros((NUM_IDS, NUM_IDS), dtype=np.int64)
    for pred_path, gt_path in pairs:
        try:
            conf += confusion_over_ids(read_id_png(gt_path), read_id_png(pred_path))
        except ValueError as e:
            raise ValueError(f"{pred_path} vs {gt_path}: {e}") from None
    return conf


_PAIRS_PER_TASK = 4  # full-size images per worker task


def evaluate_official(
    pred_paths: Sequence[str | os.PathLike[str]],
    gt_paths: Sequence[str | os.PathLike[str]],
    include_void: bool = True,
    *,
    workers: int | None = 1,
) -> dict[str, Any]:
    """Official mIoU over pairs of id PNG files (the dataset-api evaluation script's inputs).

    Args:
      pred_paths: prediction PNGs (ids, full size 3384 x 2710 for the real data).
      gt_paths: ground-truth `_bin.png` files, same order and length.
      include_void: see `official_miou_from_confusion`.
      workers: processes (None: all CPU cores; 1: in this process).

    Returns:
      The `official_miou_from_confusion` dict plus "num_images".

    Raises:
      ValueError: lists of different lengths or empty, a size mismatch or an unknown
        ground-truth id (the message names the files).
      OSError: a missing or unreadable file (named).
    """
    if len(pred_paths) != len(gt_paths):
        raise ValueError(
            f"evaluate_official: {len(pred_paths)} predictions but {len(gt_paths)} ground truths"
        )
    if not gt_paths:
        raise ValueError("evaluate_official: no image pairs given")
    pairs = [(os.fspath(p), os.fspath(g)) for p, g in zip(pred_paths, gt_paths, strict=True)]
    chunks = [pairs[i : i + _PAIRS_PER_TASK] for i in range(0, len(pairs), _PAIRS_PER_TASK)]
    confs = pool.map_images(
        confusion_of_files,
        chunks,
        workers=workers,
        what="ApolloScape mIoU images",
        units=[len(chunk) for chunk in chunks],
    )
    result = official_miou_from_confusion(np.sum(confs, axis=0), include_void)
    result["num_images"] = len(pairs)
    return result


def _png_files(root: str) -> list[str]:
    paths = []
    for dirpath, _, files in os.walk(root):
        paths.extend(os.path.join(dirpath, f) for f in files if f.lower().endswith(".png"))
    return sorted(paths)


def _name_key(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem.removesuffix("_bin")


def match_predictions(
    gt_dir: str | os.PathLike[str], pred_dir: str | os.PathLike[str]
) -> tuple[list[str], list[str]]:
    """Ground-truth PNGs under `gt_dir` (sorted) and their predictions under `pred_dir`.

    A prediction is found by file name anywhere under `pred_dir`: ``<name>_bin.png`` (the
    official sample names predictions like the labels) or ``<name>.png`` (the submission name)
    for a label ``<name>_bin.png``.

    Returns:
      ``(pred_paths, gt_paths)`` in the same order.

    Raises:
      FileNotFoundError: no ground-truth PNG, or a label without prediction (named).
      ValueError: two predictions with the same name (named).
    """
    gt_paths = _png_files(os.fspath(gt_dir))
    if not gt_paths:
        raise FileNotFoundError(f"no .png ground truth found under {os.fspath(gt_dir)!r}")
    by_name: dict[str, str] = {}
    for path in _png_files(os.fspath(pred_dir)):
        other = by_name.setdefault(_name_key(path), path)
        if other != path:
            raise ValueError(f"two predictions for the same image: {other} and {path}")
    pred_paths = []
    for gt_path in gt_paths:
        key = _name_key(gt_path)
        if key not in by_name:
            raise FileNotFoundError(
                f"{gt_path}: no prediction {key}.png (or {key}_bin.png) under "
                f"{os.fspath(pred_dir)!r}"
            )
        pred_paths.append(by_name[key])
    return pred_paths, gt_paths


# ----------------------------------------------------------------------------------------------
# Internal IntRA-KD metric.


def internal_miou_from_confusion(conf: np.ndarray) -> dict[str, Any]:
    """IntRA-KD's validation mIoU over the 37 train ids (not the official metric).

    iou[k] = diag / (row + col - diag + 1e-20), so a class absent from both ground truth and
    prediction counts 0, and the mean runs over all 37 classes.

    Args:
      conf: int (37, 37) counts, rows = ground-truth train id, columns = prediction, ground-truth
        255 already excluded (e.g. `evaluation.device.confusion_matrix(..., 37)`).

    Returns:
      {"iou": list of 37 floats, "miou": float, "pixel_accuracy": float (nan if empty)}.

    Raises:
      ValueError: if `conf` is not (37, 37) or has negative entries.
    """
    conf = _check_conf(conf, NUM_INTRAKD_CLASSES, "internal_miou_from_confusion")
    c64 = conf.astype(np.float64)
    diag = np.diag(c64)
    iou = diag / (c64.sum(axis=1) + c64.sum(axis=0) - diag + 1e-20)
    total = c64.sum()
    return {
        "iou": [float(v) for v in iou],
        "miou": float(iou.sum() / NUM_INTRAKD_CLASSES),
        "pixel_accuracy": float(diag.sum() / total) if total > 0 else math.nan,
    }


# ----------------------------------------------------------------------------------------------
# Submission.


def trainid_to_id(pred_trainids: np.ndarray) -> np.ndarray:
    """Maps IntRA-KD train ids (0..36) to official ids (uint8); 36 becomes 249 (noise).

    Raises:
      ValueError: values outside [0, 37) or a non-integer array.
    """
    pred = np.asarray(pred_trainids)
    if not np.issubdtype(pred.dtype, np.integer):
        raise ValueError(f"trainid_to_id: expected integer train ids, got dtype {pred.dtype}")
    if pred.size and (int(pred.min()) < 0 or int(pred.max()) >= NUM_INTRAKD_CLASSES):
        raise ValueError(
            f"trainid_to_id: train ids must lie in [0, {NUM_INTRAKD_CLASSES}), "
            f"got [{pred.min()}, {pred.max()}]"
        )
    return INTRAKD_TRAINID_TO_ID[pred]


def submission_image(
    pred_trainid_hw: np.ndarray,
    full_hw: Sequence[int] = FULL_HW,
    crop_top: int = CROP_TOP,
) -> np.ndarray:
    """One submission image: ids, nearest-resized to the crop and pasted on a zero canvas.

    As IntRA-KD `road_npy2img.py`: train id -> id, `cv2.resize(INTER_NEAREST)` to
    (W, H - crop_top) = (3384, 1010), pasted into rows crop_top.. of a zero (H, W) = (2710, 3384)
    uint8 canvas (rows above are void, id 0).

    Args:
      pred_trainid_hw: (h, w) integer train ids in [0, 37) at any resolution.
      full_hw: full image (height, width).
      crop_top: first row covered by the prediction.

    Returns:
      uint8 (H, W) id image.
    """
    pred = np.asarray(pred_trainid_hw)
    if pred.ndim != 2:
        raise ValueError(f"submission_image: expected (h, w) train ids, got shape {pred.shape}")
    height, width = int(full_hw[0]), int(full_hw[1])
    if not 0 <= crop_top < height:
        raise ValueError(f"submission_image: crop_top must lie in [0, {height}), got {crop_top}")
    ids = trainid_to_id(pred)
    resized = cv2.resize(ids, (width, height - crop_top), interpolation=cv2.INTER_NEAREST)
    canvas = np.zeros((height, width), dtype=np.uint8)
    canvas[crop_top:] = resized
    return canvas


def submission_png_name(image_name: str | os.PathLike[str]) -> str:
    """`<ts>_Camera_N.png` for a test image path or name like `.../<ts>_Camera_N.jpg`."""
    base = os.path.basename(os.fspath(image_name).replace("\\", "/"))
    stem, _ = os.path.splitext(base)
    if not stem:
        raise ValueError(f"submission_png_name: cannot derive an image name from {image_name!r}")
    return stem + ".png"


def write_submission_png(
    path: str | os.PathLike[str],
    pred_trainid_hw: np.ndarray,
    full_hw: Sequence[int] = FULL_HW,
    crop_top: int = CROP_TOP,
) -> str:
    """Writes one `submission_image` as an 8-bit gray PNG (parent folders are created)."""
    img = submission_image(pred_trainid_hw, full_hw, crop_top)
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "wb") as f:
        f.write(encode_png(img))
    return os.fspath(path)


class SubmissionZipWriter:
    """Streams submission PNGs into the server zip: `test/<road>/<name>.png` entries.

    Use as a context manager; `add` encodes one image at a time so a whole test set never sits
    in memory.
    """

    def __init__(
        self,
        zip_path: str | os.PathLike[str],
        road: str = "road05",
        full_hw: Sequence[int] = FULL_HW,
        crop_top: int = CROP_TOP,
    ) -> None:
        """Opens (truncates) `zip_path` for writing.

        Args:
          zip_path: output `.zip` file (parent folders are created).
          road: road folder inside `test/` (the test road is road05).
          full_hw: full image (height, width).
          crop_top: first row covered by the predictions.
        """
        if not road or "/" in road or "\\" in road:
            raise ValueError(f"SubmissionZipWriter: road must be a folder name, got {road!r}")
        folder = os.path.dirname(os.fspath(zip_path))
        if folder:
            os.makedirs(folder, exist_ok=True)
        self.road = road
        self.full_hw = (int(full_hw[0]), int(full_hw[1]))
        self.crop_top = int(crop_top)
        self.names: list[str] = []
        self._seen: set[str] = set()
        # PNG data is already deflated; storing avoids compressing it twice.
        self._zip = zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED)

    def add(self, image_name: str | os.PathLike[str], pred_trainid_hw: np.ndarray) -> str:
        """Adds one image; returns its entry name `test/<road>/<name>.png`.

        Raises:
          ValueError: a duplicate image name or bad train ids.
        """
        entry = f"test/{self.road}/{submission_png_name(image_name)}"
        if entry in self._seen:
            raise ValueError(f"SubmissionZipWriter.add: duplicate entry {entry!r}")
        img = submission_image(pred_trainid_hw, self.full_hw, self.crop_top)
        self._zip.writestr(entry, encode_png(img))
        self._seen.add(entry)
        self.names.append(entry)
        return entry

    def close(self) -> None:
        """Finishes the zip file."""
        self._zip.close()

    def __enter__(self) -> SubmissionZipWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------
# Command line.


def _build_parser() -> argparse.ArgumentParser:
    parser = cli.new_parser(
        "intrakd_jax.evaluation.apolloscape",
        "Official ApolloScape lane-marking mIoU (cityscapes script over label ids) of id PNGs.",
    )
    parser.add_argument("--gt", required=True, help="ground-truth folder (<name>_bin.png files)")
    parser.add_argument(
        "--pred",
        required=True,
        help="prediction folder: <name>.png or <name>_bin.png id images, any sub-folders",
    )
    parser.add_argument(
        "--without_void",
        action="store_true",
        help="leave void (id 0) out of the Score Average (the public script includes it)",
    )
    return parser


def _print_scores(title: str, scores: dict[str, float], average: float) -> None:
    # Laid out like the cityscapes script's tables, three decimals.
    print(f"{title:<14}   IoU")
    print("-" * 24)
    for name, value in scores.items():
        if not math.isnan(value):
            print(f"{name:<14}: {value:>5.3f}")
    print("-" * 24)
    print(f"{'Score Average':<14}: {average:>5.3f}")
    print("-" * 24)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    cli.require_dir(args.gt, "--gt")
    cli.require_dir(args.pred, "--pred")
    pred_paths, gt_paths = match_predictions(args.gt, args.pred)
    result = evaluate_official(
        pred_paths, gt_paths, include_void=not args.without_void, workers=args.workers
    )
    _print_scores("classes", result["iou"], result["miou"])
    _print_scores("categories", result["category_iou"], result["category_miou"])
    print(
        f"{result['num_images']} images; Score Average without void: "
        f"{result['miou_without_void']:.3f}"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (see `evaluation.cli`)."""
    return cli.run(_build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
