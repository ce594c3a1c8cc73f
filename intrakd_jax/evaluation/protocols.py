"""Official-format predictions and metrics of the batch evaluation job, one protocol per dataset.

A protocol receives, one example at a time, the example's files and the network's class
probabilities at network-input resolution (after the dataset's ``crop_top``), and

* writes the predictions in the benchmark's official submission format at full resolution,
* accumulates the benchmark's official metric against the full-resolution ground truth,
* returns, from ``finish``, the metrics and the markdown tables of the report.

  llamas       ``predictions/<rec>/<ts>.json_<k>.png`` probability maps, every map the official
               ``evaluate_segmentation.py`` reads (``json_0..4`` with background for
               multi-class, ``json_1`` for binary; official pixel AP per class, at 717 x 1276)
               and ``lanes/<rec>/<ts>.lines.txt`` (official lane F1)
  culane       ``lines/<image path>.lines.txt`` via prob2lines (official F1; the nine categories
               as well when the split is ``test`` and ``list/test_split`` exists)
  apolloscape  ``predictions/<road>/<name>.png`` id images at 3384 x 2710 (official mIoU over ids
               when the split has labels) and ``submission.zip`` (``test/<road>/<name>.png``);
               optional official multi-scale + corner-crop test-time augmentation

The protocols are plain numpy; the job (``intrakd_jax.batch_eval``) owns the model and devices.
Lane existence: the models have no existence head, so a lane slot exists when at least
``exist_min_fraction`` of the map's pixels are predicted as that slot (argmax).
"""

from __future__ import annotations

import abc
import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from data_pipelines.formats import lines_txt
from intrakd_jax.evaluation import apolloscape, culane, llamas, llamas_lanes, prob2lines, report
from intrakd_jax.evaluation import tta as tta_lib

PredictFn = Callable[[np.ndarray], np.ndarray]  # (B, h, w, 3) normalised -> (B, h, w, K) scores


@dataclasses.dataclass(frozen=True)
class ProtocolContext:
    """What a protocol needs to know about the split it evaluates.

    Attributes:
      split: split name.
      out_dir: folder of this checkpoint's results on this split.
      data_dir: dataset root.
      class_names: one name per class.
      source_hw: (height, width) of the raw frames.
      crop_top: rows dropped at the top before the network.
      network_hw: (height, width) of the network input.
      mean_rgb: normalisation mean (for test-time augmentation, which reads raw images).
      std_rgb: normalisation divisor.
      write_predictions: False skips the official-format files that metrics do not need.
      exist_min_fraction: lane-existence threshold (fraction of map pixels).
      tta: "none" or "official" (ApolloScape only).
      tta_test_size: official test size (crop width) at the official scale, e.g. 1440.
      tta_multiple: the crop's height and width are multiples of this (the model's input
        divisor: 8 for ERFNet, 1 for PSPNet, which keeps the official 470 x 1410 crop).
      include_void: ApolloScape official mIoU includes the void class (public script).
      workers: processes for the lane metrics (None = all cores).
    """

    split: str
    out_dir: str
    data_dir: str
    class_names: tuple[str, ...]
    source_hw: tuple[int, int]
    crop_top: int
    network_hw: tuple[int, int]
    mean_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    write_predictions: bool = True
    exist_min_fraction: float = 0.0005
    tta: str = "none"
    tta_test_size: int = tta_lib.ERFNET_TEST_SIZE
    tta_multiple: int = 8
    include_void: bool = True
    workers: int | None = None


