"""The tf.data loader: index streams, per-example graphs and the corrupt-sample aware iterator.

``data_pipelines.dataset.SegmentationDataset`` hands this module a split's source
(``data_pipelines.sources``) and gets back the batch iterators the training code consumes:

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

import dataclasses
import itertools
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from data_pipelines import augment as augment_lib
from data_pipelines.errors import DataError
from data_pipelines.options import PipelineOptions
from data_pipelines.sources import (
    Example,
    FileSource,
    SplitSource,
    decode_png_label,
    hide_gpus_from_tf,
)

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


def check_batch_args(batch_size: int, process_index: int, process_count: int) -> None:
    """Checks the per-process batch size and the process slice.

    Raises:
        ValueError: an argument is not an int in its range (names which).
    """
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


class ExampleLoader:
    """Builds the per-example graph functions for one split (and re-reads corrupt examples)."""

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
        """Network-size image float32 (H, W, 3) and label int32 (H, W) with static shapes."""
        h, w = self.options.image_hw
        image = tf.ensure_shape(image, [h, w, 3])
        label = tf.ensure_shape(tf.cast(label[..., 0], tf.int32), [h, w])
        return image, label

    def train_example(self, index: tf.Tensor, position: tf.Tensor, seed: int):
        """One training example, augmented with the seed ``(seed, stream position)``."""
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
        """One eval example (resized, no augmentation); ``index < 0`` gives padding."""
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


def check_train_args(seed: int, start_step: int) -> None:
    """Checks a training stream's seed and first step.

    Raises:
        ValueError: an argument is not an int in its range (names which).
    """
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
    check_batch_args(batch_size, process_index, process_count)
    check_train_args(seed, start_step)
    if not len(examples):
        raise ValueError("cannot build a training pipeline over 0 examples")
    hide_gpus_from_tf()
    loader = ExampleLoader(examples, options, decode_label)
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
    check_batch_args(batch_size, process_index, process_count)
    if not len(examples):
        raise ValueError("cannot build an eval pipeline over 0 examples")
    hide_gpus_from_tf()
    loader = ExampleLoader(examples, options, decode_label)
    indices = masked_eval_indices(len(examples), batch_size, process_index, process_count, excluded)
    ds = tf.data.Dataset.from_tensor_slices(indices[start_batch * batch_size :])
    ds = ds.map(
        loader.eval_example, num_parallel_calls=options.num_parallel_calls, deterministic=True
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    return _deterministic(_prefetch(ds, options.prefetch))


def masked_eval_indices(
    n: int, batch_size: int, process_index: int, process_count: int, excluded: frozenset[int]
) -> np.ndarray:
    """``eval_indices`` with the ``excluded`` (corrupt) examples masked like padding (-1)."""
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
        split: str,
        loader_source: SplitSource,
        make: Callable[[int, frozenset[int]], tf.data.Dataset],
        batch_indices: Callable[[int, frozenset[int]], list[int]],
        start: int,
        *,
        corrupt: dict[int, CorruptSample],
        diagnose: Callable[[int], tuple[str, str] | None],
        skip_corrupt: bool,
    ):
        """Wraps ``make(start, excluded)`` (a tf.data pipeline from batch ``start``).

        Args:
            split: split name.
            loader_source: the split's source (for keys in messages).
            make: builds the pipeline from a batch number with a set of excluded indices.
            batch_indices: example indices (no padding) of batch ``b`` given the excluded set.
            start: number of the first batch.
            corrupt: the split's record of corrupt samples by index, shared with the dataset
                (and its other iterators of the split); skipped samples are added to it.
            diagnose: ``diagnose(i)`` re-reads example ``i``: ``(file, reason)`` if corrupt.
            skip_corrupt: skip/mask corrupt samples instead of raising ``CorruptSampleError``.
        """
        self.split = split
        self._corrupt = corrupt
        self._diagnose = diagnose
        self._skip_corrupt = skip_corrupt
        self._source = loader_source
        self._make = make
        self._batch_indices = batch_indices
        self._batch = start
        self._it = None

    @property
    def num_skipped(self) -> int:
        """Distinct corrupt samples of this split skipped (train) or masked (eval) so far."""
        return len(self._corrupt)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            if self._it is None:
                excluded = frozenset(self._corrupt)
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
        known = self._corrupt
        found: list[CorruptSample] = []
        for b in range(self._batch, self._batch + 1 + _LOOKAHEAD_BATCHES):
            for i in self._batch_indices(b, frozenset(known)):
                if i in known or any(s.index == i for s in found):
                    continue
                culprit = self._diagnose(i)
                if culprit is not None:
                    path, reason = culprit
                    found.append(CorruptSample(self.split, i, self._source.keys[i], path, reason))
            if found:
                break
        if not found:
            raise error  # not attributable to a file: a genuine pipeline failure
        if not self._skip_corrupt:
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
