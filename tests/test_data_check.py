"""Data check (check_data mode) and corrupt-sample handling of the training/eval iterators.

Every fault is planted by hand in a tiny synthetic dataset and the expected problems are written
out in the test (kind, file, line), so the check must find exactly those.
"""

import itertools
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from ml_collections import config_dict
from PIL import Image

import data_pipelines
from configs import apolloscape as apolloscape_config
from configs import culane as culane_config
from configs import llamas as llamas_config
from data_pipelines import check, loader
from data_pipelines.errors import DataError
from data_pipelines.formats import apolloscape as apollo
from data_pipelines.synthetic.llamas import generate_llamas

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC_WH = (160, 90)


def take(it, n):
    return list(itertools.islice(it, n))


def llamas_cfg(data_dir, **overrides):
    cfg = llamas_config.get_config("smoke").data
    cfg.data_dir = str(data_dir)
    cfg.synthetic.enabled = False
    cfg.augment.enabled = False
    cfg.num_parallel_calls = 2
    cfg.prefetch = 1
    cfg.update_from_flattened_dict(overrides)
    return cfg


@pytest.fixture(scope="module")
def llamas_clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamas") / "clean"
    generate_llamas(root, 8, 3, 1, seed=5, image_wh=SRC_WH)
    return root


@pytest.fixture
def llamas_copy(llamas_clean, tmp_path):
    dst = tmp_path / "llamas"
    shutil.copytree(llamas_clean, dst)
    return dst


def llamas_files(root, split):
    """(image path, json path) per key, sorted: the layout written out independently."""
    out = []
    for rec in sorted(os.listdir(root / "color_images" / split)):
        for name in sorted(os.listdir(root / "color_images" / split / rec)):
            ts = name[: -len("_color_rect.png")]
            out.append(
                (
                    str(root / "color_images" / split / rec / name),
                    str(root / "labels" / split / rec / (ts + ".json")),
                )
            )
    return out


def truncate(path, fraction=0.5):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * fraction)])


def found(report, split):
    return {(p.kind, p.path, p.line) for p in report.problems[split]}


# ----------------------------------------------------------------------------------------------
# The check itself.


def test_clean_llamas_passes(llamas_clean):
    report = check.check_dataset(data_pipelines.get_dataset(llamas_cfg(llamas_clean)))
    assert report.ok, report.format()
    assert report.num_examples == {"train": 8, "valid": 3, "test": 1}
    assert report.num_files == 12  # images decoded (json labels are parsed, not decoded)
    assert all(n == 0 for c in report.counts().values() for n in c.values())
    assert "OK: no problems found" in report.format()


def test_llamas_faults_each_found_with_file_and_line(llamas_copy):
    root = llamas_copy
    train, valid = llamas_files(root, "train"), llamas_files(root, "valid")
    os.remove(train[1][0])  # missing image (its json stays)
    os.remove(train[2][1])  # missing label
    truncate(train[3][0])  # truncated PNG
    with open(train[4][0], "wb") as f:  # garbage bytes named .png
        f.write(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    small = np.zeros((SRC_WH[1] - 10, SRC_WH[0] - 10, 3), np.uint8)
    cv2.imwrite(train[5][0], small)  # valid PNG of the wrong size
    with open(valid[1][1], "w") as f:  # json syntax error on line 3
        f.write('{\n  "projection_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],\n  "lanes": [}\n}\n')
    with open(valid[2][1], "w") as f:  # parses, lacks a field
        f.write('{"lanes": []}')
    report = check.check_dataset(data_pipelines.get_dataset(llamas_cfg(root)), num_workers=3)
    assert found(report, "train") == {
        ("missing_file", train[1][0], None),
        ("missing_file", train[2][1], None),
        ("unreadable_image", train[3][0], None),
        ("unreadable_image", train[4][0], None),
        ("size_mismatch", train[5][0], None),
    }
    assert found(report, "valid") == {
        ("malformed_line", valid[1][1], 3),
        ("malformed_label", valid[2][1], None),
    }
    assert found(report, "test") == set()
    assert not report.ok and report.num_problems == 7
    by_path = {p.path: p for ps in report.problems.values() for p in ps}
    assert "150x80" in by_path[train[5][0]].message and "160x90" in by_path[train[5][0]].message
    assert "projection_matrix" in by_path[valid[2][1]].message
    text = report.format()
    assert f"{valid[1][1]}:3: [malformed_line]" in text
    assert f"{train[3][0]}: [unreadable_image]" in text
    assert report.counts()["train"]["unreadable_image"] == 2
    assert "FAILED: 7 problem(s)" in text


def test_truncated_jpeg_is_caught_although_cv2_decodes_it(tmp_path):
    # The pitfall the checker must avoid: cv2.imread returns a half-grey image for a truncated
    # JPEG instead of failing (libjpeg only warns).
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (5, 5), 0)
    path = str(tmp_path / "x.jpg")
    cv2.imwrite(path, img)
    assert check.decode_image_fully(path) == (60, 80)
    truncate(path, 0.6)
    assert cv2.imread(path) is not None  # silently decoded
    with pytest.raises(OSError, match="truncated"):
        check.decode_image_fully(path)


