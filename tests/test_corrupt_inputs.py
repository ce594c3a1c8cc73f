"""Corrupt images and labels through ``check_data`` and the training input pipeline.

One table of corruptions, planted in one training example of a tiny synthetic copy of each
dataset (real on-disk format). For each: what ``data_pipelines.check.check_dataset`` reports
(kind and file), what the training iterator does by default (``CorruptSampleError`` naming the
file, or a legitimate decode) and with ``config.data.skip_corrupt=True`` (skipped and counted).

Legitimate cases, and why:

* gray, RGBA and 16-bit images: every reader decodes images with ``decode_image(channels=3,
  dtype=uint8)``, which repeats the gray channel, drops alpha and scales 16 bits to 8 exactly as
  an 8-bit RGB export of the same picture; the decoded pixels are compared with that picture.
* ApolloScape label colours (or ids) outside the class table: training maps them to 255
  (ignored), as the IntRA-KD reference's lookup table does (DATASETS.md 4); the data check still
  reports them.
* A LLAMAS lane that lies entirely outside its image: the official renderer clips it away, so
  the label has no pixel of that lane and training goes on; the data check reports it.

Everything else stops training naming the file, or is skipped and counted.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

import data_pipelines
from configs import apolloscape as apolloscape_config
from configs import culane as culane_config
from configs import llamas as llamas_config
from data_pipelines import check, loader
from data_pipelines.formats import apolloscape as apollo

CONFIGS = {"llamas": llamas_config, "culane": culane_config, "apolloscape": apolloscape_config}
BAD = 2  # index (in key order) of the corrupted training example
BATCH = 4


def data_cfg(name: str, data_dir, **overrides):
    cfg = CONFIGS[name].get_config("smoke").data
    cfg.data_dir = str(data_dir)
    cfg.synthetic.enabled = False
    cfg.augment.enabled = False  # training images equal eval images: pixels can be compared
    cfg.num_parallel_calls = 1
    cfg.prefetch = 0
    cfg.update_from_flattened_dict(overrides)
    return cfg


@pytest.fixture(scope="module")
def clean_roots(tmp_path_factory):
    roots = {}
    for name, module in CONFIGS.items():
        cfg = module.get_config("smoke").data
        cfg.data_dir = str(tmp_path_factory.mktemp(name) / "clean")
        data_pipelines.get_dataset(cfg).prepare()  # generates the synthetic twin
        roots[name] = cfg.data_dir
    return roots


def copy_of(clean_roots, name, tmp_path, keep_label_cache=True):
    dst = tmp_path / name
    ignore = None if keep_label_cache else shutil.ignore_patterns(".label_cache")
    shutil.copytree(clean_roots[name], dst, ignore=ignore)
    return dst


# ---------------------------------------------------------------------------------------------
# Corruptions: each takes the example and returns nothing (it rewrites a file in place).


def truncate(path: str, keep: float = 0.6) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def zero_bytes(path: str) -> None:
    open(path, "wb").close()


def read_rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def save_like(path: str, image: Image.Image) -> None:
    image.save(path, format="JPEG" if path.endswith(".jpg") else "PNG", quality=95)


def wrong_size(path: str) -> None:
    rgb = read_rgb(path)
    save_like(path, Image.fromarray(rgb[:, :-8]))  # 8 columns narrower than its label


def gray(path: str) -> None:
    with Image.open(path) as im:
        save_like(path, im.convert("L"))


def rgba(path: str) -> None:
    rgb = read_rgb(path)
    alpha = np.random.default_rng(0).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path, format="PNG")


def sixteen_bit(path: str) -> None:
    rgb = read_rgb(path).astype(np.uint16) * 257  # v * 257: scaled back to v exactly
    assert cv2.imwrite(path, rgb[..., ::-1])  # cv2 writes 16-bit RGB PNGs (BGR order)


def culane_label_value(path: str) -> None:
    label = np.array(Image.open(path))
    label[:3, :3] = 7  # CULane has slots 0..4
    Image.fromarray(label).save(path)


def culane_label_rgb(path: str) -> None:
    label = np.array(Image.open(path))
    Image.fromarray(np.dstack([label] * 3)).save(path)  # values intact, but 3 channels


def culane_label_16bit(path: str) -> None:
    label = np.array(Image.open(path)).astype(np.uint16)
    assert cv2.imwrite(path, label)  # same values, 16-bit: decode_png(uint8) scaled them to 0


APOLLO_BAD_ID = next(v for v in range(256) if v not in apollo.TABLE_IDS)
APOLLO_BAD_COLOR = (1, 2, 3)  # no class colour


def apollo_label_id(path: str) -> None:
    im = Image.open(path)
    ids = np.array(im)
    ids[-5:, :7] = APOLLO_BAD_ID
    out = Image.fromarray(ids, mode="P")
    out.putpalette(im.getpalette())
    out.save(path)


def apollo_label_color(path: str) -> None:
    with Image.open(path) as im:
        rgb = np.array(im.convert("RGB"))  # the palette holds the table colours
    rgb[-5:, :7] = APOLLO_BAD_COLOR
    Image.fromarray(rgb, "RGB").save(path)


# ---------------------------------------------------------------------------------------------
# The table: (dataset, case, corruption, kind the data check reports (None: clean), the file it
# names ("image", "label", or "json" for LLAMAS), training). The corruption rewrites the image
# when it is in IMAGE_CORRUPTIONS, else the label. training: "stop*" = CorruptSampleError
# naming the file by default, skipped and counted with skip_corrupt ("stop": the image,
# "stop_label": the label, "stop_size": the label, its message naming the image); anything else
# names the check of a legitimate result (module docstring).

IMAGE_CASES = [
    ("truncated", truncate, "unreadable_image", "image", "stop"),
    ("zero_byte", zero_bytes, "unreadable_image", "image", "stop"),
    # Not resized: in a labelled split the label would no longer fit its image (an unlabelled
    # split's images are resized to the network input whatever their size).
    ("wrong_size", wrong_size, "size_mismatch", "label", "stop_size"),
    ("gray", gray, None, None, "gray"),
]
IMAGE_CORRUPTIONS = {truncate, zero_bytes, wrong_size, gray, rgba, sixteen_bit}
CASES = [
    *[("llamas", *c) for c in IMAGE_CASES],
    ("llamas", "rgba", rgba, None, None, "same"),
    ("llamas", "16bit", sixteen_bit, None, None, "same"),
    ("llamas", "lane_outside", None, "label_value", "json", "lane_outside"),
    *[("culane", *c) for c in IMAGE_CASES],
    ("culane", "label_value", culane_label_value, "label_value", "label", "stop_label"),
    ("culane", "label_rgb", culane_label_rgb, "label_value", "label", "stop_label"),
    ("culane", "label_16bit", culane_label_16bit, "label_value", "label", "stop_label"),
    *[("apolloscape", *c) for c in IMAGE_CASES],
    ("apolloscape", "label_id", apollo_label_id, "label_value", "label", "ignored"),
    ("apolloscape", "label_color", apollo_label_color, "label_value", "label", "ignored"),
]
# LLAMAS labels are rendered at the split's image size, so the data check blames the image.
SIZE_BLAME = {"llamas": "image", "culane": "label", "apolloscape": "label"}


def move_lane_outside(json_path: str) -> None:
    """Puts every marker of the json's first lane 5000 px right of the image (and in 3-D)."""
    with open(json_path) as f:
        label = json.load(f)
    lane = label["lanes"][0]
    for marker in lane["markers"]:
        for key in ("pixel_start", "pixel_end"):
            marker[key]["x"] = int(marker[key]["x"]) + 5000
        for key in ("world_start", "world_end"):
            # 5000 px at this depth: x / z * fx with fx = projection_matrix[0][0]
            fx = float(label["projection_matrix"][0][0])
            marker[key]["x"] = float(marker[key]["x"]) + 5000 * float(marker[key]["z"]) / fx
    with open(json_path, "w") as f:
        json.dump(label, f)


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def found(report) -> set[tuple[str, str]]:
    return {(p.kind, p.path) for p in report.problems["train"]}


