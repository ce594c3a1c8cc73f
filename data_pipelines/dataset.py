"""The dataset objects the training code holds: ``SegmentationDataset`` and ``FolderDataset``.

A reader (LLAMAS, CULane, ApolloScape) subclasses ``SegmentationDataset`` (through
``FolderDataset``, which holds the config parsing and synthetic-data handling they share) and
supplies the per-split list of ``Example``s (image file, 8-bit label PNG or None) plus, optionally,
its own label decoder and left/right class swap table. The base class turns those lists into the
batch iterators of ``data_pipelines.loader`` (whose docstring states the determinism and
corrupt-sample contracts) over a ``data_pipelines.sources`` source.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import itertools
import math
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from data_pipelines.errors import DataConfigError
from data_pipelines.formats.lists import Problem
from data_pipelines.loader import (
    BatchIterator,
    CorruptSample,
    ExampleLoader,
    build_eval_dataset,
    build_train_dataset,
    check_batch_args,
    check_train_args,
    masked_eval_indices,
    train_stream,
)
from data_pipelines.options import (
    IGNORE_LABEL,
    PipelineOptions,
    absolute_path,
    config_choice,
    config_get,
    options_from_config,
)
from data_pipelines.sources import (
    Example,
    FileSource,
    SplitSource,
    decode_png_label,
    hide_gpus_from_tf,
    open_tfds_source,
)
from data_pipelines.synthetic import common


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
        self._diagnosers: dict[str, ExampleLoader] = {}

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
                names = self._info.class_names
                self._sources[split] = open_tfds_source(self._options, split, names)
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

    def list_problems(self, split: str) -> list[Problem]:
        """Every malformed list line and missing file of ``split``.

        The default has no lists to parse: readers with list files override it.
        """
        self._check_split(split)
        return []

    def check_examples(self, split: str) -> list[Example]:
        """The examples the data check decodes: those whose files the lists let it find.

        The default is ``examples``; readers whose ``examples`` raise at the first list problem
        override it with a lenient listing (``list_problems`` reports the rest).
        """
        return self.examples(split)

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
            loader = ExampleLoader(self._source(split), self._options, self._decode_label)
            self._diagnosers[split] = loader
        return self._diagnosers[split].diagnose(index)

    def _batch_iterator(self, split, source, make, batch_indices, start: int) -> BatchIterator:
        """A ``BatchIterator`` recording the split's corrupt samples in this dataset."""
        return BatchIterator(
            split,
            source,
            make,
            batch_indices,
            start,
            corrupt=self._corrupt.setdefault(split, {}),
            diagnose=lambda i: self._diagnose(split, i),
            skip_corrupt=self._options.skip_corrupt,
        )

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
        ``config.data.skip_corrupt`` is replaced as ``data_pipelines.loader`` describes.

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
        check_batch_args(batch_size, process_index, process_count)
        check_train_args(seed, start_step)
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
        return self._batch_iterator(split, source, make, batch_indices, int(start_step))

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
        check_batch_args(batch_size, process_index, process_count)
        source = self._source(split)

        def make(start: int, excluded: frozenset[int]) -> tf.data.Dataset:
            return build_eval_dataset(
                source, self._options, batch_size, process_index, process_count,
                decode_label=self._decode_label, excluded=excluded, start_batch=start,
            )  # fmt: skip

        def batch_indices(b: int, excluded: frozenset[int]) -> list[int]:
            idx = masked_eval_indices(
                len(source), batch_size, process_index, process_count, excluded
            )
            return [int(i) for i in idx[b * batch_size : (b + 1) * batch_size] if i >= 0]

        if not len(source):
            raise ValueError(f"cannot build an eval pipeline over 0 examples (split {split!r})")
        return self._batch_iterator(split, source, make, batch_indices, 0)

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
    GENERATOR: common.Generator | None = None  # the synthetic twin's generator

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
        pairs = zip(class_names, weights, strict=True)
        bad = [(name, w) for name, w in pairs if not 0.0 <= w < math.inf]
        if bad:
            # A NaN or infinite weight makes every loss NaN; a negative one rewards mistakes.
            raise DataConfigError(
                "config.data.class_weights must be finite and >= 0, got "
                + ", ".join(f"{w} for class {name!r}" for name, w in bad)
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
        if getattr(self, "_without_files", False):
            self._data_dir = absolute_path(data_dir) if data_dir else ""
            self._generated = True
            return
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

    @classmethod
    def without_files(cls, config):
        """The reader's ``info`` and ``options`` only: ``data_dir`` is neither needed nor checked.

        Reading a split from such a reader fails; predict/export jobs need only the class table,
        the input size and the normalisation.
        """
        reader = cls.__new__(cls)
        reader._without_files = True
        reader.__init__(config)
        return reader

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
        params = common.ensure_synthetic(
            self._data_dir, self.TITLE, self.GENERATOR, self._synthetic, self._holds_data()
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
