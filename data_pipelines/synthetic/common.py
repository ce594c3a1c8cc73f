"""What the synthetic generators and their readers share: marker files, parameters, first use.

A generator writes its dataset into a root folder and marks it with two files named after it
(``<name>`` = ``llamas``, ``culane``, ...):

    .synthetic_<name>.in_progress   written first (the parameters), removed when the data is done
    synthetic_<name>.json           the generator parameters, written last: the data is complete

A reader with ``config.data.synthetic.enabled`` calls ``ensure_synthetic`` on first use: it
generates into an empty ``data_dir`` or over an unfinished generation, keeps a finished one with
the same parameters and refuses folders holding anything else.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import inspect
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from data_pipelines.errors import DataConfigError
from data_pipelines.options import config_get
from data_pipelines.util import ProgressLogger, write_file_atomic


@dataclasses.dataclass(frozen=True)
class GeneratorFiles:
    """A generator's name and version and its marker and in-progress files in an output folder.

    Attributes:
        name: the generator (the dataset), e.g. ``"llamas"``; names the files.
        version: bumped when the output changes, so older generations no longer match.
    """

    name: str
    version: int

    @property
    def marker_file(self) -> str:
        """File name of the finished-generation marker (the parameters, JSON)."""
        return f"synthetic_{self.name}.json"

    @property
    def in_progress_file(self) -> str:
        """File name of the flag that a generation started and has not finished."""
        return f".synthetic_{self.name}.in_progress"

    def base_params(self, num_train: int, num_valid: int, num_test: int, seed: int) -> dict:
        """Validates the split sizes and seed every generator takes; the start of its parameters.

        Returns:
            ``{"generator", "version", "num_train", "num_valid", "num_test", "seed"}`` (ints).

        Raises:
            ValueError: a count is not an int >= 1 or the seed not an int >= 0 (names which).
        """
        counts = {"num_train": num_train, "num_valid": num_valid, "num_test": num_test}
        for name, n in counts.items():
            if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
                raise ValueError(f"{name} must be an int >= 1, got {n!r}")
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        return {
            "generator": self.name,
            "version": self.version,
            **{k: int(v) for k, v in counts.items()},
            "seed": int(seed),
        }

    def read_marker(self, out_dir: str | os.PathLike) -> dict | None:
        """The parameters of a finished generation in ``out_dir``, or None."""
        return _read_json(os.path.join(out_dir, self.marker_file))

    def in_progress(self, out_dir: str | os.PathLike) -> bool:
        """True if a generation into ``out_dir`` started and did not finish."""
        return os.path.exists(os.path.join(out_dir, self.in_progress_file))

    def started_with(self, out_dir: str | os.PathLike) -> dict | None:
        """The parameters of an unfinished generation in ``out_dir`` (None: none or unreadable)."""
        return _read_json(os.path.join(out_dir, self.in_progress_file))

    def start(self, out_dir: str | os.PathLike, params: Mapping[str, Any]) -> None:
        """Creates ``out_dir`` and flags a generation with ``params`` as started."""
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, self.in_progress_file)
        write_file_atomic(path, json.dumps(dict(params)).encode())

    def finish(self, out_dir: str | os.PathLike, params: Mapping[str, Any]) -> None:
        """Writes the marker (the data is complete), then drops the in-progress flag."""
        marker = os.path.join(out_dir, self.marker_file)
        write_file_atomic(marker, json.dumps(dict(params), indent=1).encode())
        os.remove(os.path.join(out_dir, self.in_progress_file))


def image_wh_ints(image_wh) -> tuple[int, int]:
    """The generator argument ``image_wh`` as ``(width, height)`` ints.

    Raises:
        ValueError: not two numbers (names ``image_wh``).
    """
    try:
        w, h = (int(v) for v in image_wh)
    except (TypeError, ValueError):
        raise ValueError(f"image_wh must be (width, height), got {image_wh!r}") from None
    return w, h


def map_frames(work: Callable[[Any], Any], tasks: Sequence[Any], what: str) -> list:
    """``[work(t) for t in tasks]`` on up to 4 threads, logging progress as ``what``."""
    progress = ProgressLogger(what, len(tasks))
    results = []
    # Frames are independent (own seeds), so threads cannot change the output; numpy, OpenCV
    # and file writes release the GIL for most of the work.
    with concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        for result in pool.map(work, tasks):
            results.append(result)
            progress.update()
    progress.finish()
    return results


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class Generator:
    """A synthetic dataset generator as its reader drives it.

    Attributes:
        files: its marker and in-progress files.
        params: ``params(**kwargs) -> dict``, the validated canonical parameters (the marker's
            content); raises ``ValueError`` naming a bad argument. Its keyword defaults are the
            defaults of the ``config.data.synthetic`` fields of the same names.
        generate: ``generate(out_dir, **kwargs)`` writes the dataset.
    """

    files: GeneratorFiles
    params: Callable[..., dict]
    generate: Callable[..., None]

    def kwargs_from_config(self, synthetic_cfg) -> dict[str, Any]:
        """``params``' keyword arguments read from ``config.data.synthetic`` (absent: default).

        Values are converted like their defaults: ints, floats, or sequences of ints.

        Raises:
            DataConfigError: a field cannot be converted (names the field).
        """
        kwargs = {}
        for name, p in inspect.signature(self.params).parameters.items():
            value = config_get(synthetic_cfg, name, p.default)
            if isinstance(p.default, float):
                convert, kind = float, "a number"
            elif isinstance(p.default, int):
                convert, kind = int, "an int"
            else:
                convert, kind = (lambda v: tuple(int(x) for x in v)), "a sequence of ints"
            try:
                kwargs[name] = convert(value)
            except (TypeError, ValueError):
                raise DataConfigError(
                    f"config.data.synthetic.{name} must be {kind} (default {p.default!r}), "
                    f"got {value!r}"
                ) from None
        return kwargs


def ensure_synthetic(
    data_dir: str, title: str, generator: Generator, synthetic_cfg, holds_foreign_data: bool
) -> dict:
    """Makes ``data_dir`` hold the synthetic dataset ``config.data.synthetic`` describes.

    Generates it when ``data_dir`` is missing or empty or an earlier generation did not finish;
    keeps a finished generation with the same parameters.

    Args:
        data_dir: the dataset root (``config.data.data_dir``).
        title: the dataset's name in messages, e.g. ``"LLAMAS"``.
        generator: the dataset's generator.
        synthetic_cfg: ``config.data.synthetic``.
        holds_foreign_data: whether ``data_dir`` already holds the dataset's folders; without a
            marker or an unfinished generation, those were not written by the generator.

    Returns:
        The generator parameters.

    Raises:
        DataConfigError: bad ``config.data.synthetic`` fields, or ``data_dir`` holds a generation
            with other parameters or data the generator did not write.
    """
    kwargs = generator.kwargs_from_config(synthetic_cfg)
    try:
        params = generator.params(**kwargs)
    except ValueError as e:
        raise DataConfigError(f"config.data.synthetic: {e}") from None
    existing = generator.files.read_marker(data_dir)
    if existing is not None:
        if existing != params:
            raise DataConfigError(
                f"config.data.data_dir = {data_dir!r} holds a synthetic {title} dataset "
                f"generated with {existing}, but config.data.synthetic asks for {params}; "
                "delete that folder or point data_dir elsewhere"
            )
    elif holds_foreign_data and not generator.files.in_progress(data_dir):
        raise DataConfigError(
            f"config.data.data_dir = {data_dir!r} already holds data that this "
            "generator did not write; set config.data.synthetic.enabled = False to use it, "
            "or choose an empty/non-existent data_dir for the synthetic dataset"
        )
    else:
        logging.info("%s: generating synthetic dataset %s into %s", title, params, data_dir)
        generator.generate(data_dir, **kwargs)
    return params
