"""Exceptions raised by the data pipelines.

Every error names the offending file, config field or argument and says what was expected, so a
user can fix the input without reading the reader's source.
"""


class DataError(Exception):
    """Base class of all data-pipeline errors."""


class DataConfigError(DataError, ValueError):
    """A data config field (``config.data.*``) or a dataset directory is missing or invalid."""


class DatasetLayoutError(DataError):
    """Files on disk do not follow the dataset's layout (e.g. an image without its label)."""


class LabelFormatError(DataError, ValueError):
    """A label file cannot be parsed or lacks a required field."""
