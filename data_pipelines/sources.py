"""Sources: where the encoded image/label bytes of a split's example ``i`` come from.

``FileSource`` reads a reader's ``Example`` files; ``TfdsSource`` reads the same bytes from a
TFDS dataset prepared by ``data_pipelines.tfds_builders`` (array_record random access). Both give
the tf.data graph (``data_pipelines.loader``) a ``read(index)`` op and the corrupt-sample
diagnosis a plain Python ``fetch(i)``. TF is kept off GPUs.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from data_pipelines.options import PipelineOptions

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
class Example:
    """One example: its key and files (``label_path`` None for unlabelled splits)."""

    key: str
    image_path: str
    label_path: str | None


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


def open_tfds_source(
    options: PipelineOptions, split: str, class_names: Sequence[str]
) -> TfdsSource:
    """The ``TfdsSource`` of ``split`` of the prepared dataset ``options.tfds_name``.

    Keys are capped by ``options.max_examples``; ``class_names`` must match the prepared ones.
    """
    # Imported here: tensorflow_datasets is slow to import and only needed for this source.
    from data_pipelines import tfds_builders

    records, keys, labelled = tfds_builders.open_split(
        options.tfds_name, split, options.tfds_data_dir, class_names=class_names
    )
    cap = options.max_examples.get(split)
    if cap is not None:
        keys = keys[:cap]
    return TfdsSource(records, keys, labelled, f"{options.tfds_name}/{split}")


def decode_png_label(contents: tf.Tensor) -> tf.Tensor:
    """Default label decoder: 8-bit single-channel PNG -> uint8 (H, W, 1)."""
    return tf.io.decode_png(contents, channels=1, dtype=tf.uint8)
