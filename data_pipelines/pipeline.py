"""Dataset-independent tf.data machinery shared by every segmentation reader.

A reader (LLAMAS, CULane, ApolloScape) subclasses ``SegmentationDataset`` (through
``FolderDataset``, which holds the config parsing and synthetic-data handling they share) and
supplies the per-split list of ``Example``s (image file, 8-bit label PNG or None) plus, optionally,
its own label decoder and left/right class swap table. This module turns those lists into the
batch iterators the training code consumes:

* training: an infinite, deterministic stream. Epoch ``e`` visits examples in the order
  ``np.random.default_rng([seed, e]).permutation(N)``; the global batch at step ``s`` holds
  stream positions ``[s*G, (s+1)*G)`` with ``G = batch_size * process_count``, and process ``p``
  takes the contiguous slice ``[s*G + p*B, s*G + (p+1)*B)``. Augmentation is seeded by
  ``(seed, stream position)``, so resuming at ``start_step`` reproduces an uninterrupted run.
* evaluation: one pass in key order, padded to whole global batches, with ``mask`` and
  ``index`` marking the padding.

Only indices are shuffled; images are decoded after the order is fixed. TF is kept off GPUs.

Sources (``config.data.source``): ``"files"`` reads the reader's image/label files; ``"tfds"``
reads the same bytes from a TFDS dataset prepared by ``data_pipelines.tfds_builders`` (array_record
random access, so the index streams above are unchanged). Both feed one graph after the bytes are
read: decode, crop, normalise, augment.

Corrupt samples: a file that cannot be read or decoded (or whose label does not match its image)
makes tf.data fail inside the iterator. The batch iterators catch that error, re-check the
examples of the failing batch eagerly to find the culprit, and then either raise
``CorruptSampleError`` naming the file (default) or, with ``config.data.skip_corrupt=True``, record
the example as corrupt and rebuild the stream at the same step:

* training: a stream position whose example is corrupt takes the next non-corrupt example of that
  epoch's order instead (augmentation still seeded by the position), so every other position, and
  therefore the batch of every step, stays a pure function of (seed, step, set of corrupt files),
  whenever the corrupt file is discovered and after a resume;
* evaluation: the corrupt example is masked like padding (``mask`` False, ``index`` -1) so the
  other examples keep their batch positions.

The skipped examples are listed by ``SegmentationDataset.corrupt_samples`` and counted by the
iterators' ``num_skipped`` (logged by the training loop).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import io
import itertools
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from data_pipelines import augment as augment_lib
from data_pipelines.errors import DataConfigError, DataError

IGNORE_LABEL = 255
SOURCES = ("files", "tfds")

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
        skip_corrupt: skip (train) or mask (eval) corrupt samples instead of stopping.
        source: ``"files"`` (the reader's files) or ``"tfds"`` (a prepared TFDS dataset).
        tfds_data_dir: TFDS data_dir holding the prepared dataset (None = TFDS's default).
        tfds_name: TFDS ``name/config`` to read (resolved from the data config).
        max_examples: per-split caps; files readers cap their lists, a TFDS source its keys.
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
    skip_corrupt: bool = False
    source: str = "files"
    tfds_data_dir: str | None = None
    tfds_name: str | None = None
    max_examples: Mapping[str, int] = dataclasses.field(default_factory=dict)


def class_swap_lut(pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """A ``class_lut`` for horizontal flips: uint8 (256,) identity with each pair swapped."""
    lut = np.arange(256, dtype=np.uint8)
    for a, b in pairs:
        lut[a], lut[b] = b, a
    return lut


def config_get(cfg, name: str, default=None):
    """Reads ``cfg.name`` from a ConfigDict or dict; ``default`` when absent or None."""
    if cfg is None:
        return default
    value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    return default if value is None else value


def absolute_path(path: str | os.PathLike) -> str:
    """``path`` with ``~`` expanded, made absolute."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def config_choice(cfg, name: str, choices: Sequence[str], default: str) -> str:
    """``cfg.<name>`` (``default`` when unset), checked to be one of ``choices``.

    Raises:
        DataConfigError: any other value (names the field ``config.data.<name>``).
    """
    value = config_get(cfg, name, default)
    if value not in choices:
        raise DataConfigError(f"config.data.{name} must be one of {list(choices)}, got {value!r}")
    return value


