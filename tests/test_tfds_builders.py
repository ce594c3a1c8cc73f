"""TFDS builders: each prepares a synthetic dataset from manual_dir, loads by index, and the
pipeline gives exactly the same batches from source="tfds" as from source="files"."""

import itertools
import os

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

import data_pipelines
from configs import apolloscape as apolloscape_config
from configs import culane as culane_config
from configs import llamas as llamas_config
from data_pipelines import tfds_builders
from data_pipelines.errors import DataConfigError
from data_pipelines.formats import llamas
from data_pipelines.llamas import list_samples
from data_pipelines.synthetic.llamas import generate_llamas

tfds.disable_progress_bar()


def take(it, n):
    return list(itertools.islice(it, n))


def smoke_data_config(module, data_dir, **fields):
    cfg = module.get_config("smoke").data
    cfg.data_dir = str(data_dir)
    cfg.num_parallel_calls = 2
    cfg.prefetch = 1
    for k, v in fields.items():
        cfg[k] = v
    return cfg


def read(path):
    with open(path, "rb") as f:
        return f.read()


def assert_same_batches(files_ds, tfds_ds, train_split, eval_split, steps=3, bs=2):
    a = take(files_ds.train_batches(bs, seed=7), steps)
    b = take(tfds_ds.train_batches(bs, seed=7), steps)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    a = list(files_ds.eval_batches(eval_split, 3))
    b = list(tfds_ds.eval_batches(eval_split, 3))
    assert len(a) == len(b) == -(-files_ds.num_examples(eval_split) // 3)
    for x, y in zip(a, b, strict=True):
        for k in ("image", "label", "mask", "index"):
            np.testing.assert_array_equal(x[k], y[k])
    assert tfds_ds.keys(eval_split) == files_ds.keys(eval_split)
    assert tfds_ds.num_examples(train_split) == files_ds.num_examples(train_split)


@pytest.fixture(scope="module")
def llamas_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamas_raw")
    generate_llamas(root, 6, 3, 2, seed=2, image_wh=(160, 90))
    return root


@pytest.fixture(scope="module")
def llamas_tfds(llamas_raw, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    tfds_builders.build("llamas", str(llamas_raw), str(data_dir))
    return data_dir


def test_llamas_builder_stores_reader_bytes_in_key_order(llamas_raw, llamas_tfds):
    records = tfds.data_source("llamas/multiclass", split="train", data_dir=str(llamas_tfds))
    samples = list_samples(llamas_raw, "train")
    assert len(records) == len(samples) == 6
    for rec, s in zip(records, samples, strict=True):
        assert rec["key"].decode() == s.key
        assert rec["image"] == read(s.image_path)
        # The label is the official rendering of the json, stored as PNG.
        want = llamas.render_multiclass_label(llamas.read_json(s.label_path), (90, 160))
        got = cv2.imdecode(np.frombuffer(rec["label"], np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(got, want)
    test = tfds.data_source("llamas/multiclass", split="test", data_dir=str(llamas_tfds))
    assert len(test) == 2 and all(r["label"] == b"" for r in test)
    info = tfds.builder("llamas/multiclass", data_dir=str(llamas_tfds)).info
    assert not os.path.exists(llamas_raw / ".label_cache")  # manual_dir is only read
    assert info.metadata["labelled"] == {"train": True, "valid": True, "test": False}
    assert info.metadata["class_names"] == list(llamas.MULTICLASS_NAMES)


def test_llamas_tfds_batches_equal_files_batches(llamas_raw, llamas_tfds, tmp_path):
    aug = {"augment.enabled": True, "augment.rotation_deg": 3.0, "augment.hflip": True}
    files_cfg = smoke_data_config(llamas_config, llamas_raw, cache_dir=str(tmp_path / "cache"))
    files_cfg.synthetic.enabled = False
    files_cfg.update_from_flattened_dict(aug)
    tfds_cfg = smoke_data_config(
        llamas_config, llamas_raw, source="tfds", tfds_data_dir=str(llamas_tfds)
    )
    tfds_cfg.synthetic.enabled = False
    tfds_cfg.update_from_flattened_dict(aug)
    files_ds = data_pipelines.get_dataset(files_cfg)
    tfds_ds = data_pipelines.get_dataset(tfds_cfg)
    assert tfds_ds.options.tfds_name == "llamas/multiclass"
    assert_same_batches(files_ds, tfds_ds, "train", "valid")
    # The unlabelled test split: all-ignore labels, same images.
    a, b = next(files_ds.eval_batches("test", 4)), next(tfds_ds.eval_batches("test", 4))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert np.all(b["label"] == 255) and b["mask"].tolist() == [True, True, False, False]
    assert tfds_ds.source_image_hw("train") == (90, 160)


def test_tfds_source_errors_name_the_fix(llamas_raw, llamas_tfds, tmp_path):
    cfg = smoke_data_config(
        llamas_config, llamas_raw, source="tfds", tfds_data_dir=str(tmp_path / "empty")
    )
    cfg.synthetic.enabled = False
    with pytest.raises(DataConfigError, match="not prepared.*python -m data_pipelines.tfds_b"):
        data_pipelines.get_dataset(cfg).train_batches(2, seed=0)
    # Binary labels need the binary builder config; forcing the multiclass one is refused.
    cfg.tfds_data_dir = str(llamas_tfds)
    cfg.label_type = "binary"
    cfg.class_weights = (1.0, 1.0)
    assert data_pipelines.get_dataset(cfg).options.tfds_name == "llamas/binary"
    cfg.tfds_name = "llamas/multiclass"
    with pytest.raises(DataConfigError, match="classes"):
        data_pipelines.get_dataset(cfg).eval_batches("train", 2)


def test_command_line_builds_binary_config(llamas_raw, tmp_path, capsys):
    assert (
        tfds_builders.main(
            [
                "--dataset=llamas",
                "--config=binary",
                f"--manual_dir={llamas_raw}",
                f"--data_dir={tmp_path}",
            ]
        )  # fmt: skip
        == 0
    )
    assert "train: 6 examples" in capsys.readouterr().out
    rec = tfds.data_source("llamas/binary", split="valid", data_dir=str(tmp_path))[0]
    label = cv2.imdecode(np.frombuffer(rec["label"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(label)) <= {0, 1}


@pytest.mark.parametrize(
    "name,module", [("culane", culane_config), ("apolloscape", apolloscape_config)]
)
def test_culane_and_apolloscape_builders(name, module, tmp_path):
    raw = tmp_path / "raw"
    files_ds = data_pipelines.get_dataset(smoke_data_config(module, raw))
    files_ds.prepare()  # writes the synthetic dataset
    tfds_builders.build(name, str(raw), str(tmp_path / "tfds"))
    train = files_ds.examples("train")
    records = tfds.data_source(name, split="train", data_dir=str(tmp_path / "tfds"))
    assert [r["key"].decode() for r in records] == [e.key for e in train]
    assert records[1]["image"] == read(train[1].image_path)
    assert records[1]["label"] == read(train[1].label_path)
    tfds_cfg = smoke_data_config(
        module, raw, source="tfds", tfds_data_dir=str(tmp_path / "tfds"), skip_corrupt=False
    )
    tfds_ds = data_pipelines.get_dataset(tfds_cfg)
    assert_same_batches(files_ds, tfds_ds, "train", tfds_cfg.eval_split)
    assert len(files_ds.examples("test")) == len(
        tfds.data_source(name, split="test", data_dir=str(tmp_path / "tfds"))
    )
