"""Tests for intrakd_jax.evaluation.apolloscape (official/internal mIoU, submission) and tta."""

import io
import math
import zipfile

import cv2
import numpy as np
import pytest
from apolloscape_reference import NEW_LIST, ORIGIN_HASH
from PIL import Image

from data_pipelines.formats import apolloscape as classes
from intrakd_jax.evaluation import apolloscape as ap
from intrakd_jax.evaluation import tta

EVAL_IDS = {0, 200, 204, 209, 201, 203, 217, 210, 214, 220, 221, 222, 224, 225, 226, 205, 227, 250}


def test_class_table():
    assert len(classes.LABELS) == 38
    assert [lb.id for lb in classes.LABELS] == NEW_LIST
    assert [b * 5 + g * 3 + r for r, g, b in (lb.color for lb in classes.LABELS)] == ORIGIN_HASH
    assert set(classes.EVAL_IDS) == EVAL_IDS
    assert classes.INTRAKD_TRAINID_TO_ID.tolist() == NEW_LIST[:37]
    assert classes.ID_TO_INTRAKD_TRAINID[249] == classes.ID_TO_INTRAKD_TRAINID[255] == 36
    assert classes.ID_TO_TRAINID[249] == classes.ID_TO_TRAINID[255] == 255
    assert classes.ID_TO_TRAINID[213] == 3
    assert classes.ID_TO_INTRAKD_TRAINID[7] == 255  # 7: not an id
    assert len(classes.INTRAKD_CLASS_NAMES) == 37
    assert classes.INTRAKD_TRAINID_COLORS.shape == (37, 3)


# ---------------------------------------------------------------------------------------------
# Official metric.

# 4 x 4 hand case (200 s_w_d, 204 s_y_d: evaluated; 213 ds_w_dn and 255 ignored: ignoreInEval).
GT = np.array(
    [[200, 200, 200, 0], [200, 0, 0, 0], [255, 255, 213, 0], [204, 204, 0, 0]], dtype=np.uint8
)
PRED = np.array(
    [[200, 200, 0, 0], [204, 200, 0, 200], [200, 204, 0, 213], [204, 0, 0, 0]], dtype=np.uint8
)
# s_w_d: TP 2 (row 0); FN 2 (gt 200 predicted 0 and 204); FP 2 (row 1, gt void), the 200 on
#   gt 255 (row 2) is not a FP -> IoU 2/6.
# s_y_d: TP 1, FN 1, FP 1 (row 1 col 0 on gt 200); the 204 on gt 255 is not a FP -> 1/3.
# void: gt 0 at 7 pixels, TP 4, FN 3 (two 200s, one 213); FP 2 (0 on gt 200 and on gt 204);
#   the 0 on gt 213 (ignored class) is not a FP -> 4/9.
# Everything else: no gt, no (counted) prediction -> nan; 213 is ignored -> nan although predicted.
# mIoU with void (1/3 + 1/3 + 4/9) / 3 = 10/27; without void 1/3.
# Counting FPs on ignored gt would give 2/7 and 1/4 instead.


def test_official_miou_hand_case():
    res = ap.official_miou_from_confusion(ap.confusion_over_ids(GT, PRED))
    assert res["iou"]["s_w_d"] == 2 / 6
    assert res["iou"]["s_y_d"] == 1 / 3
    assert res["iou"]["void"] == 4 / 9
    assert (res["tp"]["s_w_d"], res["fp"]["s_w_d"], res["fn"]["s_w_d"]) == (2, 2, 2)
    assert (res["tp"]["void"], res["fp"]["void"], res["fn"]["void"]) == (4, 2, 3)
    assert math.isnan(res["iou"]["ds_w_dn"]) and math.isnan(res["iou"]["ignored"])
    assert math.isnan(res["iou"]["b_w_g"])
    assert sum(not math.isnan(v) for v in res["iou"].values()) == 3
    assert res["miou"] == pytest.approx(10 / 27, abs=1e-15)
    assert res["miou_with_void"] == res["miou"]
    assert res["miou_without_void"] == pytest.approx(1 / 3, abs=1e-15)
    no_void = ap.official_miou_from_confusion(ap.confusion_over_ids(GT, PRED), include_void=False)
    assert no_void["miou"] == pytest.approx(1 / 3, abs=1e-15)
    # Categories: dividing = {200, 204, 209}: TP 4 (200-200 x2, 200-204, 204-204), FN 2,
    # FP 2 (200 predicted on void) -> 1/2; void category 4/9; the rest nan.
    assert res["category_iou"]["dividing"] == 0.5
    assert res["category_iou"]["void"] == 4 / 9
    assert math.isnan(res["category_iou"]["ignored"])
    assert res["category_miou"] == pytest.approx((0.5 + 4 / 9) / 2, abs=1e-15)
    assert res["num_pixels"] == 16


