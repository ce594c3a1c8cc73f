"""Tests for intrakd_jax.evaluation: confusion matrix/IoU, official LLAMAS AP, writers."""

import json
import math

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from intrakd_jax.evaluation import iou_from_confusion, markdown_table, to_jsonable, write_report
from intrakd_jax.evaluation.device import confusion_matrix
from intrakd_jax.evaluation.llamas import (
    THRESHOLDS_DESC,
    PixelAPAccumulator,
    binary_approx_auc,
    quantize_probabilities,
    write_llamas_probability_pngs,
)

# ---------------------------------------------------------------------------------------------
# Independent references.


def confusion_loop(labels, preds, n, ignore=255, mask=None):
    """Plain double loop over examples and pixels."""
    conf = np.zeros((n, n), np.int64)
    for b in range(labels.shape[0]):
        if mask is not None and not mask[b]:
            continue
        for g, p in zip(labels[b].ravel(), preds[b].ravel(), strict=True):
            if ignore is not None and g == ignore:
                continue
            if 0 <= g < n and 0 <= p < n:
                conf[g, p] += 1
    return conf


def official_auc_loop(prediction, label):
    """The official LLAMAS per-image algorithm restated: 101 full passes in float64."""
    prediction = np.asarray(prediction, dtype=np.float64)
    label = np.asarray(label).astype(int)
    auc = 0
    corner_pr = corner_p = corner_r = corner_t = 0
    precisions, recalls = [1], [0]
    for i in range(101):
        t = (100 - i) / 100
        binary = (prediction >= t).astype(int)
        tp = np.sum((label != 0) & (binary == label))
        fn = np.sum((label != 0) & (binary == 0))
        fp = np.sum((label == 0) & (binary != 0))
        p = 0 if tp + fp == 0 else tp / (tp + fp)
        r = 0 if tp + fn == 0 else tp / (tp + fn)
        if p * r > corner_pr:
            corner_pr, corner_p, corner_r, corner_t = p * r, p, r, t
        precisions.append(p)
        recalls.append(r)
        auc += (recalls[-1] - recalls[-2]) * precisions[-2]
    return {"auc": auc, "precision": corner_p, "recall": corner_r, "threshold": corner_t}


def assert_same_result(got, want):
    for key in ("auc", "precision", "recall", "threshold"):
        assert isinstance(got[key], float), key
        # Bit-exact: same thresholds, same counts, same scalar arithmetic order.
        assert got[key] == float(want[key]), (key, got[key], want[key])


def tricky_probs(rng, shape):
    """Random maps that hit the threshold boundaries exactly, plus 8-bit levels and outliers."""
    n = int(np.prod(shape))
    pools = [
        rng.uniform(0.0, 1.0, n),
        np.array([(100 - i) / 100 for i in rng.integers(0, 101, n)]),  # exactly on thresholds
        rng.integers(0, 256, n) / 255.0,  # PNG levels
        rng.choice([0.0, 1.0, -0.2, 1.3, 0.07, 0.93, 0.29, 0.57], n),
    ]
    which = rng.integers(0, len(pools), n)
    flat = np.choose(which, pools)
    return flat.reshape(shape)


# ---------------------------------------------------------------------------------------------
# confusion_matrix / iou_from_confusion


def test_confusion_matrix_jit_matches_loop_with_ignore_and_mask():
    rng = np.random.default_rng(0)
    n = 4
    labels = rng.integers(0, n, (4, 5, 6)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.2] = 255
    preds = rng.integers(0, n, (4, 5, 6)).astype(np.int32)
    mask = np.array([True, False, True, True])
    cm = jax.jit(confusion_matrix, static_argnames=("num_classes", "ignore_label"))

    got = np.asarray(cm(labels, preds, num_classes=n, ignore_label=255, mask=mask))
    want = confusion_loop(labels, preds, n, 255, mask)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    # Masked example 1 must matter for the test to mean anything.
    assert not np.array_equal(want, confusion_loop(labels, preds, n, 255, None))

    got_nomask = np.asarray(cm(labels, preds, num_classes=n))
    np.testing.assert_array_equal(got_nomask, confusion_loop(labels, preds, n, 255, None))


