"""mode=predict: a trained (or imported) model on your own images or dashcam video.

``python main.py --config=configs/culane.py --config.mode=predict
--config.checkpoint=runs/culane/distill --config.predict.input=my_drive/ --workdir=runs/pred``

The input is a folder (searched recursively), a glob, a list file (one path per line; CULane
lists work as they are) or a video file. Every frame gets the dataset's input policy, whatever
its size: the top ``crop_top`` rows (scaled with the frame height, see ``frame_crop_top``) are
dropped, the rest is resized to the network input and normalised, exactly as the evaluation
pipeline does; predictions are mapped back onto the original frame. Written into
``config.predict.output`` (default ``<workdir>/predict``), mirroring the input's folders:

  overlays/<name>.png          the prediction coloured over the frame (video: overlay.mp4 at the
                               source frame rate and size)
  lines/<name>.lines.txt       CULane / LLAMAS lanes (prob2lines, as the batch evaluation job;
                               LLAMAS names drop ``_color_rect`` like the official lane files)
  ids/<name>.png               ApolloScape official ids at full resolution
  probs/<name>_<k>_<class>.png with config.predict.probabilities: 8-bit probability per class
  predict.json                 counts, skipped files and why, geometry, checkpoint

Frames are batched over all devices (the last batch padded). Unreadable files are reported and
skipped; they never stop a folder halfway.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import cv2
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from data_pipelines.formats import lines_txt, lists
from data_pipelines.formats import llamas as llamas_format
from data_pipelines.util import ProgressLogger
from intrakd_jax import batch_eval, building, inference, parallel
from intrakd_jax.errors import ConfigError
from intrakd_jax.evaluation import apolloscape, protocols, report, visualize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
LANE_DATASETS = ("culane", "llamas")


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One image to predict: its path and its name below the output folders (POSIX, no ext)."""

    path: str
    name: str


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What ``config.predict.input`` names: images (``files``) or one video (``video``)."""

    files: tuple[InputFile, ...] = ()
    video: str | None = None
    skipped: tuple[dict[str, str], ...] = ()  # list lines naming missing files


def _stem(rel: str) -> str:
    rel = rel.replace(os.sep, "/").lstrip("/")
    return os.path.splitext(rel)[0]


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _from_list(list_path: str) -> Inputs:
    """A list file: per line the whole line if it names a file, else its first column.

    Paths are absolute or relative to the list's folder; ``#`` starts a comment.
    """
    base = os.path.dirname(os.path.abspath(list_path))
    log = lists.ProblemLog()
    numbered = lists.read_list_lines(list_path, log, "one image path per line")
    if log.problems:
        raise ConfigError(f"config.predict.input: {log.problems[0].format()}")

    def resolve(entry: str) -> str:
        # CULane lists start paths with '/' relative to the dataset root.
        if os.path.isabs(entry) and os.path.isfile(entry):
            return entry
        return os.path.join(base, entry.lstrip("/"))

    files, skipped = [], []
    for line_no, line in numbered:
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        # The whole line (paths with spaces, as ApolloScape's "Camera 5"), else its first
        # column (CULane train lists add a label path and lane flags).
        entry = text if os.path.isfile(resolve(text)) else text.split()[0]
        path = resolve(entry)
        if not os.path.isfile(path):
            skipped.append({"file": f"{list_path}:{line_no}", "reason": f"not found: {entry}"})
            continue
        files.append(InputFile(os.path.abspath(path), _stem(entry)))
    return Inputs(tuple(files), skipped=tuple(skipped))


def collect_inputs(spec: str | None) -> Inputs:
    """Resolves ``config.predict.input`` into the files (or the video) to predict.

    Raises:
      ConfigError: nothing given, nothing found, or an unreadable list file.
    """
    if not spec:
        raise ConfigError(
            "mode=predict needs --config.predict.input=<folder, glob, list file or video>"
        )
    if os.path.isdir(spec):
        files = []
        for root, dirs, names in os.walk(spec):
            dirs.sort()
            for name in sorted(names):
                if _is_image(name):
                    path = os.path.join(root, name)
                    files.append(
                        InputFile(os.path.abspath(path), _stem(os.path.relpath(path, spec)))
                    )
        found = Inputs(tuple(files))
    elif os.path.isfile(spec) and spec.lower().endswith(VIDEO_EXTENSIONS):
        return Inputs(video=os.path.abspath(spec))
    elif os.path.isfile(spec) and _is_image(spec):
        found = Inputs((InputFile(os.path.abspath(spec), _stem(os.path.basename(spec))),))
    elif os.path.isfile(spec):
        found = _from_list(spec)
    else:
        matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not matches and not glob.has_magic(spec):
            raise ConfigError(f"config.predict.input = {spec!r}: no such file or folder")
        # Names below the glob's first folder with a wildcard keep sub-folders apart.
        base = (
            spec[: min(spec.index(c) for c in "*?[" if c in spec)] if glob.has_magic(spec) else spec
        )
        base = os.path.dirname(base) if not base.endswith(os.sep) else base
        files = [
            InputFile(os.path.abspath(p), _stem(os.path.relpath(p, base or ".")))
            for p in matches
            if _is_image(p)
        ]
        found = Inputs(tuple(files))
    if not found.files:
        raise ConfigError(
            f"config.predict.input = {spec!r}: no images found (extensions "
            f"{', '.join(IMAGE_EXTENSIONS)}; videos: {', '.join(VIDEO_EXTENSIONS)})"
            + (f"; {len(found.skipped)} list entries do not exist" if found.skipped else "")
        )
    return found


# ----------------------------------------------------------------------------------------------
# Frame geometry and preprocessing


def frame_crop_top(frame_height: int, crop_top: int, reference_height: int) -> int:
    """``crop_top`` rows of the dataset's frames, scaled to a frame of another height.

    Always leaves at least one row.
    """
    rows = round(crop_top * frame_height / max(reference_height, 1))
    return int(min(max(rows, 0), frame_height - 1))


@tf.function(reduce_retracing=True)
def _network_input(image_hwc, crop_top, mean_rgb, std_rgb, out_hw):
    # The evaluation pipeline's ops in its order (loader.combine, augment.resize_pair), so the
    # outputs equal the batch evaluation job's on the same frames.
    image = image_hwc[crop_top:]
    image = (tf.cast(image, tf.float32) - mean_rgb) / std_rgb
    return tf.image.resize(tf.cast(image, tf.float32), out_hw, method="bilinear")


def decode_image(path: str) -> np.ndarray:
    """An image file -> uint8 (H, W, 3) RGB, decoded as the training pipeline decodes.

    Raises:
      ValueError: unreadable, empty or not an image (the message says which).
    """
    with open(path, "rb") as f:
        contents = f.read()
    if not contents:
        raise ValueError("empty file")
    try:
        image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    except tf.errors.OpError as e:
        raise ValueError(f"cannot decode image ({str(e.message).splitlines()[0]})") from None
    return image.numpy()


# ----------------------------------------------------------------------------------------------
# Outputs of one frame


class FrameWriter:
    """Writes every output of one predicted frame (see the module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict, info, out_dir: str):
        """Output folder and choices from ``config.predict``; the class table from ``info``."""
        self.pcfg = config.predict
        self.info = info
        self.out_dir = out_dir
        self.exist_min_fraction = float(config.eval.get("exist_min_fraction", 0.0005))
        self._lane_protocols: dict[tuple[int, int, int], protocols.Protocol] = {}

    def _protocol(self, frame_hw: tuple[int, int], crop_top: int) -> protocols.Protocol:
        # The batch job's protocol at this frame's geometry computes the lanes.
        key = (*frame_hw, crop_top)
        if key not in self._lane_protocols:
            ctx = protocols.ProtocolContext(
                split="predict",
                out_dir=self.out_dir,
                data_dir="",
                class_names=tuple(self.info.class_names),
                source_hw=frame_hw,
                crop_top=crop_top,
                network_hw=tuple(self.info.image_hw),
                exist_min_fraction=self.exist_min_fraction,
            )
            self._lane_protocols[key] = protocols.get_protocol(self.info.name, ctx)
        return self._lane_protocols[key]

    def full_prediction(self, probs_hwk: np.ndarray, frame_hw, crop_top: int) -> np.ndarray:
        """Class ids (H, W) over the frame: nearest-upsampled below the crop, 0 above."""
        height, width = frame_hw
        pred = np.argmax(probs_hwk, axis=-1).astype(np.uint8)
        up = cv2.resize(pred, (width, height - crop_top), interpolation=cv2.INTER_NEAREST)
        return np.concatenate([np.zeros((crop_top, width), np.uint8), up], axis=0)

    def write(
        self, name: str, rgb_hwc: np.ndarray, crop_top: int, probs_hwk: np.ndarray
    ) -> np.ndarray:
        """Writes ``name``'s files; returns the overlay (H, W, 3) RGB."""
        frame_hw = rgb_hwc.shape[:2]
        dataset = self.info.name
        if self.pcfg.official and dataset in LANE_DATASETS:
            lanes = self._protocol(frame_hw, crop_top).lanes(probs_hwk)
            lane_name = name
            if dataset == "llamas" and name.endswith(llamas_format.COLOR_SUFFIX[:-4]):
                lane_name = name[: -len(llamas_format.COLOR_SUFFIX[:-4])]
            path = os.path.join(self.out_dir, "lines", lane_name + ".lines.txt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            lines_txt.write_lines_txt(path, lanes)
        if self.pcfg.official and dataset == "apolloscape":
            trainids = np.argmax(probs_hwk, axis=-1)
            ids = apolloscape.submission_image(trainids, frame_hw, crop_top)
            _imwrite(os.path.join(self.out_dir, "ids", name + ".png"), ids)
        if self.pcfg.probabilities:
            self._write_probabilities(name, probs_hwk, frame_hw, crop_top)
        pred = self.full_prediction(probs_hwk, frame_hw, crop_top)
        return visualize.overlay(rgb_hwc, pred, self.info.num_classes)

    def _write_probabilities(self, name, probs_hwk, frame_hw, crop_top) -> None:
        height, width = frame_hw
        for k, class_name in enumerate(self.info.class_names):
            up = cv2.resize(
                np.ascontiguousarray(probs_hwk[..., k], np.float32),
                (width, height - crop_top),
                interpolation=cv2.INTER_LINEAR,
            )
            full = np.zeros((height, width), np.float32)
            full[crop_top:] = up
            if k == 0:
                full[:crop_top] = 1.0  # above the crop: background
            png = np.clip(np.rint(full * 255.0), 0, 255).astype(np.uint8)
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in class_name)
            _imwrite(os.path.join(self.out_dir, "probs", f"{name}_{k}_{safe}.png"), png)