def test_unknown_prediction_ids_are_fn_only():
    gt = np.full((2, 2), 200, np.uint8)
    pred = np.array([[7, 200], [200, 255]], np.uint8)  # 7: no such id; 255: ignored id
    res = ap.official_miou_from_confusion(ap.confusion_over_ids(gt, pred))
    assert (res["tp"]["s_w_d"], res["fp"]["s_w_d"], res["fn"]["s_w_d"]) == (2, 0, 2)
    assert res["miou"] == 0.5  # void has no gt and no prediction: nan, skipped
    assert math.isnan(res["iou"]["void"])


def test_official_errors():
    with pytest.raises(ValueError, match="unknown ground-truth"):
        ap.confusion_over_ids(np.array([[7]], np.uint8), np.array([[0]], np.uint8))
    with pytest.raises(ValueError, match="shape"):
        ap.confusion_over_ids(GT, PRED[:3])
    with pytest.raises(ValueError, match="single-channel"):
        ap.confusion_over_ids(GT, np.stack([PRED] * 3, axis=-1))
    with pytest.raises(ValueError, match="256"):
        ap.confusion_over_ids(GT, PRED.astype(np.int32) + 100)
    with pytest.raises(RuntimeError):
        ap.OfficialMIoU().result()


def _palette_png(path, ids):
    img = Image.fromarray(ids, mode="P")
    palette = [0] * 768
    for lb in classes.LABELS:
        palette[3 * lb.id : 3 * lb.id + 3] = lb.color
    img.putpalette(palette)
    img.save(path)


def test_accumulator_and_files_equal_one_shot(tmp_path):
    acc = ap.OfficialMIoU()
    acc.update(GT[:2], PRED[:2])
    acc.update(GT[2:], PRED[2:])
    assert acc.num_images == 2
    res = acc.result()
    assert res["miou"] == pytest.approx(10 / 27, abs=1e-15)
    assert acc.result(include_void=False)["miou"] == pytest.approx(1 / 3, abs=1e-15)
    # Files: palette ground truth (index = id, palette = table colours) and gray prediction.
    gt_path, pred_path = tmp_path / "gt_bin.png", tmp_path / "pred.png"
    _palette_png(gt_path, GT)
    with Image.open(gt_path) as im:
        assert im.mode == "P"
    cv2.imwrite(str(pred_path), PRED)
    res_files = ap.evaluate_official([pred_path], [gt_path])
    assert res_files["miou"] == pytest.approx(10 / 27, abs=1e-15)
    assert res_files["num_images"] == 1
    cv2.imwrite(str(tmp_path / "small.png"), PRED[:2])
    with pytest.raises(ValueError, match="small.png"):
        ap.evaluate_official([tmp_path / "small.png"], [gt_path])


def test_internal_miou_hand_case():
    conf = np.zeros((37, 37), np.int64)
    conf[0, 0], conf[0, 2], conf[2, 0], conf[1, 1] = 3, 1, 2, 1
    # class 0: 3 / (4 + 5 - 3) = 0.5; class 1: 1; class 2: 0 / (2 + 1) = 0; the other 34: 0.
    res = ap.internal_miou_from_confusion(conf)
    assert res["iou"][:3] == [0.5, 1.0, 0.0]
    assert res["miou"] == pytest.approx(1.5 / 37, abs=1e-15)
    assert res["pixel_accuracy"] == 4 / 7
    with pytest.raises(ValueError, match="37"):
        ap.internal_miou_from_confusion(np.zeros((36, 36)))