def test_confusion_matrix_drops_out_of_range_and_ignore_none():
    labels = np.array([[[0, 1, 7, -1], [2, 2, 1, 0]]], np.int32)
    preds = np.array([[[0, 0, 1, 1], [2, 5, 1, 1]]], np.int32)
    got = np.asarray(confusion_matrix(labels, preds, 3, ignore_label=None))
    np.testing.assert_array_equal(got, confusion_loop(labels, preds, 3, None))
    assert got.sum() == 5


def test_confusion_matrix_in_range_ignore_label():
    labels = np.array([[[0, 1, 2], [2, 1, 0]]], np.int32)
    preds = np.array([[[0, 2, 2], [1, 1, 0]]], np.int32)
    got = np.asarray(confusion_matrix(labels, preds, 3, ignore_label=2))
    np.testing.assert_array_equal(got, confusion_loop(labels, preds, 3, 2))
    assert got[2].sum() == 0 and got.sum() == 4


def test_confusion_matrix_sharded_batch_explicit_mesh_and_shard_map():
    rng = np.random.default_rng(1)
    n = 3
    labels = rng.integers(0, n, (8, 3, 4)).astype(np.int32)
    labels[0, 0, :2] = 255
    preds = rng.integers(0, n, (8, 3, 4)).astype(np.int32)
    mask = np.array([True] * 6 + [False] * 2)
    want = confusion_loop(labels, preds, n, 255, mask)

    mesh = jax.make_mesh((4,), ("data",))  # Explicit axes: a flat bincount would fail here.
    with jax.set_mesh(mesh):
        put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
        got = jax.jit(lambda lab, pr, m: confusion_matrix(lab, pr, n, mask=m))(
            put(labels), put(preds), put(mask)
        )
        np.testing.assert_array_equal(np.asarray(got), want)

    def per_device(lab, pr, m):
        return jax.lax.psum(confusion_matrix(lab, pr, n, mask=m), "data")

    smap = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"),) * 3, out_specs=P()))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
    np.testing.assert_array_equal(np.asarray(smap(put(labels), put(preds), put(mask))), want)


def test_confusion_matrix_bad_input():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 4), jnp.int32), 3)
    with pytest.raises(ValueError, match="mask"):
        confusion_matrix(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3), jnp.int32), 3, mask=[1])
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3), jnp.int32), 0)


def test_iou_from_confusion_hand_computed_3x3():
    # Rows = ground truth, cols = prediction. Class 2 is absent from gt and predictions.
    conf = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]], np.int64)
    r = iou_from_confusion(conf)
    # Class 0: tp 5, gt 6, pred 7 -> union 8. Class 1: tp 3, gt 5, pred 4 -> union 6.
    assert r["iou"][0] == pytest.approx(5 / 8)
    assert r["iou"][1] == pytest.approx(3 / 6)
    assert math.isnan(r["iou"][2])
    assert r["miou"] == pytest.approx((5 / 8 + 1 / 2) / 2)
    assert r["pixel_accuracy"] == pytest.approx(8 / 11)
    assert r["precision"][:2] == pytest.approx([5 / 7, 3 / 4])
    assert r["recall"][:2] == pytest.approx([5 / 6, 3 / 5])
    assert math.isnan(r["precision"][2]) and math.isnan(r["recall"][2])
    assert r["num_pixels"] == 11
    assert all(type(v) is float for v in r["iou"] + r["precision"] + r["recall"])
    dumped = json.loads(json.dumps(to_jsonable(r), allow_nan=False))
    assert dumped["iou"][2] is None and dumped["miou"] == pytest.approx(0.5625)