def normalize_root_rewrite(value) -> tuple[tuple[str, str], ...]:
    """``config.data.root_rewrite`` -> tuple of ``(old_prefix, new_prefix)`` pairs.

    List files written on another machine hold absolute paths; a path starting with
    ``old_prefix`` gets ``new_prefix`` instead. Accepts None/empty, one pair, or a sequence of
    pairs.

    Raises:
        DataConfigError: anything else.
    """
    if value is None or (isinstance(value, Sequence) and len(value) == 0):
        return ()
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, str) for v in value):
        value = (value,)
    pairs = []
    for pair in value if isinstance(value, Sequence) and not isinstance(value, str) else [value]:
        if (
            not isinstance(pair, Sequence)
            or isinstance(pair, str)
            or len(pair) != 2
            or not all(isinstance(v, str) for v in pair)
            or not pair[0]
        ):
            raise DataConfigError(
                "config.data.root_rewrite must be (old_prefix, new_prefix) or a sequence of such "
                f"string pairs with a non-empty old_prefix, got {value!r}"
            )
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


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
            num_parallel_calls, prefetch, skip_corrupt, source, tfds_data_dir, tfds_name,
            max_examples).
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
    skip_corrupt = config_get(cfg, "skip_corrupt", False)
    if not isinstance(skip_corrupt, bool):
        raise DataConfigError(
            f"config.data.skip_corrupt must be True or False, got {skip_corrupt!r}"
        )
    source = config_choice(cfg, "source", SOURCES, "files")
    tfds_data_dir = config_get(cfg, "tfds_data_dir")
    if tfds_data_dir is not None:
        tfds_data_dir = absolute_path(tfds_data_dir)
    tfds_name = None
    if source == "tfds":
        # Imported here: tensorflow_datasets is slow to import and only needed for this source.
        from data_pipelines import tfds_builders

        tfds_name = tfds_builders.tfds_name_for_config(cfg)
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
        skip_corrupt=skip_corrupt,
        source=source,
        tfds_data_dir=tfds_data_dir,
        tfds_name=tfds_name,
        max_examples=_max_examples(config_get(cfg, "max_examples")),
    )


def _max_examples(cfg) -> dict[str, int]:
    if cfg is None:
        return {}
    items = cfg.items() if hasattr(cfg, "items") else ()
    out = {}
    for split, cap in items:
        if cap is None:
            continue
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise DataConfigError(
                f"config.data.max_examples.{split} must be None or an int >= 1, got {cap!r}"
            )
        out[str(split)] = cap
    return out


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
    excluded: frozenset[int] = frozenset(),
) -> Iterator[tuple[int, int]]:
    """Infinite ``(example index, global stream position)`` pairs of one process, in batch order.

    Global batch ``s`` is stream positions ``[s*G, (s+1)*G)`` (``G = batch_size*process_count``);
    process ``p`` yields positions ``s*G + p*batch_size + j`` for ``j < batch_size``. Position
    ``q`` is example ``order[q % N]`` with ``order = epoch_permutation(seed, q // N)``; when that
    example is in ``excluded`` (corrupt), the next non-excluded example of ``order`` (cyclically)
    takes its place, so the other positions do not move.

    Raises:
        DataError: every example is excluded.
    """
    if excluded and all(i in excluded for i in range(num_examples)):
        raise DataError(f"all {num_examples} examples of the training split are corrupt")
    g = batch_size * process_count
    cached_epoch, order = -1, None
    for step in itertools.count(start_step):
        base = step * g + process_index * batch_size
        for pos in range(base, base + batch_size):
            epoch, offset = divmod(pos, num_examples)
            if epoch != cached_epoch:
                cached_epoch, order = epoch, epoch_permutation(seed, epoch, num_examples, shuffle)
            index = int(order[offset])
            while index in excluded:
                offset = (offset + 1) % num_examples
                index = int(order[offset])
            yield index, pos


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
# Sources: where the encoded bytes of example i come from.