# ---------------------------------------------------------------------------------------------
# Submission.


def test_submission_image_full_size_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 37, size=(505, 1692)).astype(np.uint8)
    pred[0, 0] = 36
    img = ap.submission_image(pred)
    assert img.shape == (2710, 3384) and img.dtype == np.uint8
    ids = np.array(NEW_LIST)[pred]
    # Nearest x2: each prediction pixel becomes a 2 x 2 block; rows < 1700 stay void.
    np.testing.assert_array_equal(img[1700:], np.repeat(np.repeat(ids, 2, axis=0), 2, axis=1))
    assert not img[:1700].any()
    assert img[1700, 0] == 249  # train id 36 (noise + ignored) -> 249

    zpath = tmp_path / "out" / "test.zip"
    with ap.SubmissionZipWriter(zpath) as zw:
        assert zw.add("/data/ColorImage_road05/171206_054227243_Camera_5.jpg", pred) == (
            "test/road05/171206_054227243_Camera_5.png"
        )
        zw.add("171206_054227243_Camera_6", pred[::-1])
        with pytest.raises(ValueError, match="duplicate"):
            zw.add("x/171206_054227243_Camera_6.jpg", pred)
    with zipfile.ZipFile(zpath) as zf:
        assert zf.namelist() == [
            "test/road05/171206_054227243_Camera_5.png",
            "test/road05/171206_054227243_Camera_6.png",
        ]
        back = Image.open(io.BytesIO(zf.read("test/road05/171206_054227243_Camera_5.png")))
        assert back.mode == "L" and back.size == (3384, 2710)
        np.testing.assert_array_equal(np.array(back), img)


def test_submission_nearest_resize_non_integer_ratio(tmp_path):
    # (2, 3) -> (6, 6) under cv2 INTER_NEAREST: src = floor(dst * src_size / dst_size), i.e.
    # rows [0,0,0,1,1,1] and columns [0,0,1,1,2,2]; pasted at row 4 of a (10, 6) canvas.
    pred = np.array([[1, 2, 3], [4, 5, 36]], np.uint8)
    img = ap.submission_image(pred, full_hw=(10, 6), crop_top=4)
    ids = np.array(NEW_LIST)[pred]
    expected = ids[np.ix_([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2])]
    np.testing.assert_array_equal(img[4:], expected)
    assert not img[:4].any()
    path = ap.write_submission_png(tmp_path / "a" / "x.png", pred, full_hw=(10, 6), crop_top=4)
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.array(im), img)
    with pytest.raises(ValueError, match=r"\[0, 37\)"):
        ap.submission_image(np.array([[37]], np.uint8))
    with pytest.raises(ValueError, match="integer"):
        ap.trainid_to_id(np.zeros((2, 2), np.float32))


def test_submission_scores_with_official_metric():
    # A perfect prediction pasted back scores IoU 1 on every class present.
    gt_small = np.zeros((4, 6), np.uint8)
    gt_small[1:, 2:4] = 1  # train id 1 -> 200
    gt_small[3, :] = 36  # -> 249 (noise, ignored)
    sub = ap.submission_image(gt_small, full_hw=(8, 6), crop_top=4)
    gt_ids = sub.copy()
    res = ap.official_miou_from_confusion(ap.confusion_over_ids(gt_ids, sub))
    assert res["iou"]["s_w_d"] == 1.0 and res["iou"]["void"] == 1.0
    assert res["miou"] == 1.0


# ---------------------------------------------------------------------------------------------
# TTA.


def test_official_crop_sizes():
    assert tta.official_crop_hw(tta.ERFNET_TEST_SIZE) == (480, 1440)
    assert tta.official_crop_hw(tta.PSPNET_TEST_SIZE) == (470, 1410)
    for h, w in tta.OFFICIAL_SCALES_HW:  # every official crop covers every official scale
        assert 480 <= h <= 960 and 1440 <= w <= 2880


