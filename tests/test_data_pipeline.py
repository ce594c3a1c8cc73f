"""tf.data pipeline on a tiny synthetic LLAMAS: element spec, determinism, sharding, padding."""

import glob
import itertools
import math
import os

import cv2
import ml_collections as mlc
import numpy as np
import pytest
import tensorflow as tf

import data_pipelines
from data_pipelines import augment, llamas
from data_pipelines.dataset import DatasetInfo
from data_pipelines.errors import DataConfigError
from data_pipelines.synthetic.llamas import generate_llamas

FLIP_LUT = llamas.MULTICLASS_HFLIP_LUT

SRC_WH = (160, 90)
HW = (48, 80)
CROP = 10
MEAN = (123.68, 116.779, 103.939)
STD = (2.0, 1.0, 0.5)
N_TRAIN, N_VALID, N_TEST = 6, 3, 2


def make_config(data_dir, **overrides):
    cfg = mlc.ConfigDict(
        dict(
            name="llamas",
            data_dir=None if data_dir is None else str(data_dir),
            cache_dir=None,
            label_type="multiclass",
            train_split="train",
            eval_split="valid",
            crop_top=CROP,
            image_hw=HW,
            class_weights=(1.0, 1.0, 1.0, 1.0, 1.0),
            mean_rgb=MEAN,
            std_rgb=STD,
            augment=mlc.ConfigDict(
                dict(
                    enabled=False,
                    scale_range=(0.9, 1.1),
                    rotation_deg=2.0,
                    hflip=False,
                    brightness=0.0,
                )
            ),
            shuffle=True,
            num_parallel_calls=2,
            prefetch=1,
            max_examples=mlc.ConfigDict(dict(train=None, valid=None, test=None)),
            synthetic=mlc.ConfigDict(
                dict(
                    enabled=False,
                    num_train=N_TRAIN,
                    num_valid=N_VALID,
                    num_test=N_TEST,
                    seed=0,
                    image_wh=SRC_WH,
                )
            ),
        )
    )
    cfg.update_from_flattened_dict(overrides)
    return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamas_synth")
    generate_llamas(root, N_TRAIN, N_VALID, N_TEST, seed=3, image_wh=SRC_WH)
    return root


@pytest.fixture(scope="module")
def plain(data_dir):
    ds = data_pipelines.get_dataset(make_config(data_dir))
    ds.prepare()
    return ds


def take(it, n):
    return list(itertools.islice(it, n))


# ----------------------------------------------------------------------------------------------
# Independent numpy references (float64) for decode + crop + resize + normalise.


def ref_bilinear(img, out_hw):
    """Half-pixel-centre bilinear resize without antialiasing, edges clamped."""
    img = img.astype(np.float64)
    out = img
    for axis, n_out in enumerate(out_hw):
        n_in = out.shape[axis]
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        w = src - lo
        shape = [1] * out.ndim
        shape[axis] = n_out
        w = w.reshape(shape)
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
    return out


def ref_nearest(lab, out_hw):
    rows = np.minimum(
        np.floor((np.arange(out_hw[0]) + 0.5) * lab.shape[0] / out_hw[0]), lab.shape[0] - 1
    )
    cols = np.minimum(
        np.floor((np.arange(out_hw[1]) + 0.5) * lab.shape[1] / out_hw[1]), lab.shape[1] - 1
    )
    return lab[rows.astype(int)][:, cols.astype(int)]


def ref_example(ds, split, index):
    key = ds.keys(split)[index]
    rec, ts = key.split("/")
    rgb = cv2.imread(
        os.path.join(ds.data_dir, "color_images", split, rec, ts + "_color_rect.png"),
        cv2.IMREAD_COLOR,
    )[..., ::-1]
    image = (ref_bilinear(rgb[CROP:], HW) - np.array(MEAN)) / np.array(STD)
    lab = cv2.imread(
        os.path.join(ds.cache_dir, "multiclass", split, rec, ts + ".png"), cv2.IMREAD_UNCHANGED
    )
    return image, ref_nearest(lab[CROP:], HW)


# ----------------------------------------------------------------------------------------------


def test_info_and_keys(plain):
    assert plain.info == DatasetInfo(
        name="llamas",
        num_classes=5,
        class_names=("background", "l1", "l0", "r0", "r1"),
        class_weights=(1.0,) * 5,
        ignore_label=255,
        image_hw=HW,
    )
    for split, n in (("train", N_TRAIN), ("valid", N_VALID), ("test", N_TEST)):
        keys = plain.keys(split)
        assert len(keys) == plain.num_examples(split) == n
        assert keys == sorted(keys) and all(k.count("/") == 1 for k in keys)