def _imwrite(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, image):
        raise OSError(f"could not write {path}")


# ----------------------------------------------------------------------------------------------
# The job


def _prefetched(fn: Callable, items: Iterable, ahead: int) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item) or the exception it raised)`` in order, ``ahead`` items decoded early."""
    with concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        window: collections.deque = collections.deque()
        for item in items:
            window.append((item, pool.submit(fn, item)))
            if len(window) >= ahead:
                yield _result(*window.popleft())
        while window:
            yield _result(*window.popleft())


def _result(item, future) -> tuple[Any, Any]:
    try:
        return item, future.result()
    except (OSError, ValueError) as e:
        return item, e


def _video_frames(path: str, max_frames: int | None) -> tuple[Iterator[np.ndarray], dict]:
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ConfigError(f"config.predict.input = {path!r}: cannot open the video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if max_frames:
        count = min(count, max_frames) if count else max_frames
    meta = {"fps": fps, "num_frames": count}

    def frames() -> Iterator[np.ndarray]:
        n = 0
        try:
            while not max_frames or n < max_frames:
                ok, bgr = capture.read()
                if not ok:
                    return
                n += 1
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()

    return frames(), meta


def predict(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs ``config.checkpoint`` over ``config.predict.input`` (see the module docstring).

    Returns:
      The summary written to ``predict.json``: ``num_frames`` predicted, ``skipped`` files with
      reasons, the output folder and what was written.

    Raises:
      ConfigError: no or several checkpoints, no input, an unreadable video, a batch size that
        does not split over the devices.
    """
    try:
        paths = batch_eval.checkpoint_paths(config.checkpoint)
    except ValueError as e:
        raise ConfigError(str(e).replace("mode=evaluate", "mode=predict")) from None
    if len(paths) != 1:
        raise ConfigError(f"mode=predict takes one checkpoint; config.checkpoint names {paths}")
    inputs = collect_inputs(config.predict.input)
    dataset, ref_hw, ref_from = building.inference_dataset(config.data)
    if ref_hw is None:
        raise ConfigError(
            f"mode=predict: the {dataset.info.name} frames are not on this machine and there is "
            "no official frame size to scale config.data.crop_top with"
        )
    info, options = dataset.info, dataset.options
    mesh = parallel.make_data_mesh(config.num_devices)
    batch_size = int(config.predict.batch_size or config.eval_batch_size)
    parallel.local_batch_size(batch_size, mesh)  # a clear error unless it splits over devices
    model, variables, step, meta = building.load_eval_checkpoint(config, paths[0], info, mesh)
    predict_fn = inference.make_predict_fn(model, variables, mesh)
    out_dir = config.predict.output or os.path.join(workdir, "predict")
    # Every process of a multi-host job decodes and predicts every frame (the sharded batch is
    # global); only process 0 writes, so no two processes write one file.
    lead = parallel.is_lead_process()
    if lead:
        os.makedirs(out_dir, exist_ok=True)
    logging.info(
        "predict: %s (step %d) on %s -> %s; crop_top %d of %d rows (%s), network input %s",
        paths[0],
        step,
        inputs.video or f"{len(inputs.files)} images",
        out_dir,
        options.crop_top,
        ref_hw[0],
        ref_from,
        tuple(info.image_hw),
    )
    writer = FrameWriter(config, info, out_dir)
    mean = tf.constant(options.mean_rgb, tf.float32)
    std = tf.constant(options.std_rgb, tf.float32)
    out_hw = tf.constant(info.image_hw, tf.int32)

    def prepare(rgb: np.ndarray) -> tuple[np.ndarray, int]:
        crop = frame_crop_top(rgb.shape[0], options.crop_top, ref_hw[0])
        return _network_input(rgb, tf.constant(crop), mean, std, out_hw).numpy(), crop

    skipped = [dict(s) for s in inputs.skipped]
    video_writer = None
    if inputs.video:
        frames, video_meta = _video_frames(inputs.video, config.predict.max_frames)
        stem = _stem(os.path.basename(inputs.video))
        named = ((InputFile(inputs.video, f"{stem}/{i:06d}"), rgb) for i, rgb in enumerate(frames))
        total = video_meta["num_frames"]
    else:
        video_meta = {}
        named = _prefetched(lambda item: decode_image(item.path), inputs.files, 2 * batch_size)
        total = len(inputs.files)
    progress = ProgressLogger("[predict] frames", total, every_s=10.0)
    num_frames = 0
    batch: list[tuple[str, np.ndarray, int, np.ndarray]] = []

    def flush() -> None:
        nonlocal num_frames, video_writer
        if not batch:
            return
        images = np.stack([b[3] for b in batch])
        if len(batch) < batch_size:  # one compiled shape: pad the last batch
            pad = np.zeros((batch_size - len(batch), *images.shape[1:]), np.float32)
            images = np.concatenate([images, pad])
        probs_bhwk = predict_fn(images)
        for (name, rgb, crop, _), probs in zip(batch, probs_bhwk, strict=False):
            if not lead:
                continue
            shown = writer.write(name, rgb, crop, probs)
            if inputs.video:
                if video_writer is None:
                    video_writer = _open_video_writer(out_dir, video_meta["fps"], rgb.shape[:2])
                video_writer.write(cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))
            elif config.predict.overlays:
                visualize.save_png(os.path.join(out_dir, "overlays", name + ".png"), shown)
        num_frames += len(batch)
        progress.update(len(batch))
        batch.clear()

    try:
        for item, rgb in named:
            if isinstance(rgb, Exception):
                skipped.append({"file": item.path, "reason": str(rgb)})
                logging.warning("predict: skipped %s: %s", item.path, rgb)
                progress.update(1)
                continue
            network_input, crop = prepare(rgb)
            batch.append((item.name, rgb, crop, network_input))
            if len(batch) == batch_size:
                flush()
        flush()
    finally:
        if video_writer is not None:
            video_writer.release()
    progress.finish()
    summary = {
        "checkpoint": os.path.abspath(paths[0]),
        "step": step,
        "model": meta.get("model"),
        "input": config.predict.input,
        "output": os.path.abspath(out_dir),
        "num_frames": num_frames,
        "num_skipped": len(skipped),
        "skipped": skipped,
        "crop_top_reference": {"frame_hw": list(ref_hw), "crop_top": options.crop_top},
        "network_hw": list(info.image_hw),
        "class_names": list(info.class_names),
        **(
            {"video": {**video_meta, "overlay": os.path.join(out_dir, "overlay.mp4")}}
            if inputs.video
            else {}
        ),
    }
    if not lead:
        return summary
    report.write_json(os.path.join(out_dir, "predict.json"), summary)
    print(
        f"\npredict: {num_frames} frames -> {out_dir}"
        + (f"; {len(skipped)} skipped (see predict.json)" if skipped else "")
    )
    return summary


def _open_video_writer(out_dir: str, fps: float, frame_hw) -> cv2.VideoWriter:
    path = os.path.join(out_dir, "overlay.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame_hw[1], frame_hw[0]))
    if not writer.isOpened():
        raise OSError(f"cannot write a video to {path} (OpenCV has no mp4v encoder here)")
    return writer
