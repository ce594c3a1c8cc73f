"""Input pipelines (tf.data on CPU) for lane-marking segmentation datasets.

``get_dataset(config.data)`` returns a dataset object with ``prepare``, ``info``,
``num_examples``, ``keys``, ``train_batches`` and ``eval_batches`` (see
``data_pipelines.dataset.SegmentationDataset``). This package never imports ``intrakd_jax``.

Modules in layers, each importing only earlier ones: ``errors``, ``util`` and ``formats`` (the
datasets' file formats, numpy/OpenCV only: no TensorFlow, no jax); ``augment`` and ``options``;
``synthetic`` (the generators of the synthetic twins); ``sources``, ``loader`` and ``dataset``
(tf.data); the readers ``llamas``, ``culane`` and ``apolloscape``; ``check``; ``tfds_builders``
(which reaches the readers through ``get_dataset``). Importing this package loads no reader.
"""

from __future__ import annotations

import importlib

from data_pipelines.errors import DataConfigError, DataError, DatasetLayoutError, LabelFormatError

# name -> "module:class"; readers are imported lazily so `import data_pipelines` stays cheap.
_READERS = {
    "llamas": "data_pipelines.llamas:LlamasDataset",
    "culane": "data_pipelines.culane:CulaneDataset",
    "apolloscape": "data_pipelines.apolloscape:ApolloscapeDataset",
}

__all__ = [
    "DataConfigError",
    "DatasetInfo",
    "DataError",
    "DatasetLayoutError",
    "LabelFormatError",
    "SegmentationDataset",
    "get_dataset",
    "known_datasets",
]


def known_datasets() -> list[str]:
    """Names accepted by ``get_dataset``."""
    return sorted(_READERS)


def get_dataset(data_config, *, need_files: bool = True):
    """Builds the reader named by ``data_config.name``.

    Args:
        data_config: the ``config.data`` ConfigDict.
        need_files: False skips every check of ``data_dir`` (which may then be unset or
            missing): the reader serves its ``info`` and ``options`` only, for jobs that run a
            model on other inputs (mode=predict, export).

    Returns:
        A ``data_pipelines.dataset.SegmentationDataset``.

    Raises:
        DataConfigError: unknown ``data_config.name`` (the message lists the known names),
            invalid fields or data folder.
    """
    name = data_config.get("name") if hasattr(data_config, "get") else None
    if name not in _READERS:
        raise DataConfigError(
            f"unknown dataset config.data.name = {name!r}; known datasets: {known_datasets()}"
        )
    module_name, cls_name = _READERS[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(data_config) if need_files else cls.without_files(data_config)


def __getattr__(name: str):
    # The dataset module imports TensorFlow, so its classes are loaded on first access only.
    if name in ("DatasetInfo", "SegmentationDataset"):
        return getattr(importlib.import_module("data_pipelines.dataset"), name)
    raise AttributeError(f"module 'data_pipelines' has no attribute {name!r}")