def test_train_element_spec_without_augmentation(plain):
    batches = take(plain.train_batches(batch_size=4, seed=0), 2)
    for b in batches:
        assert set(b) == {"image", "label"}
        assert b["image"].shape == (4, *HW, 3) and b["image"].dtype == np.float32
        assert b["label"].shape == (4, *HW) and b["label"].dtype == np.int32
        assert set(np.unique(b["label"])) <= {0, 1, 2, 3, 4}  # no 255 without augmentation
        raw = b["image"] * np.array(STD, np.float32) + np.array(MEAN, np.float32)
        assert raw.min() >= -1e-3 and raw.max() <= 255 + 1e-3
    assert any(np.isin(b["label"], [1, 2, 3, 4]).any() for b in batches)


def test_eval_images_and_labels_match_numpy_reference(plain):
    (b0, b1) = take(plain.eval_batches("valid", batch_size=2), 3)
    assert b0["image"].dtype == np.float32 and b0["label"].dtype == np.int32
    for index in range(N_VALID):
        b, row = (b0, index) if index < 2 else (b1, 0)
        image, label = ref_example(plain, "valid", index)
        np.testing.assert_allclose(b["image"][row], image, atol=2e-3)
        np.testing.assert_array_equal(b["label"][row], label)
        assert b["index"][row] == index


def test_epoch_order_is_seeded_permutation(plain):
    # With augmentation off a training example equals its eval rendering, so each training
    # image identifies its example; the order must be default_rng([seed, epoch]).permutation(N).
    seed = 11
    evals = np.concatenate([b["image"] for b in plain.eval_batches("train", batch_size=N_TRAIN)])
    train = np.concatenate([b["image"] for b in take(plain.train_batches(4, seed=seed), 3)])
    expected = np.concatenate(
        [np.random.default_rng([seed, e]).permutation(N_TRAIN) for e in range(2)]
    )
    got = [int(np.argmin(np.abs(evals - img).reshape(N_TRAIN, -1).max(axis=1))) for img in train]
    assert got == expected.tolist()
    for img, idx in zip(train, got, strict=True):
        np.testing.assert_array_equal(img, evals[idx])


@pytest.fixture(scope="module")
def augmented(data_dir):
    cfg = make_config(
        data_dir,
        **{
            "augment.enabled": True,
            "augment.scale_range": (0.85, 1.2),
            "augment.rotation_deg": 3.0,
            "augment.hflip": True,
            "augment.brightness": 0.1,
        },
    )
    return data_pipelines.get_dataset(cfg)


def test_resume_at_start_step_reproduces_batches(augmented):
    full = take(augmented.train_batches(batch_size=2, seed=7), 6)
    resumed = take(augmented.train_batches(batch_size=2, seed=7, start_step=3), 3)
    for a, b in zip(full[3:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    # Augmentation is really on: some pixels are ignore (padding/rotation), and an example
    # seen in two epochs is augmented differently (seeded by stream position, not example).
    assert any((b["label"] == 255).any() for b in full)
    order = np.concatenate([np.random.default_rng([7, e]).permutation(N_TRAIN) for e in range(2)])
    images = np.concatenate([b["image"] for b in full])
    for i in range(N_TRAIN):
        first, second = np.nonzero(order == i)[0]
        assert not np.array_equal(images[first], images[second])


def test_process_slices_concatenate_to_global_batch(augmented):
    steps = 3
    glob_b = take(augmented.train_batches(batch_size=4, seed=5), steps)
    p0 = take(
        augmented.train_batches(batch_size=2, seed=5, process_index=0, process_count=2), steps
    )
    p1 = take(
        augmented.train_batches(batch_size=2, seed=5, process_index=1, process_count=2), steps
    )
    for g, a, b in zip(glob_b, p0, p1, strict=True):
        for k in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), g[k])


