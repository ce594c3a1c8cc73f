r"""TFDS builders for LLAMAS, CULane and ApolloScape, fed by the project's own readers.

Each builder reads a user's downloaded copy of a dataset from ``manual_dir`` through the same
reader the training pipeline uses (``data_pipelines.get_dataset`` with ``configs/<name>.py``'s
real-data config and ``data_dir = manual_dir``) and stores, per split and in the reader's key
order, ``{"key": Text, "image": the image file's bytes, "label": the label file's bytes}`` (b"" for
splits without labels). The label is the file the reader's label decoder reads: LLAMAS's rendered
label PNG, CULane's 8-bit PNG, ApolloScape's ``_bin.png``. Bytes are stored untouched, so a
pipeline with ``config.data.source = "tfds"`` runs the very decode/crop/augment graph that
``source = "files"`` runs, and gives identical batches.

Storage: ``file_format="array_record"`` by default (random access through
``tfds.data_source``, which keeps the pipeline's (seed, step) -> batch order) and
``disable_shuffling=True`` (record i is the reader's example i). The keys, the per-split
"labelled" flag and the class names are stored in the dataset's metadata (``metadata.json``).

Build (from the repository root, so that ``configs`` and ``data_pipelines`` import)::

    python -m data_pipelines.tfds_builders --dataset=llamas --config=multiclass \
        --manual_dir=/data/llamas --data_dir=~/tensorflow_datasets
    python -m data_pipelines.tfds_builders --dataset=culane --manual_dir=/data/CULane
    python -m data_pipelines.tfds_builders --dataset=apolloscape --manual_dir=/data/apolloscape

or with the TFDS command line (in tensorflow-datasets 4.9.10 the ``tfds`` command needs
``apache_beam`` installed)::

    tfds build llamas --imports=data_pipelines.tfds_builders --config=multiclass \
        --manual_dir=/data/llamas --data_dir=~/tensorflow_datasets

then train from it::

    python main.py --config=configs/llamas.py --config.data.source=tfds \
        --config.data.tfds_data_dir=~/tensorflow_datasets --workdir=runs/llamas

LLAMAS has two builder configs, ``multiclass`` and ``binary`` (the rendered label type); training
reads the one named by ``config.data.label_type`` unless ``config.data.tfds_name`` names one.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

import data_pipelines
from data_pipelines.errors import DataConfigError, DataError

if __name__ == "__main__":
    # Run as a script: the builders must be defined (and registered with TFDS) once, under the
    # package's module name, so the script delegates to the imported module.
    from data_pipelines.tfds_builders import main as _main

    sys.exit(_main())

BUILDER_VERSION = "1.0.0"


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "key": tfds.features.Text(doc="the reader's example key"),
            "image": tfds.features.Tensor(
                shape=(), dtype=np.object_, doc="the image file's bytes (PNG or JPEG)"
            ),
            "label": tfds.features.Tensor(
                shape=(), dtype=np.object_, doc="the label file's bytes; b'' when unlabelled"
            ),
        }
    )


class _ReaderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder that copies a project reader's (key, image bytes, label bytes) triples."""

    VERSION = tfds.core.Version(BUILDER_VERSION)
    RELEASE_NOTES = {BUILDER_VERSION: "Image and label file bytes in the reader's key order."}
    READER: str = ""  # dataset name: configs/<READER>.py and data_pipelines.get_dataset
    # TFDS derives this from the package's resources, which needs the `importlib_resources`
    # backport that is not installed here; this file is the code path (no checksums.tsv).
    code_path = epath.Path(__file__)
    HOMEPAGE: str = ""
    DESCRIPTION: str = ""

    def __init__(self, *, file_format: str | None = None, **kwargs: Any):
        """Like ``GeneratorBasedBuilder`` but array_record unless ``file_format`` says otherwise."""
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=_features(),
            homepage=self.HOMEPAGE,
            disable_shuffling=True,  # record i = the reader's example i (key order)
            metadata=tfds.core.MetadataDict(),
        )

    def _reader_overrides(self) -> dict[str, Any]:
        """Extra ``config.data`` fields for the reader (e.g. the builder config's label type)."""
        return {}

    def _make_reader(self, manual_dir: str, work_dir: str):
        cfg = reader_data_config(self.READER, manual_dir, work_dir, self._reader_overrides())
        return data_pipelines.get_dataset(cfg), cfg

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        work_dir = os.path.join(os.fspath(dl_manager.download_dir), f"{self.name}_work")
        reader, cfg = self._make_reader(manual_dir, work_dir)
        required = {cfg.get("train_split", "train"), cfg.get("eval_split", "valid")}
        generators, keys, labelled = {}, {}, {}
        for split in reader.SPLITS:
            try:
                examples = reader.examples(split)
            except DataError as e:
                if split in required:
                    raise
                logging.warning("%s: split %r not built: %s", self.name, split, e)
                continue
            if not examples:
                continue
            keys[split] = [e.key for e in examples]
            labelled[split] = examples[0].label_path is not None
            generators[split] = self._generate_examples(examples)
        if not generators:
            raise DataConfigError(f"{self.name}: no split found under manual_dir {manual_dir}")
        self.info.metadata.update(
            keys=keys,
            labelled=labelled,
            class_names=list(reader.info.class_names),
            reader=self.READER,
        )
        return generators

    def _generate_examples(self, examples: Sequence[Any]) -> Iterator[tuple[str, dict]]:
        for e in examples:
            with open(e.image_path, "rb") as f:
                image = f.read()
            label = b""
            if e.label_path is not None:
                with open(e.label_path, "rb") as f:
                    label = f.read()
            yield e.key, {"key": e.key, "image": image, "label": label}

    @classmethod
    def config_name_for(cls, data_config) -> str | None:
        """The builder config matching a training ``config.data`` (None: no configs)."""
        return None