def test_iou_from_confusion_predicted_only_class_counts_as_zero():
    # Class 1 never in gt but predicted once: IoU 0 (included in mIoU), recall undefined.
    conf = np.array([[3, 1], [0, 0]])
    r = iou_from_confusion(conf)
    assert r["iou"] == pytest.approx([3 / 4, 0.0])
    assert r["miou"] == pytest.approx(3 / 8)
    assert r["precision"] == pytest.approx([1.0, 0.0])
    assert math.isnan(r["recall"][1])
    empty = iou_from_confusion(np.zeros((2, 2), np.int64))
    assert math.isnan(empty["miou"]) and math.isnan(empty["pixel_accuracy"])
    with pytest.raises(ValueError, match="conf"):
        iou_from_confusion(np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------
# binary_approx_auc


def test_thresholds_bit_exact_with_official_loop():
    assert THRESHOLDS_DESC.dtype == np.float64 and THRESHOLDS_DESC.shape == (101,)
    for i in range(101):
        assert THRESHOLDS_DESC[i] == (100 - i) / 100
    # The naive running form differs, which is why the thresholds are derived by division.
    assert any(1.0 - 0.01 * i != (100 - i) / 100 for i in range(101))


@pytest.mark.parametrize("seed", range(6))
def test_binary_approx_auc_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 11)
    pred = tricky_probs(rng, shape)
    target = rng.random(shape) < [0.05, 0.3, 0.6][seed % 3]
    if seed == 5:
        pred[0, :3] = np.nan  # nan >= t is False in the official loop
    assert_same_result(binary_approx_auc(pred, target), official_auc_loop(pred, target))
    # Integer 0/1 targets and float32 predictions (compared in float64 like the official PNG read).
    pred32 = pred.astype(np.float32)
    assert_same_result(
        binary_approx_auc(pred32, target.astype(np.uint8)), official_auc_loop(pred32, target)
    )


def test_binary_approx_auc_hand_cases():
    target = np.array([[1, 0], [1, 0]], np.uint8)

    perfect = binary_approx_auc(target.astype(float), target)
    assert perfect == {"auc": 1.0, "precision": 1.0, "recall": 1.0, "threshold": 1.0}

    no_pos = binary_approx_auc(np.array([[0.9, 0.2], [0.4, 1.0]]), np.zeros((2, 2)))
    assert no_pos == {"auc": 0.0, "precision": 0.0, "recall": 0.0, "threshold": 0.0}

    # All-zero prediction: positive only at t = 0.00 where P = 1/4, R = 1; the recall jump is
    # weighted by the previous precision, which is 0 (nothing predicted), so auc = 0.
    zero = binary_approx_auc(np.zeros(4), np.array([1, 0, 0, 0]))
    assert zero == {"auc": 0.0, "precision": 0.25, "recall": 1.0, "threshold": 0.0}

    # pred [0.9, 0.6, 0.3, 0.1], target [1, 0, 1, 0]:
    # t=0.90: P=1, R=.5 (prev P=0 -> +0); t=0.60: P=.5, R=.5; t=0.30: P=2/3, R=1 (+.5*.5);
    # t=0.10: P=.5, R=1. auc = 0.25, corner (2/3, 1) at t = 0.3.
    r = binary_approx_auc(np.array([0.9, 0.6, 0.3, 0.1]), np.array([1, 0, 1, 0]))
    assert r["auc"] == pytest.approx(0.25)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == 1.0 and r["threshold"] == 0.3


def test_binary_approx_auc_bad_input():
    with pytest.raises(ValueError, match="shape"):
        binary_approx_auc(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        binary_approx_auc(np.zeros(3), np.array([0, 2, 1]))


# ---------------------------------------------------------------------------------------------
# PixelAPAccumulator


def softmax_probs(rng, shape_bhwk):
    logits = rng.normal(0.0, 3.0, shape_bhwk).astype(np.float32)
    logits[..., 0] += 2.0
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)
    probs[0, 0, 0] = [1.0, 0.0, 0.0]  # saturated pixel hits level 255 / threshold 1.00
    return probs.astype(np.float32)


def png_round_trip(p):
    """What the official script reads back: truncated 8-bit level / 255, in float64."""
    return np.floor(np.clip(p, 0, 1).astype(np.float32) * np.float32(255)) / 255.0


