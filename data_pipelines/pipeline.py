"""Dataset-independent tf.data machinery shared by every segmentation reader.

A reader (LLAMAS, later CULane/ApolloScape) subclasses ``SegmentationDataset`` and supplies the
per-split list of ``Example``s (image file, 8-bit label PNG or None) plus, optionally, its own
label decoder and left/right class swap table. This module turns those lists into the batch
iterators the training code consumes:

* training: an infinite, deterministic stream. Epoch ``e`` visits examples in the order
  ``np.random.default_rng([seed, e]).permutation(N)``; the global batch at step ``s`` holds
  stream positions ``[s*G, (s+1)*G)`` with ``G = batch_size * process_count``, and process ``p``
  takes the contiguous slice ``[s*G + p*B, s*G + (p+1)*B)``. Augmentation is seeded by
  ``(seed, stream position)``, so resuming at ``start_step`` reproduces an uninterrupted run.
* evaluation: one pass in key order, padded to whole global batches, with ``mask`` and
  ``index`` marking the padding.

Only indices are shuffled; images are decoded after the order is fixed. TF is kept off GPUs.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from data_pipelines import augment as augment_lib
from data_pipelines.errors import DataConfigError

IGNORE_LABEL = 255

_gpus_hidden = False


def hide_gpus_from_tf() -> None:
    """Makes TF use the CPU only, so it reserves no accelerator memory (called once, guarded)."""
    global _gpus_hidden
    if _gpus_hidden:
        return
    _gpus_hidden = True
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError) as e:  # TF already initialised its devices.
        logging.warning("Could not hide GPUs from TensorFlow: %s", e)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset as the training code sees it.

    Attributes:
        name: dataset name (``config.data.name``).
        num_classes: number of label classes (labels are 0..num_classes-1 or ignore_label).
        class_names: one name per class.
        class_weights: per-class loss weights, one per class.
        ignore_label: label value excluded from loss and metrics.
        image_hw: network input (height, width) of every batch.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    class_weights: tuple[float, ...]
    ignore_label: int = IGNORE_LABEL
    image_hw: tuple[int, int] = (0, 0)


@dataclasses.dataclass(frozen=True)
class Example:
    """One example: its key and files (``label_path`` None for unlabelled splits)."""

    key: str
    image_path: str
    label_path: str | None


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """Everything the tf.data graph needs besides the file lists.

    Attributes:
        image_hw: network input (H, W).
        crop_top: rows dropped at the top of the source image/label before resizing.
        mean_rgb: per-channel mean subtracted from the RGB image (0..255 scale).
        std_rgb: per-channel divisor applied after the mean.
        augment: training augmentation.
        shuffle: False keeps every training epoch in key order.
        num_parallel_calls: tf.data map parallelism (-1 = AUTOTUNE).
        prefetch: number of batches prefetched (0 = none, -1 = AUTOTUNE).
        class_lut: uint8 (256,) left/right class swap table used by horizontal flips, or None.
        ignore_label: label value of padding / rotation fill.
    """

    image_hw: tuple[int, int]
    crop_top: int = 0
    mean_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    augment: augment_lib.AugmentSpec = augment_lib.AugmentSpec()
    shuffle: bool = True
    num_parallel_calls: int = -1
    prefetch: int = 2
    class_lut: np.ndarray | None = None
    ignore_label: int = IGNORE_LABEL


def config_get(cfg, name: str, default=None):
    """Reads ``cfg.name`` from a ConfigDict or dict; ``default`` when absent or None."""
    if cfg is None:
        return default
    value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    return default if value is None else value


def _float_tuple(value, n: int, field: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise DataConfigError(f"{field} must be {n} finite numbers, got {value!r}")
    return out


def options_from_config(cfg, class_lut: np.ndarray | None = None) -> PipelineOptions:
    """Builds validated ``PipelineOptions`` from the shared ``config.data`` fields.

    Args:
        cfg: the data ConfigDict (fields image_hw, crop_top, mean_rgb, std_rgb, augment, shuffle,
            num_parallel_calls, prefetch).
        class_lut: the dataset's left/right class swap table for horizontal flips.

    Returns:
        The options.

    Raises:
        DataConfigError: a field has the wrong type or range (the message names the field).
    """
    hw = config_get(cfg, "image_hw")
    try:
        image_hw = (int(hw[0]), int(hw[1]))
        if len(hw) != 2 or min(image_hw) <= 0:
            raise ValueError
    except (TypeError, ValueError, IndexError):
        raise DataConfigError(
            f"config.data.image_hw must be (height, width) positive ints, got {hw!r}"
        ) from None
    crop_top = config_get(cfg, "crop_top", 0)
    if not isinstance(crop_top, int) or isinstance(crop_top, bool) or crop_top < 0:
        raise DataConfigError(f"config.data.crop_top must be an int >= 0, got {crop_top!r}")
    mean = _float_tuple(config_get(cfg, "mean_rgb", (0.0, 0.0, 0.0)), 3, "config.data.mean_rgb")
    std = _float_tuple(config_get(cfg, "std_rgb", (1.0, 1.0, 1.0)), 3, "config.data.std_rgb")
    if min(std) <= 0:
        raise DataConfigError(f"config.data.std_rgb must be positive, got {std!r}")
    npc = int(config_get(cfg, "num_parallel_calls", -1))
    if npc == 0 or npc < -1:
        raise DataConfigError(
            f"config.data.num_parallel_calls must be -1 (AUTOTUNE) or >= 1, got {npc}"
        )
    prefetch = int(config_get(cfg, "prefetch", 2))
    if prefetch < -1:
        raise DataConfigError(f"config.data.prefetch must be >= -1, got {prefetch}")
    return PipelineOptions(
        image_hw=image_hw,
        crop_top=crop_top,
        mean_rgb=mean,
        std_rgb=std,
        augment=augment_lib.AugmentSpec.from_config(config_get(cfg, "augment")),
        shuffle=bool(config_get(cfg, "shuffle", True)),
        num_parallel_calls=npc,
        prefetch=prefetch,
        class_lut=class_lut,
    )


class ProgressLogger:
    """Logs ``done/total``, rate and ETA at most every ``every_s`` seconds (absl logging)."""

    def __init__(self, what: str, total: int, every_s: float = 5.0):
        """Starts the clock for ``total`` units of work described by ``what``."""
        self.what = what
        self.total = total
        self.every_s = every_s
        self.done = 0
        self._start = time.monotonic()
        self._last = self._start

    def update(self, n: int = 1) -> None:
        """Records ``n`` finished units; logs when the interval has passed."""
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            elapsed = now - self._start
            rate = self.done / max(elapsed, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            logging.info(
                "%s: %d/%d (%.1f%%), %.1f/s, elapsed %s, ETA %s",
                self.what,
                self.done,
                self.total,
                100.0 * self.done / max(self.total, 1),
                rate,
                format_seconds(elapsed),
                format_seconds(eta),
            )

    def finish(self) -> None:
        """Logs the final count and total time."""
        logging.info(
            "%s: %d/%d done in %s",
            self.what,
            self.done,
            self.total,
            format_seconds(time.monotonic() - self._start),
        )


def format_seconds(s: float) -> str:
    """Durations for progress lines: ``4m05s`` or ``1h02m03s``."""
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


# ----------------------------------------------------------------------------------------------
# Index streams (pure numpy; the determinism contract lives here).


def epoch_permutation(seed: int, epoch: int, num_examples: int, shuffle: bool = True) -> np.ndarray:
    """Example order of one training epoch: ``default_rng([seed, epoch]).permutation(N)``."""
    if not shuffle:
        return np.arange(num_examples, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int64)


def train_stream(
    seed: int,
    num_examples: int,
    batch_size: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
) -> Iterator[tuple[int, int]]:
    """Infinite ``(example index, global stream position)`` pairs of one process, in batch order.

    Global batch ``s`` is stream positions ``[s*G, (s+1)*G)`` (``G = batch_size*process_count``);
    process ``p`` yields positions ``s*G + p*batch_size + j`` for ``j < batch_size``. Position
    ``q`` is example ``epoch_permutation(seed, q // N)[q % N]``.
    """
    g = batch_size * process_count
    cached_epoch, order = -1, None
    for step in itertools.count(start_step):
        base = step * g + process_index * batch_size
        for pos in range(base, base + batch_size):
            epoch, offset = divmod(pos, num_examples)
            if epoch != cached_epoch:
                cached_epoch, order = epoch, epoch_permutation(seed, epoch, num_examples, shuffle)
            yield int(order[offset]), pos


def eval_indices(
    num_examples: int, batch_size: int, process_index: int = 0, process_count: int = 1
) -> np.ndarray:
    """Example indices (``-1`` = padding) of one process's eval stream, in batch order.

    The key-ordered examples are cut into ``ceil(N / G)`` global batches of ``G`` positions;
    every process gets the same number of batches (collectives stay in step) and the positions
    past ``N`` are padding.
    """
    g = batch_size * process_count
    num_batches = max(1, math.ceil(num_examples / g))
    steps = np.arange(num_batches, dtype=np.int64)[:, None]
    pos = steps * g + process_index * batch_size + np.arange(batch_size, dtype=np.int64)[None]
    pos = pos.reshape(-1)
    return np.where(pos < num_examples, pos, -1)


def _check_batch_args(batch_size, process_index, process_count) -> None:
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size (per process) must be an int >= 1, got {batch_size!r}")
    if not isinstance(process_count, int | np.integer) or process_count < 1:
        raise ValueError(f"process_count must be an int >= 1, got {process_count!r}")
    if not isinstance(process_index, int | np.integer) or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be an int in [0, {process_count}), got {process_index!r}"
        )


# ----------------------------------------------------------------------------------------------
# tf.data graphs.


def decode_png_label(contents: tf.Tensor) -> tf.Tensor:
    """Default label decoder: 8-bit single-channel PNG -> uint8 (H, W, 1)."""
    return tf.io.decode_png(contents, channels=1, dtype=tf.uint8)


class _Loader:
    """Builds the per-example graph functions for one split."""

    def __init__(
        self,
        examples: Sequence[Example],
        options: PipelineOptions,
        decode_label: Callable[[tf.Tensor], tf.Tensor],
    ):
        self.options = options
        self.decode_label = decode_label
        self.image_paths = tf.constant([e.image_path for e in examples], tf.string)
        labelled = [e.label_path is not None for e in examples]
        if any(labelled) and not all(labelled):
            raise ValueError("a split must be labelled for all examples or for none")
        self.labelled = bool(examples) and all(labelled)
        self.label_paths = (
            tf.constant([e.label_path for e in examples], tf.string) if self.labelled else None
        )
        self.mean = tf.constant(options.mean_rgb, tf.float32)
        self.std = tf.constant(options.std_rgb, tf.float32)

    def read(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Decoded, top-cropped, normalised image float32 (h,w,3) and label uint8 (h,w,1)."""
        o = self.options
        image_path = tf.gather(self.image_paths, index)
        image = tf.io.decode_image(
            tf.io.read_file(image_path), channels=3, dtype=tf.uint8, expand_animations=False
        )
        image.set_shape([None, None, 3])
        if self.labelled:
            label_path = tf.gather(self.label_paths, index)
            label = self.decode_label(tf.io.read_file(label_path))
            label.set_shape([None, None, 1])
            same = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(label)[:2]))
            check = tf.debugging.Assert(
                same,
                [
                    "image/label size mismatch:",
                    image_path,
                    tf.shape(image),
                    label_path,
                    tf.shape(label),
                ],
            )
            with tf.control_dependencies([check]):
                label = tf.identity(label)
        else:
            label = tf.fill(
                tf.concat([tf.shape(image)[:2], [1]], 0), tf.constant(o.ignore_label, tf.uint8)
            )
        if o.crop_top:
            fits = tf.shape(image)[0] > o.crop_top
            check = tf.debugging.Assert(
                fits, ["config.data.crop_top leaves no rows of image", image_path, tf.shape(image)]
            )
            with tf.control_dependencies([check]):
                image = image[o.crop_top :]
                label = label[o.crop_top :]
        image = (tf.cast(image, tf.float32) - self.mean) / self.std
        return image, label

    def finish(self, image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        h, w = self.options.image_hw
        image = tf.ensure_shape(image, [h, w, 3])
        label = tf.ensure_shape(tf.cast(label[..., 0], tf.int32), [h, w])
        return image, label

    def train_example(self, index: tf.Tensor, position: tf.Tensor, seed: int):
        o = self.options
        image, label = self.read(index)
        if o.augment.enabled:
            stateless_seed = tf.stack([tf.constant(seed, tf.int64), position])
            image, label = augment_lib.augment_pair(
                image,
                label,
                o.image_hw,
                stateless_seed,
                o.augment,
                pixel_scale=tuple(1.0 / s for s in o.std_rgb),
                class_lut=o.class_lut,
                ignore_label=o.ignore_label,
            )
        else:
            image, label = augment_lib.resize_pair(image, label, o.image_hw)
        image, label = self.finish(image, label)
        return {"image": image, "label": label}

    def eval_example(self, index: tf.Tensor):
        h, w = self.options.image_hw

        def load():
            image, label = augment_lib.resize_pair(*self.read(tf.maximum(index, 0)), (h, w))
            return self.finish(image, label)

        def pad():
            return tf.zeros([h, w, 3], tf.float32), tf.fill([h, w], self.options.ignore_label)

        image, label = tf.cond(index >= 0, load, pad)
        return {
            "image": image,
            "label": label,
            "mask": index >= 0,
            "index": tf.cast(index, tf.int32),
        }


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def _prefetch(ds: tf.data.Dataset, prefetch: int) -> tf.data.Dataset:
    if prefetch == 0:
        return ds
    return ds.prefetch(tf.data.AUTOTUNE if prefetch < 0 else prefetch)


def build_train_dataset(
    examples: Sequence[Example],
    options: PipelineOptions,
    seed: int,
    batch_size: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    decode_label: Callable[[tf.Tensor], tf.Tensor] = decode_png_label,
) -> tf.data.Dataset:
    """Infinite per-process training batches (see the module docstring for the contract)."""
    _check_batch_args(batch_size, process_index, process_count)
    if not isinstance(seed, int | np.integer) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    if not isinstance(start_step, int | np.integer) or start_step < 0:
        raise ValueError(f"start_step must be an int >= 0, got {start_step!r}")
    if not examples:
        raise ValueError("cannot build a training pipeline over 0 examples")
    hide_gpus_from_tf()
    loader = _Loader(examples, options, decode_label)
    if not loader.labelled:
        raise ValueError("cannot train on a split without labels")
    n = len(examples)
    seed, start_step = int(seed), int(start_step)

    def gen():
        yield from train_stream(
            seed, n, batch_size, start_step, process_index, process_count, options.shuffle
        )

    ds = tf.data.Dataset.from_generator(
        gen,
        output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64)),
    )
    ds = ds.map(
        lambda index, position: loader.train_example(index, position, seed),
        num_parallel_calls=options.num_parallel_calls,
        deterministic=True,
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    return _deterministic(_prefetch(ds, options.prefetch))


def build_eval_dataset(
    examples: Sequence[Example],
    options: PipelineOptions,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    decode_label: Callable[[tf.Tensor], tf.Tensor] = decode_png_label,
) -> tf.data.Dataset:
    """One padded pass over ``examples`` in order; unlabelled splits get labels of all 255."""
    _check_batch_args(batch_size, process_index, process_count)
    if not examples:
        raise ValueError("cannot build an eval pipeline over 0 examples")
    hide_gpus_from_tf()
    loader = _Loader(examples, options, decode_label)
    indices = eval_indices(len(examples), batch_size, process_index, process_count)
    ds = tf.data.Dataset.from_tensor_slices(indices)
    ds = ds.map(
        loader.eval_example, num_parallel_calls=options.num_parallel_calls, deterministic=True
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    return _deterministic(_prefetch(ds, options.prefetch))


# ----------------------------------------------------------------------------------------------
# The dataset object the training code holds.


class SegmentationDataset(abc.ABC):
    """Base class of all readers: the split bookkeeping and batch iterators.

    Subclasses implement ``prepare`` and ``_examples``; they may override ``_decode_label``
    (e.g. colour PNG -> train id) and pass a ``class_lut`` in ``options`` for flips.
    """

    SPLITS: tuple[str, ...] = ("train", "valid", "test")

    def __init__(self, info: DatasetInfo, options: PipelineOptions):
        """Stores the dataset's static info and pipeline options."""
        self._info = info
        self._options = options

    @property
    def info(self) -> DatasetInfo:
        """Static dataset facts (classes, weights, network input size)."""
        return self._info

    @property
    def options(self) -> PipelineOptions:
        """The validated pipeline options."""
        return self._options

    @abc.abstractmethod
    def prepare(self) -> None:
        """Does the one-off work (data generation, label rendering); cheap when already done."""

    @abc.abstractmethod
    def _examples(self, split: str) -> list[Example]:
        """The split's examples in key order, with label files ready to read."""

    def _decode_label(self, contents: tf.Tensor) -> tf.Tensor:
        return decode_png_label(contents)

    def _check_split(self, split: str) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"unknown split {split!r}; known splits: {list(self.SPLITS)}")

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split`` (after ``max_examples`` caps)."""
        self._check_split(split)
        return len(self._examples(split))

    def keys(self, split: str) -> list[str]:
        """Example keys of ``split`` in the fixed order used by eval batches' ``index``."""
        self._check_split(split)
        return [e.key for e in self._examples(split)]

    def train_batches(
        self,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        split: str | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Infinite per-process training batches: ``image`` f32 (B,H,W,3), ``label`` i32 (B,H,W).

        Args:
            batch_size: examples per process per step.
            seed: run seed; fixes epoch orders and augmentation.
            start_step: first global step to produce (resume).
            process_index: this process's slice of the global batch.
            process_count: number of processes sharing a global batch.
            split: split to train on; defaults to the dataset's configured training split.

        Returns:
            An iterator of numpy batch dicts.
        """
        split = split or self._train_split()
        self._check_split(split)
        ds = build_train_dataset(
            self._examples(split),
            self._options,
            seed,
            batch_size,
            start_step,
            process_index,
            process_count,
            decode_label=self._decode_label,
        )
        return ds.as_numpy_iterator()

    def eval_batches(
        self, split: str, batch_size: int, process_index: int = 0, process_count: int = 1
    ) -> Iterator[dict[str, np.ndarray]]:
        """One pass over ``split`` in key order, no augmentation, padded to whole batches.

        Batches hold ``image`` f32 (B,H,W,3), ``label`` i32 (B,H,W) (all 255 for splits
        without labels), ``mask`` bool (B,) (False = padding) and ``index`` i32 (B,) into
        ``keys(split)`` (-1 = padding). Every process yields the same number of batches.
        """
        self._check_split(split)
        ds = build_eval_dataset(
            self._examples(split),
            self._options,
            batch_size,
            process_index,
            process_count,
            decode_label=self._decode_label,
        )
        return ds.as_numpy_iterator()

    def _train_split(self) -> str:
        return "train"