def culane_cfg(data_dir):
    cfg = culane_config.get_config("smoke").data
    cfg.data_dir = str(data_dir)
    return cfg


def test_culane_faults_each_found_with_file_and_line(tmp_path):
    ds = data_pipelines.get_dataset(culane_cfg(tmp_path / "culane"))
    clean = check.check_dataset(ds)  # generates the synthetic data first
    assert clean.ok, clean.format()
    root = tmp_path / "culane"
    list_path = str(root / "list" / "train_gt.txt")
    with open(list_path) as f:
        lines = f.read().splitlines()
    fields = [line.split() for line in lines]
    image = [str(root / f[0].lstrip("/")) for f in fields]
    label = [str(root / f[1].lstrip("/")) for f in fields]
    os.remove(image[1])  # missing image; the message names the list line (line 2)
    truncate(image[2], 0.6)  # truncated JPEG
    lab = np.array(Image.open(label[3]))
    lab[:2, :2] = 7  # CULane classes are 0..4
    Image.fromarray(lab).save(label[3])
    Image.fromarray(np.zeros((lab.shape[0], lab.shape[1] - 4), np.uint8)).save(label[4])
    with open(list_path, "a") as f:
        f.write("only_one_field.jpg\n")
    report = check.check_dataset(data_pipelines.get_dataset(culane_cfg(root)))
    assert found(report, "train") == {
        ("missing_file", image[1], None),
        ("unreadable_image", image[2], None),
        ("label_value", label[3], None),
        ("size_mismatch", label[4], None),
        ("malformed_line", list_path, len(lines) + 1),
    }
    assert all(not ps for split, ps in report.problems.items() if split != "train")
    by_kind = {p.kind: p for p in report.problems["train"]}
    assert "{7}" in by_kind["label_value"].message and "0..4" in by_kind["label_value"].message
    assert f"{list_path}:2" in by_kind["missing_file"].message


def test_apolloscape_faults_each_found(tmp_path):
    cfg = apolloscape_config.get_config("smoke").data
    cfg.data_dir = str(tmp_path / "apollo")
    assert check.check_dataset(data_pipelines.get_dataset(cfg)).ok
    root = tmp_path / "apollo"
    list_path = str(root / "list" / "train.txt")
    train = data_pipelines.get_dataset(cfg).examples("train")
    bad_id = next(v for v in range(256) if v not in apollo.TABLE_IDS)
    im = Image.open(train[0].label_path)
    assert im.mode == "P"
    ids = np.array(im)
    ids[0, :3] = bad_id
    out = Image.fromarray(ids, mode="P")
    out.putpalette(im.getpalette())
    out.save(train[0].label_path)
    truncate(train[1].image_path, 0.6)
    os.remove(train[2].label_path)
    with open(list_path, "a") as f:
        f.write("not an image line\n")
    with open(list_path) as f:
        n_lines = len(f.read().splitlines())
    report = check.check_dataset(data_pipelines.get_dataset(cfg))
    got = found(report, "train")
    assert ("label_value", train[0].label_path, None) in got
    assert ("unreadable_image", train[1].image_path, None) in got
    assert ("malformed_line", list_path, n_lines) in got
    missing = [p for p in report.problems["train"] if p.kind == "missing_file"]
    assert len(missing) == 1 and train[2].label_path in (missing[0].path + missing[0].message)
    assert len(got) == 4
    assert f"{{{bad_id}}}" in str(report.problems["train"])