def test_ignore_label_only_from_padding(data_dir):
    # Scale < 1 and nothing else: the network-size frame is padded, image 0 (mean) + label 255.
    aug = {"augment.enabled": True, "augment.scale_range": (0.7, 0.8), "augment.rotation_deg": 0.0}
    cfg = make_config(data_dir, **aug)
    ds = data_pipelines.get_dataset(cfg)
    for b in take(ds.train_batches(batch_size=3, seed=1), 2):
        pad = b["label"] == 255
        assert pad.any(axis=(1, 2)).all()
        assert np.all(b["image"][pad] == 0.0)
        # Padding is a frame around the scaled image: each row/column is padded everywhere or
        # nowhere inside the scaled block's extent.
        for p in pad:
            rows, cols = np.nonzero(~p)
            block = np.zeros_like(p)
            block[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
            np.testing.assert_array_equal(~p, block)
            h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
            assert (
                0.7 * HW[0] - 1 <= h <= 0.8 * HW[0] + 1 and 0.7 * HW[1] - 1 <= w <= 0.8 * HW[1] + 1
            )


def test_ignore_label_from_rotation_stays_near_borders(data_dir):
    theta = math.radians(3.0)
    aug = {"augment.enabled": True, "augment.scale_range": (1.0, 1.0), "augment.rotation_deg": 3.0}
    cfg = make_config(data_dir, **aug)
    ds = data_pipelines.get_dataset(cfg)
    # A rotated-in pixel moved by at most 2 sin(theta/2) * half-diagonal from inside the frame.
    reach = 2 * math.sin(theta / 2) * math.hypot(HW[0] - 1, HW[1] - 1) / 2 + 1.0
    yy, xx = np.mgrid[0 : HW[0], 0 : HW[1]]
    border_dist = np.minimum.reduce([yy, HW[0] - 1 - yy, xx, HW[1] - 1 - xx])
    seen = 0
    for b in take(ds.train_batches(batch_size=3, seed=2), 2):
        for lab in b["label"]:
            ignored = lab == 255
            seen += ignored.sum()
            assert np.all(border_dist[ignored] <= reach)
    assert seen > 0


def test_hflip_swaps_lane_classes_on_hand_made_label():
    label = np.array([[1, 2, 0, 3, 4, 255], [4, 4, 0, 0, 1, 2]], np.uint8)[..., None]
    image = np.arange(2 * 6 * 3, dtype=np.float32).reshape(2, 6, 3)
    img_f, lab_f = augment.hflip_pair(
        tf.constant(image), tf.constant(label), llamas.MULTICLASS_HFLIP_LUT
    )
    # Mirrored columns, then l1<->r1 (1<->4) and l0<->r0 (2<->3); 0 and 255 unchanged.
    expected = np.array([[255, 1, 2, 0, 3, 4], [3, 4, 0, 0, 1, 1]], np.uint8)
    np.testing.assert_array_equal(lab_f.numpy()[..., 0], expected)
    np.testing.assert_array_equal(img_f.numpy(), image[:, ::-1])
    # Binary labels need no swap: the flip only mirrors.
    _, lab_b = augment.hflip_pair(tf.constant(image), tf.constant(label), None)
    np.testing.assert_array_equal(lab_b.numpy(), label[:, ::-1])


def test_random_hflip_either_identity_or_swapped_flip():
    row = [0, 1, 2, 0, 0, 3, 0, 4]  # l1 l0 | r0 . r1 (asymmetric on purpose)
    flipped_row = [1, 0, 2, 0, 0, 3, 4, 0]  # mirrored, then 1<->4 and 2<->3 (by hand)
    label = np.tile(np.array(row, np.uint8)[None, :, None], (4, 1, 1))
    image = np.random.default_rng(0).normal(size=(4, 8, 3)).astype(np.float32)
    spec = augment.AugmentSpec(enabled=True, hflip=True)
    outcomes = []
    for pos in range(12):
        seed = tf.constant([3, pos], tf.int64)
        img, lab = augment.augment_pair(
            tf.constant(image), tf.constant(label), (4, 8), seed, spec, class_lut=FLIP_LUT
        )
        lab = lab.numpy()[..., 0]
        if np.array_equal(lab[0], row):
            np.testing.assert_array_equal(img.numpy(), image)
            outcomes.append(False)
        else:
            np.testing.assert_array_equal(lab, np.tile(flipped_row, (4, 1)))
            np.testing.assert_array_equal(img.numpy(), image[:, ::-1])
            outcomes.append(True)
    assert any(outcomes) and not all(outcomes)


def test_eval_covers_every_example_once_with_padding_masked(plain):
    batches = list(plain.eval_batches("valid", batch_size=2))
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[1]["mask"], [True, False])
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), [0, 1, 2, -1])
    pad = batches[1]
    assert pad["mask"].dtype == np.bool_ and pad["index"].dtype == np.int32
    assert np.all(pad["image"][1] == 0) and np.all(pad["label"][1] == 255)
    # Two processes: same number of batches each, indices partition the split.
    for bs in (1, 2):
        per_proc = [list(plain.eval_batches("valid", bs, p, 2)) for p in range(2)]
        assert len(per_proc[0]) == len(per_proc[1]) == math.ceil(N_VALID / (2 * bs))
        idx = np.concatenate([b["index"][b["mask"]] for bl in per_proc for b in bl])
        assert sorted(idx.tolist()) == list(range(N_VALID))
        assert all(np.array_equal(b["mask"], b["index"] >= 0) for bl in per_proc for b in bl)


def test_test_split_has_all_ignore_labels(plain):
    batches = list(plain.eval_batches("test", batch_size=4))
    assert len(batches) == 1
    np.testing.assert_array_equal(batches[0]["index"], [0, 1, -1, -1])
    assert np.all(batches[0]["label"] == 255)
    assert np.abs(batches[0]["image"][:2]).max() > 0