@pytest.mark.parametrize(
    ("name", "case", "corrupt", "kind", "what", "training"),
    CASES,
    ids=[f"{c[0]}-{c[1]}" for c in CASES],
)
def test_corruption(clean_roots, tmp_path, name, case, corrupt, kind, what, training):
    root = copy_of(clean_roots, name, tmp_path, keep_label_cache=case != "lane_outside")
    clean = data_pipelines.get_dataset(data_cfg(name, clean_roots[name]))
    n = len(clean.examples("train"))
    example = clean.examples("train")[BAD]
    rel_image = os.path.relpath(example.image_path, clean_roots[name])
    image = str(root / rel_image)
    if name == "llamas":
        label = str(root / "labels" / "train" / (example.key + ".json"))  # key: <rec>/<ts>
    else:
        label = str(root / os.path.relpath(example.label_path, clean_roots[name]))
    if case == "lane_outside":
        move_lane_outside(label)
    else:
        corrupt(image if corrupt in IMAGE_CORRUPTIONS else label)

    # (a) the data check.
    report = check.check_dataset(data_pipelines.get_dataset(data_cfg(name, root)), ["train"])
    if kind is None:
        assert report.ok, report.format()
    else:
        blame = {"image": image, "label": label, "json": label}[what]
        if kind == "size_mismatch":
            blame = image if SIZE_BLAME[name] == "image" else label
        assert found(report) == {(kind, blame)}, report.format()

    # (b) training, default: stop naming the file; (c) skip_corrupt: skipped and counted.
    ds = data_pipelines.get_dataset(data_cfg(name, root))
    steps = n // BATCH  # one epoch: every example once
    if training.startswith("stop"):
        with pytest.raises(loader.CorruptSampleError) as error:
            take(ds.train_batches(BATCH, seed=0), steps)
        blamed = {"stop": image, "stop_label": label, "stop_size": None}[training]
        if blamed is not None:
            assert error.value.sample.path == blamed
        else:  # size: the label is blamed, its message names the image too
            assert image in str(error.value)
        assert error.value.sample.index == BAD
        assert "skip_corrupt" in str(error.value)
        skip = data_pipelines.get_dataset(data_cfg(name, root, skip_corrupt=True))
        it = skip.train_batches(BATCH, seed=0)
        batches = take(it, steps)
        assert it.num_skipped == 1 and len(batches) == steps
        assert [s.index for s in skip.corrupt_samples] == [BAD]
        return
    batches = take(ds.train_batches(BATCH, seed=0), steps)
    assert len(batches) == steps
    evals = ds.eval_batches("train", n)
    got = next(iter(evals))
    assert evals.num_skipped == 0
    position = list(got["index"]).index(BAD)
    if training in ("gray", "same"):
        want = next(iter(clean.eval_batches("train", n)))["image"][position]
        image_got = got["image"][position]
        if training == "gray":
            # One gray value repeated in R, G and B: after the per-channel mean subtraction
            # the channels differ by exactly the means' differences.
            spread = image_got.max(axis=-1) - image_got.min(axis=-1)
            mean = np.asarray(data_cfg(name, root).mean_rgb)
            spread_expected = mean.max() - mean.min()  # the per-channel means differ
            np.testing.assert_allclose(spread, spread_expected, atol=1e-3)
        else:
            np.testing.assert_array_equal(image_got, want)
    elif training == "ignored":
        trainids = apollo.read_label_trainids(label)
        assert (trainids[-5:, :7] == 255).all()
        want = apollo.read_label_trainids(example.label_path)
        np.testing.assert_array_equal(trainids[:-5], want[:-5])
    elif training == "lane_outside":
        lane_pixels = got["label"][position]
        before = next(iter(clean.eval_batches("train", n)))["label"][position]
        assert lane_pixels.shape == before.shape
        # The moved lane (l1/l0/r0/r1 class of lane 0 after renumbering) has left the label.
        assert set(np.unique(lane_pixels)) < set(np.unique(before))