class SplitSource(abc.ABC):
    """The encoded image/label bytes of one split's examples, by index, in key order."""

    def __init__(self, keys: Sequence[str], labelled: bool):
        """Takes the example keys in index order and whether the split has labels."""
        self._keys = list(keys)
        self._labelled = labelled

    @property
    def keys(self) -> list[str]:
        """Example keys in index order."""
        return self._keys

    @property
    def labelled(self) -> bool:
        """Whether the split has labels."""
        return self._labelled

    @abc.abstractmethod
    def read(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
        """Graph op: ``image``/``label`` bytes and ``image_name``/``label_name`` of ``index``."""

    @abc.abstractmethod
    def names(self, i: int) -> tuple[str, str | None]:
        """Human-readable names (paths) of the image and label of example ``i``."""

    @abc.abstractmethod
    def fetch(self, i: int) -> tuple[bytes, bytes | None]:
        """Python read of example ``i``'s bytes; raises ``OSError`` naming a missing file."""

    def __len__(self) -> int:
        return len(self.keys)


class FileSource(SplitSource):
    """Reads the files of a reader's ``Example`` list."""

    def __init__(self, examples: Sequence[Example]):
        """Takes the split's examples (all labelled or none)."""
        self.examples = list(examples)
        labelled = [e.label_path is not None for e in self.examples]
        if any(labelled) and not all(labelled):
            raise ValueError("a split must be labelled for all examples or for none")
        super().__init__([e.key for e in self.examples], bool(self.examples) and all(labelled))
        # Numpy, not tf constants: each traced graph embeds its own copy (a tensor made eagerly
        # here would initialise TF's devices before the GPUs are hidden).
        self._image_paths = np.array([e.image_path for e in self.examples], dtype=object)
        self._label_paths = np.array([e.label_path or "" for e in self.examples], dtype=object)

    def read(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
        """Graph op reading the example's files."""
        image_path = tf.gather(tf.constant(self._image_paths, tf.string), index)
        out = {"image": tf.io.read_file(image_path), "image_name": image_path}
        if self._labelled:
            label_path = tf.gather(tf.constant(self._label_paths, tf.string), index)
            out.update(label=tf.io.read_file(label_path), label_name=label_path)
        return out

    def names(self, i: int) -> tuple[str, str | None]:
        """The example's image and label paths."""
        e = self.examples[i]
        return e.image_path, e.label_path

    def fetch(self, i: int) -> tuple[bytes, bytes | None]:
        """The example's file contents."""
        e = self.examples[i]
        with open(e.image_path, "rb") as f:
            image = f.read()
        if e.label_path is None:
            return image, None
        with open(e.label_path, "rb") as f:
            return image, f.read()


class TfdsSource(SplitSource):
    """Random access into a TFDS dataset prepared by ``data_pipelines.tfds_builders``."""

    def __init__(self, records: Sequence[Mapping[str, Any]], keys: Sequence[str], labelled: bool,
                 name: str):  # fmt: skip
        """Wraps a TFDS data source (records with ``image``/``label`` bytes) of one split.

        Args:
            records: ``tfds.data_source`` of the split (indexable, len = number of records).
            keys: the keys of the records to use, in index order (a prefix when capped).
            labelled: whether the split has labels.
            name: ``name/config/split`` used in error messages.
        """
        super().__init__(keys, labelled)
        self._records = records
        self.name = name

    def _get(self, i) -> tuple[bytes, bytes]:
        rec = self._records[int(i)]
        return rec["image"], rec["label"] if self._labelled else b""

    def read(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
        """Graph op fetching the record's bytes through ``tf.numpy_function``."""
        image, label = tf.numpy_function(self._get, [index], [tf.string, tf.string], stateful=False)
        image.set_shape([])
        label.set_shape([])
        name = tf.strings.join(["tfds:", self.name, "[", tf.strings.as_string(index), "]"])
        out = {"image": image, "image_name": tf.strings.join([name, " image"])}
        if self._labelled:
            out.update(label=label, label_name=tf.strings.join([name, " label"]))
        return out

    def names(self, i: int) -> tuple[str, str | None]:
        """``tfds:<name/config/split>[i] image`` (and ``label``), with the example key."""
        base = f"tfds:{self.name}[{i}] (key {self._keys[i]!r})"
        return f"{base} image", (f"{base} label" if self._labelled else None)

    def fetch(self, i: int) -> tuple[bytes, bytes | None]:
        """The record's bytes."""
        image, label = self._get(i)
        return image, (label if self._labelled else None)


# ----------------------------------------------------------------------------------------------
# tf.data graphs.


def decode_png_label(contents: tf.Tensor) -> tf.Tensor:
    """Default label decoder: 8-bit single-channel PNG -> uint8 (H, W, 1)."""
    return tf.io.decode_png(contents, channels=1, dtype=tf.uint8)


def _first_line(e: Exception) -> str:
    """The cause of a (TF) error in one line."""
    lines = [ln.strip() for ln in (getattr(e, "message", None) or str(e)).splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return type(e).__name__
    msg = lines[0]
    # Graph errors: "Graph execution error: / Detected at node ... / File ... / <cause> /
    # [[{{node X}}]]": the cause is the line before the node marker.
    marker = next((k for k, ln in enumerate(lines) if ln.startswith("[[")), None)
    if marker:
        msg = lines[marker - 1]
    # TF prefixes messages with "{{function_node ...}}"; the cause is after it.
    if msg.startswith("{{function_node") and "}}" in msg:
        msg = msg.split("}}", 1)[1].strip()
    # Drop the op trailer of eager errors: "... [Op:DecodeImage] name: ".
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", msg) or type(e).__name__


class _Loader:
    """Builds the per-example graph functions for one split."""

    def __init__(
        self,
        source: SplitSource | Sequence[Example],
        options: PipelineOptions,
        decode_label: Callable[[tf.Tensor], tf.Tensor],
    ):
        if not isinstance(source, SplitSource):
            source = FileSource(source)
        self.source = source
        self.options = options
        self.decode_label = decode_label
        self.labelled = source.labelled
        self.mean = tf.constant(options.mean_rgb, tf.float32)
        self.std = tf.constant(options.std_rgb, tf.float32)
        self._decoders = None  # graph-mode decoders for diagnose(), made on first use

    def decode_image(self, contents: tf.Tensor) -> tf.Tensor:
        """Encoded image -> uint8 (H, W, 3) RGB."""
        image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
        image.set_shape([None, None, 3])
        return image

    def decode_label_bytes(self, contents: tf.Tensor) -> tf.Tensor:
        """Encoded label -> uint8 (H, W, 1) class ids."""
        label = self.decode_label(contents)
        label.set_shape([None, None, 1])
        return label

    def combine(
        self,
        image: tf.Tensor,
        label: tf.Tensor | None,
        image_name: tf.Tensor | str,
        label_name: tf.Tensor | str,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Size check, top crop and normalisation: float32 (h,w,3) image, uint8 (h,w,1) label.

        ``label`` None (unlabelled split) gives a label of ``ignore_label`` everywhere.
        """
        o = self.options
        if label is not None:
            same = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(label)[:2]))
            check = tf.debugging.Assert(
                same,
                ["image/label size mismatch:", image_name, tf.shape(image), label_name,
                 tf.shape(label)],
            )  # fmt: skip
            with tf.control_dependencies([check]):
                label = tf.identity(label)
        else:
            label = tf.fill(
                tf.concat([tf.shape(image)[:2], [1]], 0), tf.constant(o.ignore_label, tf.uint8)
            )
        if o.crop_top:
            fits = tf.shape(image)[0] > o.crop_top
            check = tf.debugging.Assert(
                fits, ["config.data.crop_top leaves no rows of image", image_name, tf.shape(image)]
            )
            with tf.control_dependencies([check]):
                image = image[o.crop_top :]
                label = label[o.crop_top :]
        image = (tf.cast(image, tf.float32) - self.mean) / self.std
        return image, label

    def read(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Decoded, top-cropped, normalised image float32 (h,w,3) and label uint8 (h,w,1)."""
        raw = self.source.read(index)
        image = self.decode_image(raw["image"])
        label = self.decode_label_bytes(raw["label"]) if self.labelled else None
        return self.combine(image, label, raw["image_name"], raw.get("label_name", ""))

    def diagnose(self, i: int) -> tuple[str, str] | None:
        """Re-reads example ``i`` step by step: ``(file, reason)`` if it is corrupt."""
        image_name, label_name = self.source.names(i)
        try:
            image_bytes, label_bytes = self.source.fetch(i)
        except OSError as e:
            missing = getattr(e, "filename", None) or image_name
            return os.fspath(missing), f"cannot read file ({e.strerror or e})"
        # The decoders run as graphs, like in tf.data: a tf.numpy_function decoder gets other
        # argument types when called eagerly.
        decode_image, decode_label = self._graph_decoders()
        try:
            image_hw = tuple(decode_image(tf.constant(image_bytes)).shape[:2])
        except Exception as e:  # noqa: BLE001 -- any decoder failure condemns the file
            return image_name, f"cannot decode image ({_first_line(e)})"
        if self.labelled:
            try:
                label_hw = tuple(decode_label(tf.constant(label_bytes)).shape[:2])
            except Exception as e:  # noqa: BLE001
                return label_name, f"cannot decode label ({_first_line(e)})"
            if image_hw != label_hw:
                return label_name, (
                    f"label is {label_hw[1]}x{label_hw[0]} (WxH) but its image "
                    f"{image_name} is {image_hw[1]}x{image_hw[0]}"
                )
        if self.options.crop_top and image_hw[0] <= self.options.crop_top:
            return image_name, (
                f"image has {image_hw[0]} rows; config.data.crop_top = "
                f"{self.options.crop_top} leaves none"
            )
        return None

    def _graph_decoders(self):
        if self._decoders is None:
            spec = [tf.TensorSpec([], tf.string)]
            self._decoders = (
                tf.function(self.decode_image, input_signature=spec, autograph=False),
                tf.function(self.decode_label_bytes, input_signature=spec, autograph=False),
            )
        return self._decoders

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


def _check_train_args(seed, start_step) -> None:
    if not isinstance(seed, int | np.integer) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    if not isinstance(start_step, int | np.integer) or start_step < 0:
        raise ValueError(f"start_step must be an int >= 0, got {start_step!r}")


def build_train_dataset(
    examples: Sequence[Example] | SplitSource,
    options: PipelineOptions,
    seed: int,
    batch_size: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    decode_label: Callable[[tf.Tensor], tf.Tensor] = decode_png_label,
    excluded: frozenset[int] = frozenset(),
) -> tf.data.Dataset:
    """Infinite per-process training batches (see the module docstring for the contract).

    ``examples`` is the split's ``Example`` list or a ``SplitSource``; ``excluded`` holds the
    indices of corrupt examples, replaced as ``train_stream`` describes.
    """
    _check_batch_args(batch_size, process_index, process_count)
    _check_train_args(seed, start_step)
    if not len(examples):
        raise ValueError("cannot build a training pipeline over 0 examples")
    hide_gpus_from_tf()
    loader = _Loader(examples, options, decode_label)
    if not loader.labelled:
        raise ValueError("cannot train on a split without labels")
    n = len(examples)
    seed, start_step = int(seed), int(start_step)
    excluded = frozenset(excluded)

    def gen():
        yield from train_stream(
            seed, n, batch_size, start_step, process_index, process_count, options.shuffle,
            excluded,
        )  # fmt: skip

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
    examples: Sequence[Example] | SplitSource,
    options: PipelineOptions,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    decode_label: Callable[[tf.Tensor], tf.Tensor] = decode_png_label,
    excluded: frozenset[int] = frozenset(),
    start_batch: int = 0,
) -> tf.data.Dataset:
    """One padded pass over ``examples`` in order; unlabelled splits get labels of all 255.

    Examples in ``excluded`` (corrupt) are masked like padding; ``start_batch`` skips the first
    batches of the pass.
    """
    _check_batch_args(batch_size, process_index, process_count)
    if not len(examples):
        raise ValueError("cannot build an eval pipeline over 0 examples")
    hide_gpus_from_tf()
    loader = _Loader(examples, options, decode_label)
    indices = _masked_eval_indices(
        len(examples), batch_size, process_index, process_count, excluded
    )
    ds = tf.data.Dataset.from_tensor_slices(indices[start_batch * batch_size :])
    ds = ds.map(
        loader.eval_example, num_parallel_calls=options.num_parallel_calls, deterministic=True
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    return _deterministic(_prefetch(ds, options.prefetch))


def _masked_eval_indices(n, batch_size, process_index, process_count, excluded) -> np.ndarray:
    indices = eval_indices(n, batch_size, process_index, process_count)
    if excluded:
        indices = np.where(np.isin(indices, sorted(excluded)), -1, indices)
    return indices


# ----------------------------------------------------------------------------------------------
# Corrupt-sample handling.


@dataclasses.dataclass(frozen=True)
class CorruptSample:
    """An example the pipeline could not load: where and why."""

    split: str
    index: int
    key: str
    path: str
    reason: str

    def describe(self) -> str:
        """``path: reason (example 'key' of split 'split')``."""
        return f"{self.path}: {self.reason} (example {self.key!r} of split {self.split!r})"


class CorruptSampleError(DataError):
    """A sample's file is missing or cannot be decoded; ``sample`` says which and why."""

    def __init__(self, sample: CorruptSample, others: int = 0):
        """Builds the message from ``sample`` (``others``: more corrupt samples in the batch)."""
        more = f" ({others} more corrupt sample(s) in the same batch)" if others else ""
        super().__init__(
            f"corrupt sample: {sample.describe()}{more}. Fix or remove the file, set "
            "config.data.skip_corrupt=True to skip such samples, or run --config.mode=check_data "
            "to list every problem of the dataset"
        )
        self.sample = sample


# Batches past the failing one that are re-checked when the failing batch looks clean (a
# parallel map may report an element's error early; tf.data keeps order, so this is a guard).
_LOOKAHEAD_BATCHES = 2


class BatchIterator:
    """Numpy batches from a tf.data pipeline that is rebuilt around corrupt samples.

    Attributes:
        split: the split being read.
    """

    def __init__(
        self,
        dataset: SegmentationDataset,
        split: str,
        loader_source: SplitSource,
        make: Callable[[int, frozenset[int]], tf.data.Dataset],
        batch_indices: Callable[[int, frozenset[int]], list[int]],
        start: int,
    ):
        """Wraps ``make(start, excluded)`` (a tf.data pipeline from batch ``start``).

        Args:
            dataset: owner of the split's corrupt-sample record and the diagnosis.
            split: split name.
            loader_source: the split's source (for keys in messages).
            make: builds the pipeline from a batch number with a set of excluded indices.
            batch_indices: example indices (no padding) of batch ``b`` given the excluded set.
            start: number of the first batch.
        """
        self.split = split
        self._dataset = dataset
        self._source = loader_source
        self._make = make
        self._batch_indices = batch_indices
        self._batch = start
        self._it = None

    @property
    def num_skipped(self) -> int:
        """Distinct corrupt samples of this split skipped (train) or masked (eval) so far."""
        return len(self._dataset._corrupt.get(self.split, {}))

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            if self._it is None:
                excluded = frozenset(self._dataset._corrupt.get(self.split, {}))
                self._it = self._make(self._batch, excluded).as_numpy_iterator()
            try:
                batch = next(self._it)
            except tf.errors.OpError as e:
                error = e
            else:
                self._batch += 1
                return batch
            # Outside the except block and without the traceback (whose frames hold the failed
            # pipeline), so that pipeline and its reader threads are gone before the re-reads.
            error.__traceback__ = None
            self._it = None
            self._handle_error(error)

    def _handle_error(self, error: tf.errors.OpError) -> None:
        known = self._dataset._corrupt.setdefault(self.split, {})
        found: list[CorruptSample] = []
        for b in range(self._batch, self._batch + 1 + _LOOKAHEAD_BATCHES):
            for i in self._batch_indices(b, frozenset(known)):
                if i in known or any(s.index == i for s in found):
                    continue
                culprit = self._dataset._diagnose(self.split, i)
                if culprit is not None:
                    path, reason = culprit
                    found.append(CorruptSample(self.split, i, self._source.keys[i], path, reason))
            if found:
                break
        if not found:
            raise error  # not attributable to a file: a genuine pipeline failure
        if not self._dataset.options.skip_corrupt:
            raise CorruptSampleError(found[0], others=len(found) - 1) from None
        for s in found:
            known[s.index] = s
        logging.warning(
            "skipped %d corrupt sample(s) of split %r (%d so far): %s",
            len(found),
            self.split,
            len(known),
            "; ".join(s.describe() for s in found),
        )


# ----------------------------------------------------------------------------------------------
# The dataset object the training code holds.


def _tfds_source(options: PipelineOptions, split: str, info: DatasetInfo) -> TfdsSource:
    from data_pipelines import tfds_builders

    records, keys, labelled = tfds_builders.open_split(
        options.tfds_name, split, options.tfds_data_dir, class_names=info.class_names
    )
    cap = options.max_examples.get(split)
    if cap is not None:
        keys = keys[:cap]
    return TfdsSource(records, keys, labelled, f"{options.tfds_name}/{split}")


class SegmentationDataset(abc.ABC):
    """Base class of all readers: the split bookkeeping and batch iterators.

    Subclasses implement ``prepare`` and ``_examples``; they may override ``_decode_label``
    (e.g. colour PNG -> train id) and pass a ``class_lut`` in ``options`` for flips. For the data
    check (``data_pipelines.check``) they implement ``list_problems`` (list/layout problems) and,
    when labels are not 8-bit gray PNGs of class ids, ``check_label``.
    """

    SPLITS: tuple[str, ...] = ("train", "valid", "test")

    def __init__(self, info: DatasetInfo, options: PipelineOptions):
        """Stores the dataset's static info and pipeline options."""
        self._info = info
        self._options = options
        self._corrupt: dict[str, dict[int, CorruptSample]] = {}
        self._sources: dict[str, SplitSource] = {}
        self._diagnosers: dict[str, _Loader] = {}

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

    def examples(self, split: str) -> list[Example]:
        """The split's examples (raw files, whatever ``config.data.source`` says), in key order."""
        self._check_split(split)
        return self._examples(split)

    def _source(self, split: str) -> SplitSource:
        """Where the bytes of the split's examples come from (``config.data.source``)."""
        if split not in self._sources:
            hide_gpus_from_tf()
            if self._options.source == "tfds":
                self._sources[split] = _tfds_source(self._options, split, self._info)
            else:
                self._sources[split] = FileSource(self._examples(split))
        return self._sources[split]

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split`` (after ``max_examples`` caps)."""
        self._check_split(split)
        return len(self._source(split))

    def keys(self, split: str) -> list[str]:
        """Example keys of ``split`` in the fixed order used by eval batches' ``index``."""
        self._check_split(split)
        return list(self._source(split).keys)

    def source_image_hw(self, split: str) -> tuple[int, int]:
        """(height, width) of the split's raw frames, read from its first image."""
        self._check_split(split)
        image, _ = self._source(split).fetch(0)
        with Image.open(io.BytesIO(image)) as im:
            return im.height, im.width

    # -- data check hooks ------------------------------------------------------------------------

    def list_problems(self, split: str) -> list:
        """Every malformed list line and missing file of ``split`` (``check.Problem`` list).

        The default has no lists to parse: readers with list files override it.
        """
        self._check_split(split)
        return []

    def check_label(self, label_path: str) -> tuple[tuple[int, int], list[str]]:
        """Reads a label file fully: its (H, W) and messages for values outside the class table.

        The default expects an 8-bit single-channel PNG of class ids ``0..num_classes-1`` or
        ``ignore_label``.

        Raises:
            OSError: the file is missing, truncated or not an image (the data check reports it).
        """
        with Image.open(label_path) as im:
            im.load()
            hw = (im.height, im.width)
            if im.mode != "L":
                return hw, [f"expected an 8-bit single-channel PNG, got PIL mode {im.mode!r}"]
            values, counts = np.unique(np.asarray(im), return_counts=True)
        return hw, self._label_value_messages(values, counts)

    def _label_value_messages(self, values: np.ndarray, counts: np.ndarray) -> list[str]:
        n, ignore = self._info.num_classes, self._info.ignore_label
        bad = (values >= n) & (values != ignore)
        if not bad.any():
            return []
        shown = ", ".join(str(int(v)) for v in values[bad][:10])
        more = ", ..." if bad.sum() > 10 else ""
        return [
            f"values {{{shown}{more}}} not in 0..{n - 1} (or {ignore}) at "
            f"{int(counts[bad].sum())} pixels"
        ]

    # -- corrupt samples ------------------------------------------------------------------------

    @property
    def corrupt_samples(self) -> list[CorruptSample]:
        """Corrupt samples skipped or masked so far (``config.data.skip_corrupt``), all splits."""
        return [s for split in self._corrupt.values() for s in split.values()]

    def _diagnose(self, split: str, index: int) -> tuple[str, str] | None:
        if split not in self._diagnosers:
            loader = _Loader(self._source(split), self._options, self._decode_label)
            self._diagnosers[split] = loader
        return self._diagnosers[split].diagnose(index)

    # -- batches --------------------------------------------------------------------------------

    def train_batches(
        self,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        split: str | None = None,
    ) -> BatchIterator:
        """Infinite per-process training batches: ``image`` f32 (B,H,W,3), ``label`` i32 (B,H,W).

        A corrupt sample raises ``CorruptSampleError`` naming its file, or with
        ``config.data.skip_corrupt`` is replaced as the module docstring describes.

        Args:
            batch_size: examples per process per step.
            seed: run seed; fixes epoch orders and augmentation.
            start_step: first global step to produce (resume).
            process_index: this process's slice of the global batch.
            process_count: number of processes sharing a global batch.
            split: split to train on; defaults to the dataset's configured training split.

        Returns:
            An iterator of numpy batch dicts (``num_skipped`` counts skipped samples).
        """
        split = split or self._train_split()
        self._check_split(split)
        _check_batch_args(batch_size, process_index, process_count)
        _check_train_args(seed, start_step)
        source = self._source(split)
        o = self._options

        def make(step: int, excluded: frozenset[int]) -> tf.data.Dataset:
            return build_train_dataset(
                source, o, seed, batch_size, step, process_index, process_count,
                decode_label=self._decode_label, excluded=excluded,
            )  # fmt: skip

        def batch_indices(step: int, excluded: frozenset[int]) -> list[int]:
            stream = train_stream(
                int(seed), len(source), batch_size, step, process_index, process_count,
                o.shuffle, excluded,
            )  # fmt: skip
            return [i for i, _ in itertools.islice(stream, batch_size)]

        if not len(source):
            raise ValueError(f"cannot build a training pipeline over 0 examples (split {split!r})")
        if not source.labelled:
            raise ValueError(f"cannot train on split {split!r}: it has no labels")
        return BatchIterator(self, split, source, make, batch_indices, int(start_step))

    def eval_batches(
        self, split: str, batch_size: int, process_index: int = 0, process_count: int = 1
    ) -> BatchIterator:
        """One pass over ``split`` in key order, no augmentation, padded to whole batches.

        Batches hold ``image`` f32 (B,H,W,3), ``label`` i32 (B,H,W) (all 255 for splits
        without labels), ``mask`` bool (B,) (False = padding) and ``index`` i32 (B,) into
        ``keys(split)`` (-1 = padding). Every process yields the same number of batches. A
        corrupt sample raises ``CorruptSampleError``, or with ``config.data.skip_corrupt`` is
        masked like padding.
        """
        self._check_split(split)
        _check_batch_args(batch_size, process_index, process_count)
        source = self._source(split)

        def make(start: int, excluded: frozenset[int]) -> tf.data.Dataset:
            return build_eval_dataset(
                source, self._options, batch_size, process_index, process_count,
                decode_label=self._decode_label, excluded=excluded, start_batch=start,
            )  # fmt: skip

        def batch_indices(b: int, excluded: frozenset[int]) -> list[int]:
            idx = _masked_eval_indices(
                len(source), batch_size, process_index, process_count, excluded
            )
            return [int(i) for i in idx[b * batch_size : (b + 1) * batch_size] if i >= 0]

        if not len(source):
            raise ValueError(f"cannot build an eval pipeline over 0 examples (split {split!r})")
        return BatchIterator(self, split, source, make, batch_indices, 0)

    def _train_split(self) -> str:
        return "train"


class FolderDataset(SegmentationDataset):
    """A reader of one dataset root folder, ``config.data.data_dir``.

    The folder holds the real dataset, or the synthetic twin its generator writes there on first
    use (``config.data.synthetic.enabled``). This class holds what the readers share: parsing the
    common ``config.data`` fields (class weights, train/eval splits, data_dir, synthetic,
    max_examples), checking the root, generating the synthetic data and preparing the train/eval
    splits. Subclasses set the class attributes and implement ``_layout_error``, ``_holds_data``
    and ``_prepare_split``; what ``_layout_error`` reads must be set before ``__init__`` runs
    (it checks the root of real data).
    """

    NAME = ""  # DatasetInfo.name, e.g. "llamas"
    TITLE = ""  # the dataset in messages, e.g. "LLAMAS"
    ROOT = ""  # what data_dir must be, completing "expected ..."
    SUGGEST = ""  # what to do about a wrong data_dir
    GENERATOR_MODULE = ""  # synthetic generator module; its GENERATOR is a common.Generator

    def __init__(
        self,
        config,
        *,
        class_names: Sequence[str],
        default_class_weights: Sequence[float],
        classes_desc: str,
        class_lut: np.ndarray | None = None,
    ):
        """Validates ``config`` (the data ConfigDict); checks the root unless it is synthetic.

        Args:
            config: ``config.data``.
            class_names: one name per class.
            default_class_weights: class weights when ``config.data.class_weights`` is unset.
            classes_desc: the classes in a wrong-count message, e.g. ``"CULane has 5 classes"``.
            class_lut: the left/right class swap table for horizontal flips.

        Raises:
            DataConfigError: a field is invalid or data_dir is not the dataset root (the message
                names the field).
        """
        self._config = config
        weights = config_get(config, "class_weights", default_class_weights)
        try:
            weights = tuple(float(w) for w in weights)
        except (TypeError, ValueError):
            raise DataConfigError(
                f"config.data.class_weights must be numbers, got {weights!r}"
            ) from None
        if len(weights) != len(class_names):
            raise DataConfigError(
                f"config.data.class_weights has {len(weights)} entries; {classes_desc}"
            )
        self._train_split_name = config_choice(config, "train_split", self.SPLITS, "train")
        self._eval_split_name = config_choice(config, "eval_split", self.SPLITS, "valid")
        options = options_from_config(config, class_lut=class_lut)
        info = DatasetInfo(
            name=self.NAME,
            num_classes=len(class_names),
            class_names=class_names,
            class_weights=weights,
            ignore_label=IGNORE_LABEL,
            image_hw=options.image_hw,
        )
        super().__init__(info, options)

        synthetic = config_get(config, "synthetic")
        self._synthetic = synthetic if config_get(synthetic, "enabled", False) else None
        data_dir = config_get(config, "data_dir")
        if data_dir is None or str(data_dir) == "":
            raise DataConfigError(
                f"config.data.data_dir is not set; expected {self.ROOT}"
                + ("" if self._synthetic is None else " to generate the synthetic dataset into")
                + f". {self.SUGGEST}"
            )
        self._data_dir = absolute_path(data_dir)
        self._generated = self._synthetic is None
        if self._synthetic is None:
            self._check_layout()

    # -- hooks ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def _layout_error(self) -> str | None:
        """What makes the existing ``data_dir`` not the dataset root, or None.

        The text follows ``config.data.data_dir = '<dir>' ``, e.g. ``"is not a LLAMAS root:
        missing labels/"``.
        """

    @abc.abstractmethod
    def _holds_data(self) -> bool:
        """Whether ``data_dir`` holds the dataset's folders (synthetic or not)."""

    @abc.abstractmethod
    def _prepare_split(self, split: str) -> None:
        """Reads (and checks or caches) one split; part of ``prepare``."""

    def _synthetic_generated(self, params: dict) -> None:
        """Called with the generator parameters once the synthetic data is in place."""

    # -- setup ----------------------------------------------------------------------------------

    def _check_layout(self) -> None:
        d = self._data_dir
        if not os.path.isdir(d):
            raise DataConfigError(
                f"config.data.data_dir = {d!r} does not exist; expected {self.ROOT}. {self.SUGGEST}"
            )
        error = self._layout_error()
        if error:
            raise DataConfigError(f"config.data.data_dir = {d!r} {error}. {self.SUGGEST}")

    def _ensure_generated(self) -> None:
        """Writes the configured synthetic dataset if it is not there yet (real data: no-op)."""
        if self._generated:
            return
        # Imported here: the generators import their readers, which import this module.
        from data_pipelines.synthetic import common

        generator = importlib.import_module(self.GENERATOR_MODULE).GENERATOR
        params = common.ensure_synthetic(
            self._data_dir, self.TITLE, generator, self._synthetic, self._holds_data()
        )
        self._synthetic_generated(params)
        self._check_layout()
        self._generated = True

    def _capped(self, split: str, items: list) -> list:
        """The first ``config.data.max_examples.<split>`` of ``items`` (all when unset)."""
        cap = self._options.max_examples.get(split)
        return items if cap is None else items[:cap]

    # -- SegmentationDataset --------------------------------------------------------------------

    def prepare(self) -> None:
        """Generates the synthetic data if configured and missing; prepares train/eval splits."""
        self._ensure_generated()
        for split in dict.fromkeys((self._train_split_name, self._eval_split_name)):
            self._prepare_split(split)

    def _train_split(self) -> str:
        return self._train_split_name

    @property
    def data_dir(self) -> str:
        """Absolute dataset root."""
        return self._data_dir