class Llamas(_ReaderBuilder):
    """LLAMAS: colour images (PNG) and the officially rendered segmentation labels (PNG)."""

    READER = "llamas"
    HOMEPAGE = "https://unsupervised-llamas.com/llamas/"
    DESCRIPTION = (
        "LLAMAS lane markers: color_rect images and the official multi-class or binary "
        "segmentation labels rendered from the json annotations."
    )
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="multiclass", description="5 classes: bg, l1, l0, r0, r1"),
        tfds.core.BuilderConfig(name="binary", description="2 classes: bg, marker"),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "multiclass"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download LLAMAS (https://unsupervised-llamas.com/llamas/, registration needed): the color
    images and the labels. Extract them so that manual_dir holds
      color_images/{train,valid,test}/<recording>/<ts>_color_rect.png
      labels/{train,valid}/<recording>/<ts>.json
    Labels are rendered into <data_dir>/downloads/llamas_work/ while building.
    """

    def _reader_overrides(self) -> dict[str, Any]:
        # Loss weights do not matter for building, but the reader checks their count.
        n = 5 if self.builder_config.name == "multiclass" else 2
        return {"label_type": self.builder_config.name, "class_weights": (1.0,) * n}

    @classmethod
    def config_name_for(cls, data_config) -> str | None:
        """``config.data.label_type`` (multiclass or binary)."""
        return _get(data_config, "label_type", "multiclass")


class Culane(_ReaderBuilder):
    """CULane: JPEG frames and the 8-bit ``laneseg_label_w16`` PNG labels."""

    READER = "culane"
    HOMEPAGE = "https://xingangpan.github.io/projects/CULane.html"
    DESCRIPTION = "CULane lanes: frames and laneseg_label_w16 labels (values 0..4)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download CULane (https://xingangpan.github.io/projects/CULane.html): the driver_* frame
    archives, laneseg_label_w16 and list. Extract them into manual_dir, which then holds
      driver_*/.../*.jpg, laneseg_label_w16/driver_*/.../*.png, list/train_gt.txt, list/test.txt,
      list/test_split/test*_*.txt
    """


class Apolloscape(_ReaderBuilder):
    """ApolloScape lane-mark segmentation: JPEG frames and palette ``_bin.png`` labels."""

    READER = "apolloscape"
    HOMEPAGE = "https://apolloscape.auto/lane_segmentation.html"
    DESCRIPTION = "ApolloScape lane-mark segmentation: ColorImage frames and _bin.png labels."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download the ApolloScape lane segmentation data (https://apolloscape.auto/) and extract it
    into manual_dir, which then holds
      ColorImage_road02/ColorImage/Record*/Camera 5/*.jpg (and road03, road04, road05 test)
      Labels_road02/Label/Record*/Camera 5/*_bin.png (and road03, road04)
    """


BUILDERS: dict[str, type[_ReaderBuilder]] = {
    "llamas": Llamas,
    "culane": Culane,
    "apolloscape": Apolloscape,
}


def _get(cfg, name: str, default=None):
    value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    return default if value is None else value


def reader_data_config(
    name: str, manual_dir: str, work_dir: str, overrides: dict[str, Any] | None = None
):
    """The ``config.data`` a builder's reader gets: the real-data config of ``configs/<name>.py``.

    Args:
        name: dataset name.
        manual_dir: the downloaded dataset (the reader's ``data_dir``).
        work_dir: scratch folder for reader caches (rendered labels).
        overrides: extra fields to set.

    Returns:
        The data ConfigDict (files source, no synthetic data, no caps).
    """
    try:
        module = importlib.import_module(f"configs.{name}")
    except ImportError as e:
        raise DataConfigError(
            f"TFDS builder {name!r} needs configs/{name}.py (run from the repository root): {e}"
        ) from None
    cfg = module.get_config("").data
    cfg.data_dir = os.fspath(manual_dir)
    if "cache_dir" in cfg:
        cfg.cache_dir = os.path.join(work_dir, "label_cache")
    if "synthetic" in cfg:
        cfg.synthetic.enabled = False
    if "source" in cfg:
        cfg.source = "files"
    if "skip_corrupt" in cfg:
        cfg.skip_corrupt = False
    if "max_examples" in cfg:
        for split in list(cfg.max_examples.keys()):
            cfg.max_examples[split] = None
    for k, v in (overrides or {}).items():
        cfg[k] = v
    return cfg


def tfds_name_for_config(data_config) -> str:
    """TFDS ``name[/config]`` that a training ``config.data`` reads with ``source="tfds"``.

    ``config.data.tfds_name`` wins when set; otherwise the dataset name plus, for builders with
    configs, the one matching the data config (LLAMAS: ``label_type``).

    Raises:
        DataConfigError: no builder for ``config.data.name``.
    """
    explicit = _get(data_config, "tfds_name")
    if explicit:
        return str(explicit)
    name = _get(data_config, "name")
    if name not in BUILDERS:
        raise DataConfigError(
            f"config.data.source = 'tfds' but there is no TFDS builder for config.data.name = "
            f"{name!r}; builders: {sorted(BUILDERS)}"
        )
    config = BUILDERS[name].config_name_for(data_config)
    return f"{name}/{config}" if config else name


def _build_hint(tfds_name: str, data_dir: str | None) -> str:
    name, _, config = tfds_name.partition("/")
    cfg = f" --config={config}" if config else ""
    dd = f" --data_dir={data_dir}" if data_dir else ""
    return (
        f"build it with: python -m data_pipelines.tfds_builders --dataset={name}{cfg} "
        f"--manual_dir=<downloaded {name}>{dd}"
    )


def open_split(
    tfds_name: str,
    split: str,
    data_dir: str | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[Sequence[dict], list[str], bool]:
    """Opens one split of a prepared dataset for random access.

    Args:
        tfds_name: ``name[/config]``.
        split: split name.
        data_dir: TFDS data_dir (None = TFDS's default).
        class_names: the reader's classes; must equal those the dataset was built with.

    Returns:
        ``(records, keys, labelled)``: the array_record data source (``records[i]`` is a dict
        with ``key``, ``image`` and ``label`` bytes), the keys in record order, and whether the
        split has labels.

    Raises:
        DataConfigError: the dataset is not prepared, lacks the split, was built for other classes
            or not in the array_record format.
    """
    where = data_dir or "the default TFDS data_dir"
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
        raise DataConfigError(
            f"config.data.tfds_name/name: cannot load TFDS dataset {tfds_name!r} from {where}: "
            f"{e}; {_build_hint(tfds_name, data_dir)}"
        ) from None
    if not builder.is_prepared():
        raise DataConfigError(
            f"TFDS dataset {tfds_name!r} is not prepared in {where} (config.data.tfds_data_dir); "
            + _build_hint(tfds_name, data_dir)
        )
    meta = builder.info.metadata or {}
    if "keys" not in meta or "labelled" not in meta:
        raise DataConfigError(
            f"TFDS dataset {tfds_name!r} in {where} was not built by data_pipelines.tfds_builders "
            "(its metadata lacks the example keys)"
        )
    if class_names is not None and list(meta.get("class_names", [])) != list(class_names):
        raise DataConfigError(
            f"TFDS dataset {tfds_name!r} in {where} holds labels for classes "
            f"{meta.get('class_names')}, but the data config has classes {list(class_names)}; "
            "set config.data.tfds_name to the matching builder config"
        )
    if split not in meta["keys"]:
        raise DataConfigError(
            f"TFDS dataset {tfds_name!r} in {where} has no split {split!r}; it has "
            f"{sorted(meta['keys'])}"
        )
    try:
        records = builder.as_data_source(split=split)
    except (NotImplementedError, ValueError) as e:
        raise DataConfigError(
            f"TFDS dataset {tfds_name!r} in {where} cannot be read by index ({e}); rebuild it "
            "with --file_format=array_record"
        ) from None
    keys = list(meta["keys"][split])
    if len(records) != len(keys):
        raise DataConfigError(
            f"TFDS dataset {tfds_name!r} split {split!r} has {len(records)} records but its "
            f"metadata lists {len(keys)} keys; rebuild it"
        )
    return records, keys, bool(meta["labelled"][split])


def build(
    dataset: str,
    manual_dir: str,
    data_dir: str | None = None,
    config: str | None = None,
    file_format: str = "array_record",
) -> tfds.core.DatasetBuilder:
    """Prepares one dataset (``download_and_prepare`` from ``manual_dir``).

    Args:
        dataset: ``llamas``, ``culane`` or ``apolloscape``.
        manual_dir: the downloaded copy.
        data_dir: TFDS data_dir to write to (None = TFDS's default).
        config: builder config (LLAMAS: multiclass or binary; None = the default).
        file_format: ``array_record`` (random access; what training needs) or ``tfrecord``.

    Returns:
        The prepared builder.
    """
    if dataset not in BUILDERS:
        raise ValueError(f"unknown dataset {dataset!r}; builders: {sorted(BUILDERS)}")
    manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
    if not os.path.isdir(manual_dir):
        raise DataConfigError(f"manual_dir {manual_dir} does not exist")
    kwargs: dict[str, Any] = {"file_format": file_format}
    if data_dir:
        kwargs["data_dir"] = os.path.abspath(os.path.expanduser(data_dir))
    if config:
        kwargs["config"] = config
    builder = BUILDERS[dataset](**kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m data_pipelines.tfds_builders --dataset=... --manual_dir=...``."""
    parser = argparse.ArgumentParser(
        prog="python -m data_pipelines.tfds_builders",
        description="Prepare a TFDS copy of a downloaded dataset for config.data.source=tfds.",
    )
    parser.add_argument("--dataset", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--manual_dir", required=True, help="the downloaded dataset")
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir (default: TFDS's)")
    parser.add_argument("--config", default=None, help="builder config (LLAMAS: label type)")
    parser.add_argument("--file_format", default="array_record")
    args = parser.parse_args(argv)
    try:
        builder = build(args.dataset, args.manual_dir, args.data_dir, args.config, args.file_format)
    except DataError as e:  # the user's data or paths: one message, no traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"prepared {builder.info.full_name} in {builder.data_dir}")
    for split, info in builder.info.splits.items():
        print(f"  {split}: {info.num_examples} examples")
    return 0