def test_label_cache_layout_atomic_and_rendered_once(plain):
    cache = plain.cache_dir
    assert cache == os.path.join(plain.data_dir, ".label_cache")
    for split in ("train", "valid"):
        for key in plain.keys(split):
            assert os.path.isfile(os.path.join(cache, "multiclass", split, key + ".png"))
    assert not glob.glob(os.path.join(cache, "**", ".tmp-*"), recursive=True)
    assert not os.path.exists(os.path.join(cache, "multiclass", "test"))
    first = os.path.join(cache, "multiclass", "train", plain.keys("train")[0] + ".png")
    mtime = os.stat(first).st_mtime_ns
    # A fresh dataset object over the same folder renders nothing again.
    again = data_pipelines.get_dataset(make_config(plain.data_dir))
    again.prepare()
    assert os.stat(first).st_mtime_ns == mtime
    samples = llamas.list_samples(plain.data_dir, "train")
    assert llamas.render_label_cache(samples, cache, "multiclass", "train", SRC_WH[::-1]) == 0
    # A missing file (e.g. an interrupted run) is rendered on the next call.
    os.remove(first)
    os.remove(os.path.join(cache, "multiclass", "train", ".complete.json"))
    assert llamas.render_label_cache(samples, cache, "multiclass", "train", SRC_WH[::-1]) == 1
    assert os.path.isfile(first)


def test_binary_labels_and_max_examples(data_dir, tmp_path):
    cfg = make_config(
        data_dir,
        label_type="binary",
        class_weights=(0.5, 1.0),
        cache_dir=str(tmp_path / "cache"),
        **{"max_examples.train": 4, "max_examples.valid": 2},
    )
    ds = data_pipelines.get_dataset(cfg)
    assert ds.info.num_classes == 2 and ds.info.class_weights == (0.5, 1.0)
    assert ds.keys("train") == llamas_keys(data_dir, "train")[:4]
    assert ds.num_examples("valid") == 2
    b = next(ds.train_batches(batch_size=4, seed=0))
    assert set(np.unique(b["label"])) == {0, 1}
    assert os.path.isdir(tmp_path / "cache" / "binary" / "train")


def llamas_keys(root, split):
    return [s.key for s in llamas.list_samples(root, split)]


def test_synthetic_config_generates_into_data_dir(tmp_path):
    sizes = {"synthetic.num_train": 2, "synthetic.num_valid": 1, "synthetic.num_test": 1}
    cfg = make_config(tmp_path / "gen", **{"synthetic.enabled": True, **sizes})
    ds = data_pipelines.get_dataset(cfg)
    ds.prepare()
    assert ds.num_examples("train") == 2 and ds.num_examples("test") == 1
    # Asking for different synthetic parameters over the same folder is refused.
    cfg.synthetic.seed = 1
    with pytest.raises(DataConfigError, match="synthetic"):
        data_pipelines.get_dataset(cfg).prepare()


def test_missing_or_wrong_data_dir_errors(tmp_path):
    for bad in (None, tmp_path / "nope"):
        with pytest.raises(DataConfigError) as e:
            data_pipelines.get_dataset(make_config(bad))
        msg = str(e.value)
        assert "config.data.data_dir" in msg and "configs/llamas.py:synthetic" in msg
        if bad is not None:
            assert str(bad) in msg and "color_images" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataConfigError) as e:
        data_pipelines.get_dataset(make_config(tmp_path / "empty"))
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg and "missing color_images/, labels/" in msg
    assert "configs/llamas.py:synthetic" in msg


def test_config_errors(data_dir):
    with pytest.raises(ValueError, match=r"known datasets: \['apolloscape', 'culane', 'llamas'\]"):
        data_pipelines.get_dataset(make_config(data_dir, name="kitti"))
    with pytest.raises(DataConfigError, match="class_weights has 4 entries.*5 classes"):
        data_pipelines.get_dataset(make_config(data_dir, class_weights=(1.0, 1.0, 1.0, 1.0)))
    with pytest.raises(DataConfigError, match=r"finite and >= 0, got nan for class '\w+', -1.0"):
        data_pipelines.get_dataset(
            make_config(data_dir, class_weights=(float("nan"), -1.0, 1.0, 1.0, 1.0))
        )
    with pytest.raises(DataConfigError, match="label_type"):
        data_pipelines.get_dataset(make_config(data_dir, label_type="instance"))
    with pytest.raises(DataConfigError, match="scale_range"):
        data_pipelines.get_dataset(make_config(data_dir, **{"augment.scale_range": (1.2, 0.9)}))
    ds = data_pipelines.get_dataset(make_config(data_dir))
    with pytest.raises(ValueError, match="unknown split"):
        ds.keys("validation")
    with pytest.raises(ValueError, match="process_index"):
        ds.train_batches(2, seed=0, process_index=2, process_count=2)