def test_tta_corner_order_and_overlap_average():
    # Scale (6, 10), crops (4, 6): TL rows 0-3 cols 0-5, TR rows 0-3 cols 4-9, BL rows 2-5
    # cols 0-5, BR rows 2-5 cols 4-9. predict_fn answers the crop's batch index everywhere,
    # so every pixel gets the mean index of the crops covering it.
    def predict_fn(batch):
        assert batch.shape == (4, 4, 6, 3)
        return np.broadcast_to(np.arange(4.0)[:, None, None, None], (4, 4, 6, 1))

    out = tta.tta_probs(predict_fn, np.zeros((6, 10, 3), np.uint8), [(6, 10)], (4, 6))
    assert out.shape == (6, 10, 1)
    o = out[..., 0]
    assert o[0, 0] == 0 and o[0, 9] == 1 and o[5, 0] == 2 and o[5, 9] == 3
    assert o[0, 4] == 0.5 and o[2, 0] == 1 and o[2, 4] == 1.5 and o[3, 5] == 1.5
    assert o[5, 4] == 2.5 and o[2, 9] == 2


def test_tta_identity_reassembles_image():
    rng = np.random.default_rng(1)
    image = rng.random((9, 14, 3)).astype(np.float32)
    out = tta.tta_probs(lambda b: b, image, [(9, 14)], (5, 8))
    np.testing.assert_allclose(out, image, rtol=0, atol=1e-6)


def test_tta_scale_average_and_first_scale_quirk():
    calls = []
    values = [1.0, 2.0, 3.0, 6.0]

    def predict_fn(batch):
        calls.append(batch.shape)
        return np.full(batch.shape[:3] + (2,), values[len(calls) - 1], np.float32)

    image = np.zeros((10, 20, 3), np.uint8)
    scales = [(10, 20), (12, 24), (8, 16), (14, 28)]
    out = tta.tta_probs(predict_fn, image, scales, (7, 14))
    assert calls == [(4, 7, 14, 3)] * 4
    assert out.shape == (10, 20, 2)
    np.testing.assert_allclose(out, (1 + 2 + 3 + 6) / 4, rtol=1e-6)
    # The released scripts leave scale 1 out of the sum but still divide by 4.
    calls.clear()
    out = tta.tta_probs(predict_fn, image, scales, (7, 14), drop_first_scale=True, out_hw=(5, 9))
    assert out.shape == (5, 9, 2)
    np.testing.assert_allclose(out, (2 + 3 + 6) / 4, rtol=1e-6)


def test_tta_crops_come_from_the_linearly_resized_image():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(10, 16, 3), dtype=np.uint8)
    seen = []

    def predict_fn(batch):
        seen.append(batch.copy())
        return np.zeros(batch.shape[:3] + (1,), np.float32)

    tta.tta_probs(predict_fn, image, [(10, 16), (15, 24)], (8, 12))
    # Scale 1 is the image itself: corners (0,0), (0,4), (2,0), (2,4).
    for k, (t, x) in enumerate([(0, 0), (0, 4), (2, 0), (2, 4)]):
        np.testing.assert_array_equal(seen[0][k], image[t : t + 8, x : x + 12])
    # Scale 2: uint8 cv2 INTER_LINEAR resize (the official loader's op), corners (0,0), (0,12),
    # (7,0), (7,12).
    scaled = cv2.resize(image, (24, 15), interpolation=cv2.INTER_LINEAR)
    for k, (t, x) in enumerate([(0, 0), (0, 12), (7, 0), (7, 12)]):
        np.testing.assert_array_equal(seen[1][k], scaled[t : t + 8, x : x + 12])


def test_tta_errors():
    image = np.zeros((10, 20, 3), np.uint8)
    ok = lambda b: np.zeros(b.shape[:3] + (2,), np.float32)
    with pytest.raises(ValueError, match="larger"):
        tta.tta_probs(ok, image, [(10, 20)], (11, 20))
    with pytest.raises(ValueError, match="cover"):
        tta.tta_probs(ok, image, [(10, 20)], (4, 20))
    with pytest.raises(ValueError, match="predict_fn"):
        tta.tta_probs(lambda b: np.zeros((4, 2, 2, 2)), image, [(10, 20)], (6, 12))
    with pytest.raises(ValueError, match="two scales"):
        tta.tta_probs(ok, image, [(10, 20)], (6, 12), drop_first_scale=True)