# ----------------------------------------------------------------------------------------------
# mode=check_data.


def test_check_data_mode_returns_report_or_raises(llamas_clean, llamas_copy, tmp_path):
    from intrakd_jax import train

    config = llamas_config.get_config("smoke")
    config.mode = "check_data"
    config.data = llamas_cfg(llamas_clean)
    result = train.train_and_evaluate(config, str(tmp_path / "ok"))
    assert result["ok"] and result["num_examples"]["train"] == 8
    assert "OK: no problems" in (tmp_path / "ok" / "data_check.txt").read_text()
    os.remove(llamas_files(llamas_copy, "train")[1][1])
    config.data = llamas_cfg(llamas_copy)
    with pytest.raises(DataError, match="1 problem"):
        train.train_and_evaluate(config, str(tmp_path / "bad"))
    assert "[missing_file]" in (tmp_path / "bad" / "data_check.txt").read_text()
    assert issubclass(loader.CorruptSampleError, train.USER_ERRORS)


def test_check_data_exit_status(llamas_copy, tmp_path):
    bad = llamas_files(llamas_copy, "valid")[0][0]
    truncate(bad)
    cmd = [
        sys.executable,
        "main.py",
        "--config=configs/llamas.py:smoke",
        "--config.mode=check_data",
        f"--config.data.data_dir={llamas_copy}",
        "--config.data.synthetic.enabled=False",
        f"--workdir={tmp_path / 'w'}",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"{bad}: [unreadable_image]" in proc.stdout
    assert "error: DataError: data check found 1 problem(s)" in proc.stderr


# ----------------------------------------------------------------------------------------------
# Corrupt samples during training and evaluation.

SEED = 3
N_TRAIN = 8


def reference_order(seed, n, positions, excluded):
    """Example per stream position: the epoch permutation, a corrupt example replaced by the
    next non-corrupt one of the same epoch order (cyclically)."""
    out = []
    for q in range(positions):
        order = np.random.default_rng([seed, q // n]).permutation(n)
        k = q % n
        while order[k] in excluded:
            k = (k + 1) % n
        out.append(int(order[k]))
    return out


@pytest.fixture
def prepared_copy(llamas_copy):
    data_pipelines.get_dataset(llamas_cfg(llamas_copy)).prepare()  # labels rendered while clean
    return llamas_copy


def test_corrupt_image_stops_training_naming_the_file(prepared_copy):
    ds = data_pipelines.get_dataset(llamas_cfg(prepared_copy))
    bad = ds.examples("train")[2].image_path
    truncate(bad)
    with pytest.raises(loader.CorruptSampleError) as e:
        take(ds.train_batches(2, seed=SEED), 2 * N_TRAIN)
    assert e.value.sample.path == bad and e.value.sample.index == 2
    assert bad in str(e.value) and "skip_corrupt" in str(e.value)
    assert isinstance(e.value, DataError)


def test_missing_and_corrupt_label_files_are_named(prepared_copy):
    ds = data_pipelines.get_dataset(llamas_cfg(prepared_copy))
    skip = data_pipelines.get_dataset(llamas_cfg(prepared_copy, skip_corrupt=True))
    examples = ds.examples("train")
    assert skip.examples("train") == examples  # listed before the files go bad
    os.remove(examples[0].image_path)
    with pytest.raises(loader.CorruptSampleError, match="cannot read file") as e:
        take(ds.train_batches(N_TRAIN, seed=SEED), 1)
    assert e.value.sample.path == examples[0].image_path
    truncate(examples[5].label_path)
    ds = skip
    batches = take(ds.eval_batches("train", 4), 3)
    assert {s.path for s in ds.corrupt_samples} == {examples[0].image_path, examples[5].label_path}
    np.testing.assert_array_equal(batches[0]["index"], [-1, 1, 2, 3])
    np.testing.assert_array_equal(batches[1]["index"], [4, -1, 6, 7])
    np.testing.assert_array_equal(batches[1]["mask"], [True, False, True, True])


def test_skip_corrupt_replaces_only_the_corrupt_positions(prepared_copy):
    clean_ds = data_pipelines.get_dataset(llamas_cfg(prepared_copy))
    # Without augmentation a training image is its example's eval image: that identifies it.
    evals = np.concatenate([b["image"] for b in clean_ds.eval_batches("train", N_TRAIN)])
    steps, bs = 8, 2  # two epochs
    clean = take(clean_ds.train_batches(bs, seed=SEED), steps)
    bad_index = 4
    truncate(clean_ds.examples("train")[bad_index].image_path)

    ds = data_pipelines.get_dataset(llamas_cfg(prepared_copy, skip_corrupt=True))
    it = ds.train_batches(bs, seed=SEED)
    got = take(it, steps)
    assert it.num_skipped == 1 and len(ds.corrupt_samples) == 1
    assert ds.corrupt_samples[0].index == bad_index
    expect_clean = reference_order(SEED, N_TRAIN, steps * bs, set())
    expect_skip = reference_order(SEED, N_TRAIN, steps * bs, {bad_index})
    assert expect_clean != expect_skip and bad_index not in expect_skip
    for q in range(steps * bs):
        s, j = divmod(q, bs)
        np.testing.assert_array_equal(got[s]["image"][j], evals[expect_skip[q]])
        if expect_clean[q] != bad_index:  # every other position is untouched
            np.testing.assert_array_equal(got[s]["image"][j], clean[s]["image"][j])
            np.testing.assert_array_equal(got[s]["label"][j], clean[s]["label"][j])
    # A resumed run (fresh dataset object, corrupt file not yet known) sees the same batches.
    fresh = data_pipelines.get_dataset(llamas_cfg(prepared_copy, skip_corrupt=True))
    for a, b in zip(
        got[5:], take(fresh.train_batches(bs, seed=SEED, start_step=5), 3), strict=True
    ):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_skip_corrupt_and_source_config_validated(llamas_clean):
    def cfg_with(**fields):
        d = llamas_cfg(llamas_clean).to_dict()
        d.update(fields)
        for k in [k for k, v in fields.items() if v is None]:
            del d[k]
        return config_dict.ConfigDict(d)

    with pytest.raises(DataError, match="config.data.skip_corrupt"):
        data_pipelines.get_dataset(cfg_with(skip_corrupt="yes"))
    with pytest.raises(DataError, match="config.data.source"):
        data_pipelines.get_dataset(cfg_with(source="hdf5"))
    options = data_pipelines.get_dataset(cfg_with(source=None, skip_corrupt=None)).options
    assert options.source == "files" and options.skip_corrupt is False


def test_corrupt_label_with_python_decoder_is_named(tmp_path):
    # ApolloScape decodes labels in a tf.numpy_function: the re-check must run it as a graph.
    cfg = apolloscape_config.get_config("smoke").data
    cfg.data_dir = str(tmp_path / "apollo")
    ds = data_pipelines.get_dataset(cfg)
    ds.prepare()
    bad = ds.examples("train")[1].label_path
    truncate(bad)
    with pytest.raises(loader.CorruptSampleError) as e:
        take(ds.train_batches(4, seed=0), 4)
    assert e.value.sample.path == bad and "cannot decode label" in str(e.value)
    assert e.value.sample.index == 1