class Protocol(abc.ABC):
    """Official predictions + metrics of one benchmark (see the module docstring)."""

    def __init__(self, ctx: ProtocolContext, predict_fn: PredictFn | None = None):
        """Stores the context; ``predict_fn`` runs the network for test-time augmentation."""
        self.ctx = ctx
        self.predict_fn = predict_fn
        self.num_images = 0

    @abc.abstractmethod
    def add(self, key: str, image_path: str, label_path: str | None, probs_hwk: np.ndarray):
        """Adds one example: probabilities (h, w, K) at network resolution over the crop."""

    @abc.abstractmethod
    def finish(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Metrics and report tables (title -> markdown)."""

    # -- shared helpers -------------------------------------------------------------------------

    def full_probs(self, probs_hwk: np.ndarray) -> np.ndarray:
        """Bilinear upsampling to the cropped source size; rows above the crop are background."""
        height, width = self.ctx.source_hw
        top = self.ctx.crop_top
        probs = np.asarray(probs_hwk, np.float32)
        up = cv2.resize(probs, (width, height - top), interpolation=cv2.INTER_LINEAR)
        up = up.reshape(height - top, width, probs.shape[-1])
        if not top:
            return up
        above = np.zeros((top, width, probs.shape[-1]), np.float32)
        above[..., 0] = 1.0
        return np.concatenate([above, up], axis=0)

    def lane_exists(self, probs_hwk: np.ndarray) -> np.ndarray:
        """(K-1,) bool: a lane slot exists when enough pixels are predicted as that slot."""
        pred = np.argmax(probs_hwk, axis=-1)
        counts = np.bincount(pred.ravel(), minlength=probs_hwk.shape[-1])[1:]
        return counts >= max(1.0, self.ctx.exist_min_fraction * pred.size)

    def lane_rows(self, first_row: int, full_height: int) -> dict:
        """prob2lines sampling: every 20 px of a full-size frame, scaled with the frame.

        Returns ``num_points`` and ``row_step`` so that the rows run from the bottom up to
        ``first_row`` (the crop line, or the benchmark's first evaluated row), at most 18 points
        as in the official script.
        """
        height, map_height = self.ctx.source_hw[0], self.ctx.network_hw[0]
        step = max(1, round(prob2lines.ROW_STEP * height / full_height))
        span = height - max(first_row, self.ctx.crop_top)
        # The highest sample must still land on map row >= 1 (1-based, as the official script).
        span = min(span, (height - self.ctx.crop_top) * (1.0 - 1.0 / map_height))
        points = int(span // step) + 1
        return {"num_points": max(1, min(prob2lines.NUM_POINTS, points)), "row_step": step}

    def canvas(self, full_width: int) -> dict:
        """The lane metrics' canvas: the frame size and the 30 px lane width scaled with it."""
        height, width = self.ctx.source_hw
        return {
            "width": max(1, round(30 * width / full_width)),
            "im_width": width,
            "im_height": height,
        }

    def path(self, *parts: str) -> str:
        """A path inside the output folder (parents created)."""
        path = os.path.join(self.ctx.out_dir, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path


def _read_label_png(path: str) -> np.ndarray:
    label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2:
        raise ValueError(f"cannot read an 8-bit single-channel label PNG from {path}")
    return label


# ----------------------------------------------------------------------------------------------
# LLAMAS


class LlamasProtocol(Protocol):
    """Official LLAMAS pixel AP (2.6a) and lane F1 (2.6b) with their submission files."""

    def __init__(self, ctx: ProtocolContext, predict_fn: PredictFn | None = None):
        """See ``Protocol``."""
        super().__init__(ctx, predict_fn)
        names = ctx.class_names
        self.ap = llamas.PixelAPAccumulator(len(names), names)
        self.labelled = 0
        self.label_jsons: list[str] = []
        scale = ctx.source_hw[0] / llamas_lanes.IMAGE_HW[0]
        self.rows = self.lane_rows(round(llamas_lanes.MIN_ROW * scale), llamas_lanes.IMAGE_HW[0])

    def add(self, key, image_path, label_path, probs_hwk):
        """See ``Protocol.add``."""
        self.num_images += 1
        full = self.full_probs(probs_hwk)
        if self.ctx.write_predictions:
            # Every map the official script reads: json_0..4 (background too) for multi-class,
            # json_1 for a binary model.
            llamas.write_llamas_probability_pngs(
                os.path.join(self.ctx.out_dir, "predictions"), key, full
            )
        lines_txt.write_lines_txt(self.path("lanes", key + ".lines.txt"), self.lanes(probs_hwk))
        if label_path is not None:
            label = _read_label_png(label_path)
            self.ap.update(full[None], label[None])
            self.labelled += 1
            self.label_jsons.append(
                os.path.join(self.ctx.data_dir, "labels", self.ctx.split, key + ".json")
            )

    def lanes(self, probs_hwk: np.ndarray) -> list[np.ndarray]:
        """The official-format lanes of one frame (prob2lines at the source resolution)."""
        maps_lhw = np.moveaxis(np.asarray(probs_hwk, np.float32)[..., 1:], -1, 0)
        return prob2lines.prob2lines(
            maps_lhw,
            self.lane_exists(probs_hwk),
            image_width=self.ctx.source_hw[1],
            image_height=self.ctx.source_hw[0],
            crop_top=self.ctx.crop_top,
            **self.rows,
        )

    def finish(self):
        """See ``Protocol.finish``."""
        metrics: dict[str, Any] = {"num_images": self.num_images}
        tables: dict[str, str] = {}
        if not self.labelled:
            return metrics, tables
        pixel = self.ap.result()
        metrics["ap"] = {k: v["auc"] for k, v in pixel["per_class"].items()}
        metrics["map"] = pixel["map"]
        lane = llamas_lanes.evaluate_lane_f1(
            self.label_jsons,
            os.path.join(self.ctx.out_dir, "lanes"),
            image_hw=self.ctx.source_hw,
            width=self.canvas(llamas_lanes.IMAGE_HW[1])["width"],
            workers=self.ctx.workers,
        )
        metrics["lane_f1"] = lane
        rows = [{"class": k, "AP": v} for k, v in metrics["ap"].items()]
        rows.append({"class": "**mean (lanes)**", "AP": pixel["map"]})
        tables["official pixel AP (per class)"] = report.markdown_table(rows, ["class", "AP"])
        tables["official lane F1"] = report.markdown_table(
            [{k: lane[k] for k in ("tp", "fp", "fn", "precision", "recall", "f1")}],
            ["tp", "fp", "fn", "precision", "recall", "f1"],
        )
        return metrics, tables


# ----------------------------------------------------------------------------------------------
# CULane


class CulaneProtocol(Protocol):
    """Official CULane F1 (and per-category F1 on the test split) from prob2lines lanes."""

    def __init__(self, ctx: ProtocolContext, predict_fn: PredictFn | None = None):
        """See ``Protocol``."""
        super().__init__(ctx, predict_fn)
        self.image_list: list[str] = []

    def add(self, key, image_path, label_path, probs_hwk):
        """See ``Protocol.add``."""
        self.num_images += 1
        rel = os.path.relpath(image_path, self.ctx.data_dir).replace(os.sep, "/")
        self.image_list.append("/" + rel)
        lanes = self.lanes(probs_hwk)
        lines_txt.write_lines_txt(lines_txt.lines_txt_path(self.lines_dir, rel), lanes)

    def lanes(self, probs_hwk: np.ndarray) -> list[np.ndarray]:
        """The official-format lanes of one frame (the official averaged prob2lines)."""
        maps_lhw = np.moveaxis(np.asarray(probs_hwk, np.float32)[..., 1:], -1, 0)
        return prob2lines.prob2lines(
            prob2lines.average_score_maps(maps_lhw),
            self.lane_exists(probs_hwk),
            image_width=self.ctx.source_hw[1],
            image_height=self.ctx.source_hw[0],
            crop_top=self.ctx.crop_top,
            **self.lane_rows(0, prob2lines.CULANE_IMAGE_HEIGHT),
        )

    @property
    def lines_dir(self) -> str:
        """Prediction root, laid out like the dataset."""
        return os.path.join(self.ctx.out_dir, "lines")

    def finish(self):
        """See ``Protocol.finish``."""
        metrics: dict[str, Any] = {"num_images": self.num_images}
        tables: dict[str, str] = {}
        os.makedirs(self.lines_dir, exist_ok=True)
        list_file = self.path(f"list_{self.ctx.split}.txt")
        with open(list_file, "w") as f:
            f.write("".join(p + "\n" for p in self.image_list))
        have_anno = any(
            os.path.exists(lines_txt.lines_txt_path(self.ctx.data_dir, p)) for p in self.image_list
        )
        if not have_anno:
            return metrics, tables
        canvas = self.canvas(prob2lines.CULANE_IMAGE_WIDTH)
        total = culane.evaluate(
            self.ctx.data_dir, self.lines_dir, list_file, workers=self.ctx.workers, **canvas
        )
        metrics["culane_f1"] = total
        keys = ("tp", "fp", "fn", "precision", "recall", "f1")
        tables["official CULane F1"] = report.markdown_table([{k: total[k] for k in keys}], keys)
        split_dir = os.path.join(self.ctx.data_dir, "list", "test_split")
        evaluated = set(self.image_list)
        if os.path.isdir(split_dir) and all(
            set(_list_lines(culane.category_list(split_dir, i))) <= evaluated
            for i in range(len(culane.CATEGORIES))
        ):
            per_cat = culane.evaluate_categories(
                self.ctx.data_dir, self.lines_dir, split_dir, workers=self.ctx.workers, **canvas
            )
            metrics["culane_categories"] = per_cat
            tables["official CULane F1 per category"] = culane.category_table(per_cat)
        return metrics, tables


def _list_lines(path: str) -> list[str]:
    if not os.path.exists(path):
        return ["<missing>"]
    with open(path) as f:
        return ["/" + line.split()[0].lstrip("/") for line in f if line.strip()]


# ----------------------------------------------------------------------------------------------
# ApolloScape

_ROAD_RE = re.compile(r"(road\d+)")


def scaled_tta_geometry(
    network_hw: Sequence[int], test_size: int, multiple: int = 8
) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Official TTA scales and crop, scaled from the official 505 x 1692 training scale.

    The official scripts train at scale 0.5 (505 x 1692 for the 1010-row crop) with random
    crops of (test_size // 3) x test_size; a model trained at another input size gets the same
    geometry in proportion: scales x (network width / 1488), crop x the same factor. The crop
    is then moved to the nearest multiple of ``multiple`` (the networks' output stride) that
    still lets four corner crops cover every scale.

    Raises:
      ValueError: no such crop exists (a network input too small for this TTA).
    """
    factor = network_hw[1] / 1488.0
    scales = [
        (max(1, round(h * factor)), max(1, round(w * factor)))
        for h, w in tta_lib.OFFICIAL_SCALES_HW
    ]
    crop = []
    for axis, size in enumerate(tta_lib.official_crop_hw(test_size)):
        want = size * factor
        low = max((s[axis] + 1) // 2 for s in scales)  # four corners must cover each scale
        high = min(s[axis] for s in scales)
        fits = [c for c in range(multiple, high + 1, multiple) if c >= low]
        if not fits:
            raise ValueError(
                f"test-time augmentation: no crop multiple of {multiple} between {low} and "
                f"{high} pixels for scales {scales} (network input {tuple(network_hw)})"
            )
        crop.append(min(fits, key=lambda c: abs(c - want)))
    return scales, (crop[0], crop[1])


class ApolloscapeProtocol(Protocol):
    """Official ApolloScape mIoU over ids, submission PNGs and zip, optional official TTA."""

    def __init__(self, ctx: ProtocolContext, predict_fn: PredictFn | None = None):
        """See ``Protocol``; ``ctx.tta == "official"`` needs ``predict_fn``."""
        super().__init__(ctx, predict_fn)
        if ctx.tta not in ("none", "official"):
            raise ValueError(f"config.eval.tta must be 'none' or 'official', got {ctx.tta!r}")
        if ctx.tta == "official" and predict_fn is None:
            raise ValueError("test-time augmentation needs a predict_fn")
        self.official = apolloscape.OfficialMIoU(include_void=ctx.include_void)
        self.zip = None
        if ctx.tta == "official":
            self.scales, self.crop = scaled_tta_geometry(
                ctx.network_hw, ctx.tta_test_size, ctx.tta_multiple
            )

    def _tta_trainids(self, image_path: str) -> np.ndarray:
        bgr = cv2.imread(image_path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read image {image_path}")
        rgb = bgr[self.ctx.crop_top :, :, ::-1].astype(np.float32)
        norm = (rgb - np.asarray(self.ctx.mean_rgb, np.float32)) / np.asarray(
            self.ctx.std_rgb, np.float32
        )
        scores = tta_lib.tta_probs(self.predict_fn, norm, self.scales, self.crop)
        return np.argmax(scores, axis=-1)

    def add(self, key, image_path, label_path, probs_hwk):
        """See ``Protocol.add``."""
        self.num_images += 1
        if self.ctx.tta == "official":
            trainids = self._tta_trainids(image_path)
        else:
            trainids = np.argmax(probs_hwk, axis=-1)
        ids = apolloscape.submission_image(trainids, self.ctx.source_hw, self.ctx.crop_top)
        match = _ROAD_RE.search(image_path.replace(os.sep, "/"))
        road = match.group(1) if match else "road"
        name = apolloscape.submission_png_name(image_path)
        if self.ctx.write_predictions:
            cv2.imwrite(self.path("predictions", road, name), ids)
        if label_path is None:
            if self.zip is None:
                self.zip = apolloscape.SubmissionZipWriter(
                    self.path("submission.zip"), road, self.ctx.source_hw, self.ctx.crop_top
                )
            self.zip.add(image_path, trainids)
        else:
            self.official.update(apolloscape.read_id_png(label_path), ids)

    def finish(self):
        """See ``Protocol.finish``."""
        metrics: dict[str, Any] = {"num_images": self.num_images, "tta": self.ctx.tta}
        tables: dict[str, str] = {}
        if self.zip is not None:
            self.zip.close()
            metrics["submission_zip"] = self.path("submission.zip")
        if self.official.num_images:
            res = self.official.result()
            metrics["official"] = res
            rows = [
                {"class": name, "IoU": iou}
                for name, iou in res["iou"].items()
                if iou == iou  # classes scored by the official script (others are NaN)
            ]
            rows.append({"class": "**Score Average**", "IoU": res["miou"]})
            rows.append(
                {"class": "**Score Average without void**", "IoU": res["miou_without_void"]}
            )
            tables["official mIoU over ids (cityscapes script)"] = report.markdown_table(
                rows, ["class", "IoU"]
            )
        return metrics, tables


class SegmentationOnlyProtocol(Protocol):
    """Datasets without an official protocol: only the job's mIoU at network resolution."""

    def add(self, key, image_path, label_path, probs_hwk):
        """See ``Protocol.add``."""
        self.num_images += 1

    def finish(self):
        """See ``Protocol.finish``."""
        return {"num_images": self.num_images}, {}


PROTOCOLS: dict[str, type[Protocol]] = {
    "llamas": LlamasProtocol,
    "culane": CulaneProtocol,
    "apolloscape": ApolloscapeProtocol,
}


def get_protocol(
    dataset_name: str, ctx: ProtocolContext, predict_fn: PredictFn | None = None
) -> Protocol:
    """The dataset's protocol (a segmentation-only one for unknown datasets)."""
    return PROTOCOLS.get(dataset_name, SegmentationOnlyProtocol)(ctx, predict_fn)