def expected_means(images, num_classes, transform, drop_ignore=False):
    sums = np.zeros((num_classes, 4))
    keys = ("auc", "precision", "recall", "threshold")
    for probs_hwk, labels_hw in images:
        keep = labels_hw != 255 if drop_ignore else np.ones(labels_hw.shape, bool)
        for k in range(num_classes):
            ref = official_auc_loop(transform(probs_hwk[..., k])[keep], (labels_hw == k)[keep])
            sums[k] += [ref[m] for m in keys]
    means = sums / len(images)
    return {k: dict(zip(keys, means[k], strict=True)) for k in range(num_classes)}


@pytest.mark.parametrize(
    "quantize,drop_ignore", [(True, False), (False, False), (True, True)], ids=str
)
def test_pixel_ap_accumulator_mean_over_images(quantize, drop_ignore):
    rng = np.random.default_rng(7)
    k_cls, names = 3, ["background", "l0", "r0"]
    probs_a = softmax_probs(rng, (3, 6, 7, k_cls))
    labels_a = rng.integers(0, k_cls, (3, 6, 7))
    labels_a[:, :1, :3] = 255
    mask_a = np.array([True, True, False])
    probs_a[2] = np.nan  # padding example: must be skipped, not quantised
    probs_b = softmax_probs(rng, (1, 6, 7, k_cls))
    labels_b = rng.integers(0, k_cls, (1, 6, 7))

    acc = PixelAPAccumulator(k_cls, names, quantize=quantize, exclude_ignore=drop_ignore)
    acc.update(probs_a, labels_a, mask_a)
    acc.update(probs_b, labels_b)
    res = acc.result()

    images = [(probs_a[0], labels_a[0]), (probs_a[1], labels_a[1]), (probs_b[0], labels_b[0])]
    transform = png_round_trip if quantize else (lambda p: p)
    want = expected_means(images, k_cls, transform, drop_ignore)
    assert res["num_images"] == 3
    for k, name in enumerate(names):
        for m in ("auc", "precision", "recall", "threshold"):
            assert res["per_class"][name][m] == pytest.approx(want[k][m], rel=1e-12, abs=1e-15)
    aucs = [want[k]["auc"] for k in range(k_cls)]
    assert res["map"] == pytest.approx((aucs[1] + aucs[2]) / 2, rel=1e-12)
    assert res["map_all"] == pytest.approx(sum(aucs) / 3, rel=1e-12)
    json.dumps(res, allow_nan=False)


def test_quantize_rounding_modes_and_accumulator():
    p = np.array([0.0, 0.5, 0.999, 0.99999, 1.0, 1.5, -0.5], np.float32)
    np.testing.assert_array_equal(quantize_probabilities(p), [0, 127, 254, 254, 255, 255, 0])
    np.testing.assert_array_equal(
        quantize_probabilities(p, "round"), [0, 128, 255, 255, 255, 255, 0]
    )
    with pytest.raises(ValueError, match="rounding"):
        quantize_probabilities(p, "ceil")
    with pytest.raises(ValueError, match="nan"):
        quantize_probabilities(np.array([np.nan]))

    # Confident lane pixels just below 1.0: under truncation nothing passes t=1.00, so the first
    # recall jump is weighted by precision 0; rounding lifts them to level 255.
    probs = np.zeros((1, 2, 2, 2), np.float32)
    probs[0, :, :, 1] = [[0.9995, 0.9995], [0.2, 0.0]]
    probs[..., 0] = 1.0 - probs[..., 1]
    labels = np.array([[[1, 1], [0, 0]]])
    results = {}
    for mode in ("truncate", "round"):
        acc = PixelAPAccumulator(2, ["bg", "lane"], rounding=mode)
        acc.update(probs, labels)
        results[mode] = acc.result()["per_class"]["lane"]["auc"]
        levels = (
            np.floor(probs[0, ..., 1] * 255)
            if mode == "truncate"
            else np.rint(probs[0, ..., 1] * 255)
        )
        assert results[mode] == official_auc_loop(levels / 255.0, labels[0] == 1)["auc"]
    assert results == {"truncate": 0.0, "round": 1.0}


def test_pixel_ap_accumulator_errors():
    with pytest.raises(ValueError, match="class_names"):
        PixelAPAccumulator(3, ["a", "b"])
    acc = PixelAPAccumulator(2, ["bg", "lane"])
    with pytest.raises(RuntimeError, match="no images"):
        acc.result()
    with pytest.raises(ValueError, match="probs_bhwk"):
        acc.update(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2), int))
    with pytest.raises(ValueError, match="outside"):
        acc.update(np.zeros((1, 2, 2, 2)), np.array([[[0, 1], [2, 0]]]))


# ---------------------------------------------------------------------------------------------
# PNG writer (and the official read-back path)


def test_write_llamas_probability_pngs_layout_and_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    probs = softmax_probs(rng, (1, 5, 6, 3))[0]
    labels = rng.integers(0, 3, (5, 6))
    key = "images-2014-12-22-13-22-35_mapping_280S_2nd_lane/1419283521_0744236000"
    paths = write_llamas_probability_pngs(tmp_path, key, probs)

    rec_dir = tmp_path / "images-2014-12-22-13-22-35_mapping_280S_2nd_lane"
    assert sorted(p.name for p in rec_dir.iterdir()) == [
        f"1419283521_0744236000.json_{k}.png" for k in range(3)
    ]
    assert paths == [str(rec_dir / f"1419283521_0744236000.json_{k}.png") for k in range(3)]

    acc = PixelAPAccumulator(3, ["bg", "l0", "r0"])
    acc.update(probs[None], labels[None])
    for k in range(3):
        with Image.open(paths[k]) as im:
            assert im.mode == "L" and im.size == (6, 5)
            pil = np.asarray(im)
        read = cv2.imread(paths[k], cv2.IMREAD_GRAYSCALE)
        assert read.dtype == np.uint8 and read.shape == (5, 6)
        np.testing.assert_array_equal(read, pil)
        want_levels = np.floor(probs[..., k].astype(np.float32) * np.float32(255))
        np.testing.assert_array_equal(read, want_levels.astype(np.uint8))
        # The official evaluation of the written file equals the in-memory accumulator.
        official = official_auc_loop(read.astype(float) / 255, labels == k)
        assert acc.result()["per_class"][["bg", "l0", "r0"][k]]["auc"] == official["auc"]

    only1 = write_llamas_probability_pngs(tmp_path / "bin", key + ".json", probs, class_ids=[1])
    assert only1[0].endswith("1419283521_0744236000.json_1.png")
    for bad in ["no_slash", "a/b/c", "../x", "rec/"]:
        with pytest.raises(ValueError, match="key"):
            write_llamas_probability_pngs(tmp_path, bad, probs)


# ---------------------------------------------------------------------------------------------
# report


def test_markdown_table_and_write_report(tmp_path):
    rows = [
        {"class": "bg", "iou": 0.98765, "n": 3},
        {"class": "l|0", "iou": float("nan"), "n": 0},
    ]
    table = markdown_table(rows, ["class", "iou", "n"], float_fmt="{:.2f}")
    assert table == ("| class | iou | n |\n|---|---|---|\n| bg | 0.99 | 3 |\n| l\\|0 | n/a | 0 |\n")
    with pytest.raises(ValueError, match="row 0 lacks"):
        markdown_table([{"class": "bg"}], ["class", "iou"])

    results = {"miou": float("nan"), "iou": np.array([0.5, np.nan]), "steps": np.int64(7)}
    write_report(tmp_path / "out", "eval_val", results, {"Per class": table})
    loaded = json.loads((tmp_path / "out" / "eval_val.json").read_text())
    assert loaded == {"miou": None, "iou": [0.5, None], "steps": 7}
    md = (tmp_path / "out" / "eval_val.md").read_text()
    assert md.startswith("# eval_val\n") and "## Per class\n\n| class | iou | n |" in md
    with pytest.raises(ValueError, match="name"):
        write_report(tmp_path, "a/b", {}, {})
