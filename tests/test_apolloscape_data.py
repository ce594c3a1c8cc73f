"""ApolloScape reader, label decoding, synthetic generator, config and a smoke pipeline run.

The expected values are written out independently: the id -> IntRA-KD train id order is
IntRA-KD's `new_list` and the colour hashes its `origin_id` (DATASETS.md 3.3, 3.5), crop/scale
cases are computed by hand, and label references are decoded with PIL/OpenCV in the test.
"""

import io
import os
import re

import cv2
import numpy as np
import pytest
import tensorflow as tf
from apolloscape_reference import NEW_LIST, ORIGIN_HASH
from PIL import Image

import data_pipelines
from configs import apolloscape as apolloscape_config
from data_pipelines import apolloscape as ap
from data_pipelines import augment
from data_pipelines.errors import DataConfigError, DatasetLayoutError, LabelFormatError
from data_pipelines.formats import apolloscape as apollo
from data_pipelines.formats import lists
from data_pipelines.synthetic import apolloscape as synth
from intrakd_jax.evaluation import apolloscape as ap_eval

ID_TO_TRAIN = {i: min(t, 36) for t, i in enumerate(NEW_LIST)}  # 249 and 255 both -> 36
SCALE = 0.05  # synthetic frames of 169 x 136
COUNTS = dict(num_train=6, num_valid=3, num_test=2)


def ref_trainids(ids):
    """Independent id -> train id map (unknown ids -> 255)."""
    lut = np.full(256, 255, np.uint8)
    for i, t in ID_TO_TRAIN.items():
        lut[i] = t
    return lut[np.asarray(ids)]


def palette_png(ids, palette_rgb=None) -> bytes:
    img = Image.fromarray(np.asarray(ids, np.uint8))
    pal = np.zeros((256, 3), np.uint8)
    for label in apollo.LABELS:
        pal[label.id] = label.color
    img.putpalette((pal if palette_rgb is None else palette_rgb).tobytes())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_bytes(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write(path, data=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


# ----------------------------------------------------------------------------------------------
# Class table.


def test_one_class_table_shared_with_evaluation():
    assert ap_eval.LABELS is apollo.LABELS
    assert [lb.id for lb in apollo.LABELS] == NEW_LIST
    assert [apollo.HASH_TO_ROW[h] for h in ORIGIN_HASH] == list(range(38))
    assert [apollo.HASH_TO_INTRAKD_TRAINID[h] for h in ORIGIN_HASH] == [
        min(t, 36) for t in range(38)
    ]
    assert (apollo.HASH_TO_INTRAKD_TRAINID != 255).sum() == 38  # white (ignored) is class 36
    assert apollo.ID_PALETTE[200].tolist() == [70, 130, 180] and not apollo.ID_PALETTE[7].any()
    assert ap_eval.FULL_HW == (2710, 3384) and ap_eval.CROP_TOP == 1700
    # Mirroring swaps thru-left/thru-right (21, 22) and left/right (24, 25) arrows only.
    swapped = {k: int(v) for k, v in enumerate(apollo.INTRAKD_HFLIP_LUT) if v != k}
    assert swapped == {21: 22, 22: 21, 24: 25, 25: 24}


# ----------------------------------------------------------------------------------------------
# Label decoding.


def all_ids_map():
    """(8, 40) ids: every table id in column blocks, plus unknown ids 7 and 9 in the last row."""
    ids = np.repeat(np.array(NEW_LIST + [0, 0], np.uint8)[None], 8, axis=0)
    ids[7, :2] = [7, 9]
    return ids


def test_palette_gray_and_rgb_decode_to_identical_class_maps(tmp_path):
    ids = all_ids_map()
    expected = ref_trainids(ids)
    assert expected[7, 0] == expected[7, 1] == 255 and expected[0, 36] == expected[0, 37] == 36
    rgb = np.zeros(ids.shape + (3,), np.uint8)
    for label in apollo.LABELS:
        rgb[ids == label.id] = label.color
    pal = palette_png(ids)
    encodings = {"palette": pal, "gray": png_bytes(ids), "rgb": png_bytes(rgb)}
    assert {k: apollo.png_color_type(v) for k, v in encodings.items()} == {
        "palette": 3,
        "gray": 0,
        "rgb": 2,
    }
    rgb_expected = expected.copy()
    rgb_expected[7, :2] = 0  # unknown ids have no colour: the RGB file paints them black (void)
    for name, data in encodings.items():
        want = rgb_expected if name == "rgb" else expected
        np.testing.assert_array_equal(apollo.decode_label_bytes(data), want, err_msg=name)
        got_tf = ap.decode_label_tensor(tf.constant(data)).numpy()
        np.testing.assert_array_equal(got_tf[..., 0], want, err_msg=f"{name} via tf")
    # The palette file read by colour (OpenCV / TF expand the palette) gives the same train ids.
    path = write(tmp_path / "x_bin.png", pal)
    bgr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert bgr.shape == ids.shape + (3,)
    from_cv2 = apollo.rgb_to_intrakd_trainid(np.ascontiguousarray(bgr[..., ::-1]))
    from_tf = apollo.rgb_to_intrakd_trainid(tf.io.decode_png(pal, channels=3).numpy())
    table_px = ids != 7
    table_px &= ids != 9
    np.testing.assert_array_equal(from_cv2[table_px], expected[table_px])
    np.testing.assert_array_equal(from_tf, from_cv2)
    # IntRA-KD's own lookup: hash of the colour into origin_id, index -> train id.
    c = bgr.astype(np.int64)
    h = c[..., 0] * 5 + c[..., 1] * 3 + c[..., 2]
    ik = np.vectorize(lambda v: min(ORIGIN_HASH.index(v), 36) if v in ORIGIN_HASH else 255)(h)
    np.testing.assert_array_equal(ik[table_px], expected[table_px])


def test_hash_collisions_and_unknown_colours_are_255_and_reported(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, :3] = (255, 0, 0)  # ds_y_dn, hash 255
    rgb[1, :3] = (0, 85, 0)  # hash 3 * 85 = 255 as well, but no table colour
    rgb[2, :2] = (1, 2, 3)
    got = apollo.decode_label_bytes(png_bytes(rgb))
    assert got[0, :3].tolist() == [4, 4, 4]
    assert got[1, :3].tolist() == [255] * 3 and got[2, :2].tolist() == [255, 255]
    assert (got[3] == 0).all()
    hw, messages = apollo.label_problems(write(tmp_path / "c.png", png_bytes(rgb)))
    assert hw == (4, 6)
    assert "colour (0, 85, 0) is not a table colour at 3 pixels" in messages
    assert "colour (1, 2, 3) is not a table colour at 2 pixels" in messages
    assert len(messages) == 2


def test_check_label_reports_unknown_ids_and_bad_files(tmp_path):
    ids = all_ids_map()
    hw, messages = apollo.label_problems(write(tmp_path / "a_bin.png", palette_png(ids)))
    assert hw == (8, 40)
    assert len(messages) == 1 and messages[0].startswith("ids {7, 9} are not ApolloScape class ids")
    assert "at 2 pixels" in messages[0]
    ids[7, :2] = 0
    assert apollo.label_problems(write(tmp_path / "b_bin.png", palette_png(ids)))[1] == []
    rgba = write(tmp_path / "rgba.png", png_bytes(np.zeros((2, 2, 4))))
    with pytest.raises(LabelFormatError, match=re.escape(rgba) + ".*mode 'RGBA'"):
        apollo.read_label_trainids(rgba)
    junk = write(tmp_path / "junk_bin.png", b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(LabelFormatError, match=re.escape(junk)):
        apollo.label_problems(junk)


# ----------------------------------------------------------------------------------------------
# Lists.


def make_tree(root, road="road02", record="Record001", cams=("Camera 5",), n=2):
    """Images/labels on disk with camera folders spelled as given; returns [(img, label)]."""
    out = []
    for cam in cams:
        for i in range(n):
            stem = f"170927_06381{i}892_Camera_{cam[-1]}"
            img = write(root / f"ColorImage_{road}/ColorImage/{record}/{cam}/{stem}.jpg")
            lab = write(root / f"Labels_{road}/Label/{record}/{cam}/{stem}_bin.png")
            out.append((img, lab))
    return out


def test_parse_list_rewrite_camera_spelling_spaces_and_flags(tmp_path):
    root = tmp_path / "root"
    files = make_tree(root, cams=("Camera 5", "Camera_6"))
    ik = "/home/houyuenan/ApolloScapes/"
    lines = [
        # IntRA-KD style: absolute foreign paths, Camera_5 although the disk says "Camera 5".
        f"{ik}ColorImage_road02/ColorImage/Record001/Camera_5/170927_063810892_Camera_5.jpg "
        f"{ik}Labels_road02/Label/Record001/Camera_5/170927_063810892_Camera_5_bin.png 1 1 1 1",
        "",
        # Relative paths with the on-disk space, two fields.
        "ColorImage_road02/ColorImage/Record001/Camera 5/170927_063811892_Camera_5.jpg  "
        "Labels_road02/Label/Record001/Camera 5/170927_063811892_Camera_5_bin.png",
        # "Camera 6" in the list, "Camera_6" on disk.
        "ColorImage_road02/ColorImage/Record001/Camera 6/170927_063810892_Camera_6.jpg "
        "Labels_road02/Label/Record001/Camera 6/170927_063810892_Camera_6_bin.png 0 1 1 0",
    ]
    list_path = write(root / "list/train.txt", ("\n".join(lines) + "\n").encode())
    entries, issues = apollo.parse_list(list_path, root, root_rewrite=[(ik, "")])
    assert issues == []
    assert [(e.image_path, e.label_path) for e in entries] == [files[0], files[1], files[2]]
    assert [e.line for e in entries] == [1, 3, 4]
    assert (
        entries[0].key
        == "ColorImage_road02/ColorImage/Record001/Camera 5/170927_063810892_Camera_5"
    )
    assert entries[2].key.startswith("ColorImage_road02/ColorImage/Record001/Camera_6/")
    assert ap_eval.submission_png_name(entries[0].key) == "170927_063810892_Camera_5.png"
    # Rewriting to an absolute prefix works the same.
    entries2, _ = apollo.parse_list(list_path, root, root_rewrite=[(ik, str(root) + "/")])
    assert entries2[0] == entries[0]
    # Without the rewrite the foreign paths are missing files with a hint.
    _, issues = apollo.parse_list(list_path, root)
    assert [(i.kind, i.line) for i in issues] == [("missing_file", 1), ("missing_file", 1)]
    assert "root_rewrite" in issues[0].message and f"{list_path}:1" in issues[0].message


def test_parse_list_reports_every_malformed_line_with_its_number(tmp_path):
    root = tmp_path / "root"
    (img, lab), (img2, _) = make_tree(root)
    rel = lambda p: os.path.relpath(p, root)
    lines = [
        f"{rel(img)} {rel(lab)}",  # 1 ok
        f"{rel(img)}",  # 2 no label
        f"{rel(img2)} {rel(lab)} 1 1",  # 3 two flags
        f"{rel(img2)} {rel(lab)[:-4]}.txt",  # 4 label not png
        "just words here",  # 5 no image
        f"{rel(img)} {rel(lab)} 1 1 1 1",  # 6 duplicate of line 1
        f"{rel(img)[:-5]}9.jpg {rel(lab)}",  # 7 missing image
    ]
    list_path = write(root / "list/val.txt", "\n".join(lines).encode())
    entries, issues = apollo.parse_list(list_path, root)
    assert [e.line for e in entries] == [1]
    want = [
        ("malformed_line", 2),
        ("malformed_line", 3),
        ("malformed_line", 4),
        ("malformed_line", 5),
        ("malformed_line", 6),
        ("missing_file", 7),
    ]
    assert [(i.kind, i.line) for i in issues] == want
    assert all(i.path == list_path for i in issues[:5])
    assert "duplicate" in issues[4].message and "line 1" in issues[4].message
    assert issues[5].path.endswith("9.jpg")
    # Test lists: image only, or with a dummy label / flags, all fine.
    test_list = write(root / "list/test.txt", f"{rel(img)}\n{rel(img2)} dummy 1 1 1 1\n".encode())
    test_entries, test_issues = apollo.parse_list(test_list, root, labelled=False)
    assert test_issues == [] and [e.label_path for e in test_entries] == [None, None]
    # The reader stops at the first problem naming file:line, or skips with skip_corrupt.
    cfg = reader_config(root, split_source="lists", eval_split="valid")
    ds = data_pipelines.get_dataset(cfg)
    with pytest.raises(DatasetLayoutError, match=re.escape(f"{list_path}:2")):
        ds.keys("valid")
    cfg.skip_corrupt = True
    assert len(data_pipelines.get_dataset(cfg).examples("valid")) == 1
    problems = data_pipelines.get_dataset(cfg).list_problems("valid")
    assert all(isinstance(p, lists.Problem) for p in problems)
    assert [(p.kind, p.line) for p in problems] == want


@pytest.mark.parametrize(
    "value",
    [("a",), ("a", "b", "c"), (("a", 1),), (("", "x"),), "abc"],
)
def test_root_rewrite_validation(value):
    with pytest.raises(DataConfigError, match="root_rewrite"):
        lists.normalize_root_rewrite(value)


def test_root_rewrite_forms():
    assert lists.normalize_root_rewrite(None) == ()
    assert lists.normalize_root_rewrite(("/a/", "")) == (("/a/", ""),)
    assert lists.normalize_root_rewrite([("/a/", "b/"), ("/c/", "/d/")]) == (
        ("/a/", "b/"),
        ("/c/", "/d/"),
    )


# ----------------------------------------------------------------------------------------------
# Crop, scale, rotation: a hand-computed case through the shared pipeline.


def reader_config(root, **overrides):
    cfg = apolloscape_config.get_config("smoke").data
    cfg.data_dir = str(root)
    cfg.synthetic.enabled = False
    cfg.num_parallel_calls = 2
    cfg.prefetch = 1
    cfg.update_from_flattened_dict(overrides)
    return cfg


def test_crop_scale_and_eval_resize_match_hand_computation(tmp_path):
    # Source 40 x 60, crop_top 10 -> 30 x 60; scale 0.5 of the source -> 15 x 30; crop 12 x 24.
    h, w, crop = 40, 60, 10
    rows = np.arange(h)[:, None] * np.ones((1, w), int)
    cols = np.ones((h, 1), int) * np.arange(w)[None]
    image = np.stack([4 * cols, 4 * np.maximum(rows - crop, 0), np.zeros_like(rows)], -1)
    ids = np.array(NEW_LIST, np.uint8)[np.clip(rows - crop, 0, 36)]  # train id = cropped row
    root = tmp_path / "hand"
    img = write(root / "img/a.png", png_bytes(image))
    lab = write(root / "lab/a_bin.png", palette_png(ids))
    write(root / "list/train.txt", b"img/a.png lab/a_bin.png\n")
    cfg = reader_config(
        root,
        split_source="lists",
        crop_top=crop,
        image_hw=(12, 24),
        mean_rgb=(0.0, 0.0, 0.0),
        **{
            "augment.scale_range": (0.5, 0.5),
            "augment.scale_of": "source",
            "augment.rotation_deg": 10.0,
            "augment.rotation_prob": 0.0,
        },
    )
    ds = data_pipelines.get_dataset(cfg)
    assert ds.source_image_hw("train") == (h, w) and ds.image_path("train", "img/a") == img
    assert ds.example("train", "img/a").label_path == lab
    batch = next(iter(ds.train_batches(2, seed=1)))
    for image_b, label_b in zip(batch["image"], batch["label"], strict=True):
        # Exact 2:1 bilinear (half-pixel centres) samples between source pixels 2j and 2j+1;
        # nearest takes pixel 2j+1. The random crop offset (oy, ox) is read off the corner.
        ox = (image_b[0, 0, 0] - 2.0) / 8.0
        oy = (image_b[0, 0, 1] - 2.0) / 8.0
        assert ox == int(ox) and oy == int(oy) and 0 <= ox <= 6 and 0 <= oy <= 3
        y, x = np.arange(12)[:, None] + int(oy), np.arange(24)[None] + int(ox)
        np.testing.assert_array_equal(image_b[..., 0], np.broadcast_to(8 * x + 2.0, (12, 24)))
        np.testing.assert_array_equal(image_b[..., 1], np.broadcast_to(8 * y + 2.0, (12, 24)))
        np.testing.assert_array_equal(label_b, np.broadcast_to(2 * y + 1, (12, 24)))
    # Eval: the 30 x 60 crop is resized to 12 x 24; nearest row y -> floor((y + 0.5) * 30 / 12).
    cfg.eval_split = "train"
    (eb,) = list(data_pipelines.get_dataset(cfg).eval_batches("train", 1))
    want_rows = np.floor((np.arange(12) + 0.5) * 2.5).astype(int)
    np.testing.assert_array_equal(eb["label"][0], np.broadcast_to(want_rows[:, None], (12, 24)))
    assert eb["mask"].tolist() == [True] and eb["index"].tolist() == [0]


def test_rotation_probability_zero_one_and_half():
    image = tf.random.stateless_uniform([20, 30, 3], seed=[1, 2])
    label = tf.cast(tf.random.stateless_uniform([20, 30, 1], [3, 4], 0, 30, tf.int32), tf.uint8)

    def run(prob, seed):
        spec = augment.AugmentSpec(enabled=True, rotation_deg=10.0, rotation_prob=prob)
        return augment.augment_pair(image, label, (20, 30), tf.constant([seed, 0], tf.int64), spec)

    for seed in range(3):
        im0, lab0 = run(0.0, seed)
        np.testing.assert_array_equal(im0.numpy(), image.numpy())
        np.testing.assert_array_equal(lab0.numpy(), label.numpy())
        im1, _ = run(1.0, seed)
        assert not np.array_equal(im1.numpy(), image.numpy())  # bilinear: any angle shows
    rotated = [not np.array_equal(run(0.5, s)[0].numpy(), image.numpy()) for s in range(40)]
    assert 8 <= sum(rotated) <= 32
    with pytest.raises(DataConfigError, match="rotation_prob"):
        augment.AugmentSpec.from_config({"rotation_prob": 1.5})
    with pytest.raises(DataConfigError, match="scale_of"):
        augment.AugmentSpec.from_config({"scale_of": "input"})


# ----------------------------------------------------------------------------------------------
# Synthetic generator round trip.


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("apollo_small")
    synth.generate_apolloscape(root, seed=2, scale=SCALE, **COUNTS)
    return root


def files_under(root, top):
    out = []
    for dirpath, _, names in os.walk(os.path.join(root, top)):
        out += [os.path.join(dirpath, n) for n in names]
    return sorted(out)


IMAGE_RE = re.compile(
    r"^ColorImage_road0(?P<road>[2-5])/ColorImage/Record0\d\d/Camera (?P<cam>[56])/"
    r"\d{6}_\d{9}_Camera_(?P=cam)\.jpg$"
)


def test_generator_layout_labels_and_lists(small):
    geo = synth.scaled_geometry(SCALE)
    w, h = geo["image_wh"]
    assert (w, h) == (169, 136) and geo["crop_top"] == 85 and geo["hood_top"] == 116
    images = [os.path.relpath(p, small) for p in files_under(small, "")]
    images = [p for p in images if p.endswith(".jpg")]
    assert len(images) == sum(COUNTS.values()) and all(IMAGE_RE.match(p) for p in images), images
    assert not os.path.exists(small / "Labels_road05")
    seen = set()
    palette = None
    for rel in images:
        if rel.startswith("ColorImage_road05"):
            continue
        lab = small / rel.replace("ColorImage_", "Labels_", 1).replace(
            "/ColorImage/", "/Label/"
        ).replace(".jpg", "_bin.png")
        with Image.open(lab) as im:
            assert im.mode == "P" and im.size == (w, h)
            ids = np.array(im)
            palette = np.array(im.getpalette()[: 256 * 3], np.uint8).reshape(256, 3)
        assert cv2.imread(str(small / rel)).shape == (h, w, 3)
        assert set(np.unique(ids).tolist()) <= set(NEW_LIST)
        assert (ids[: geo["crop_top"]] == 0).all()  # void above the crop line
        assert (ids[geo["hood_top"] :, geo["hood_left"] :] == 255).all()  # ego hood
        seen |= set(np.unique(ids[geo["crop_top"] : geo["hood_top"]]).tolist())
        # Palette-colour decoding (OpenCV) equals index decoding for the generated files.
        bgr = cv2.imread(str(lab), cv2.IMREAD_UNCHANGED)
        from_colour = apollo.rgb_to_intrakd_trainid(np.ascontiguousarray(bgr[..., ::-1]))
        np.testing.assert_array_equal(from_colour, ref_trainids(ids))
    for label in apollo.LABELS:
        assert palette[label.id].tolist() == list(label.color)
    assert not palette[[i for i in range(256) if i not in NEW_LIST]].any()
    assert len(seen - {0, 249, 255}) >= 5, seen  # several marking classes in the labelled band
    # Lists: IntRA-KD spelling (Camera_N), 2 / 6 / 1 fields, resolving to exactly the files.
    fields = {"train": 2, "valid": 6, "test": 1}
    for split, rel_list in synth.LIST_FILES.items():
        text = (small / rel_list).read_text().splitlines()
        assert all(len(line.split()) == fields[split] for line in text)
        assert all("/Camera_" in line and "/Camera " not in line for line in text)
        entries, issues = apollo.parse_list(small / rel_list, small, labelled=split != "test")
        assert issues == [] and len(entries) == COUNTS[f"num_{split}"]
        assert all(os.path.isfile(e.image_path) for e in entries)
    # The folder scan reproduces the lists' splits.
    scanned, issues = apollo.scan_layout(small)
    assert all(not v for v in issues.values())
    for split, rel_list in synth.LIST_FILES.items():
        entries, _ = apollo.parse_list(small / rel_list, small, labelled=split != "test")
        assert [e.key for e in scanned[split]] == sorted(e.key for e in entries)
    assert all("/Record015/" in e.key for e in scanned["valid"])
    assert synth.read_marker(small) == synth.generator_params(seed=2, scale=SCALE, **COUNTS)
    assert not synth.in_progress(small)


def test_generator_is_deterministic_and_full_size_is_exact(small, tmp_path):
    again = tmp_path / "again"
    synth.generate_apolloscape(again, seed=2, scale=SCALE, **COUNTS)
    a, b = files_under(small, ""), files_under(again, "")
    assert [os.path.relpath(p, small) for p in a] == [os.path.relpath(p, again) for p in b]
    for p, q in zip(a, b, strict=True):
        with open(p, "rb") as f, open(q, "rb") as g:
            assert f.read() == g.read(), p
    full = tmp_path / "full"
    synth.generate_apolloscape(full, num_train=1, num_valid=1, num_test=1, seed=0, scale=1.0)
    (lab,) = [p for p in files_under(full, "Labels_road02") if p.endswith("_bin.png")]
    with Image.open(lab) as im:
        assert im.mode == "P" and im.size == (3384, 2710)
        ids = np.array(im)
    assert (ids[:1700] == 0).all() and (ids[2310:, 583:] == 255).all()
    (img,) = files_under(full, "ColorImage_road05")
    with Image.open(img) as im:
        assert im.format == "JPEG" and im.size == (3384, 2710) and im.mode == "RGB"


def test_generator_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        synth.generator_params(scale=0.001)
    with pytest.raises(ValueError, match="num_valid"):
        synth.generator_params(num_valid=0)


# ----------------------------------------------------------------------------------------------
# The reader over the synthetic data.


def test_eval_batches_match_an_independent_reference(small):
    cfg = reader_config(small, **{"synthetic.scale": SCALE})
    ds = data_pipelines.get_dataset(cfg)
    ds.prepare()
    assert ds.info.num_classes == 37 and ds.info.class_names[36] == "noise_ignored"
    assert ds.info.class_weights[0] == ds.info.class_weights[36] == 0.05
    assert set(ds.info.class_weights[1:36]) == {1.0}
    assert [ds.num_examples(s) for s in ("train", "valid", "test")] == [6, 3, 2]
    assert ds.split_source("valid").startswith("list:")
    assert ds.source_image_hw("test") == (136, 169)
    hw = tuple(cfg.image_hw)
    keys = ds.keys("valid")
    batches = list(ds.eval_batches("valid", 2))
    assert len(batches) == 2 and batches[1]["mask"].tolist() == [True, False]
    for batch in batches:
        assert batch["image"].shape == (2, *hw, 3) and batch["label"].dtype == np.int32
        for j in np.flatnonzero(batch["mask"]):
            ex = ds.example("valid", keys[batch["index"][j]])
            ids = np.array(Image.open(ex.label_path))[cfg.crop_top :]
            r = np.minimum(
                np.floor((np.arange(hw[0]) + 0.5) * ids.shape[0] / hw[0]), ids.shape[0] - 1
            )
            c = np.minimum(
                np.floor((np.arange(hw[1]) + 0.5) * ids.shape[1] / hw[1]), ids.shape[1] - 1
            )
            want = ref_trainids(ids[r.astype(int)][:, c.astype(int)])
            np.testing.assert_array_equal(batch["label"][j], want)
    (tb,) = list(ds.eval_batches("test", 2))
    assert (tb["label"] == 255).all() and tb["mask"].all()
    assert all(e.label_path is None for e in ds.examples("test"))
    assert all(
        ap_eval.submission_png_name(k).endswith(("_Camera_5.png", "_Camera_6.png"))
        for k in ds.keys("test")
    )
    train = next(iter(ds.train_batches(4, seed=0)))
    assert train["image"].shape == (4, *hw, 3) and train["label"].shape == (4, *hw)
    assert set(np.unique(train["label"]).tolist()) <= set(range(37)) | {255}


def test_scan_layout_split_rule_and_missing_label(small, tmp_path):
    cfg = reader_config(small, split_source="scan", **{"synthetic.scale": SCALE})
    ds = data_pipelines.get_dataset(cfg)
    assert ds.split_source("train") == "scan"
    assert ds.keys("valid") == sorted(ds.keys("valid"))
    assert all(k.startswith("ColorImage_road04/ColorImage/Record015/") for k in ds.keys("valid"))
    assert all(k.startswith("ColorImage_road05/") for k in ds.keys("test"))
    assert not any("road05" in k or "Record015" in k for k in ds.keys("train"))
    # A hand-made layout: a labelled record in road04/Record017 (valid), one image without its
    # label, a label without its image, and a flat road05 test folder.
    root = tmp_path / "scan"
    (img, lab), (img2, lab2) = make_tree(root, road="road04", record="Record017")
    make_tree(root, road="road03", record="Record003", cams=("Camera 6",), n=1)
    os.remove(lab2)
    write(root / "Labels_road03/Label/Record003/Camera 6/170101_000000000_Camera_6_bin.png")
    flat = write(root / "ColorImage_road05/171206_061127409_Camera_5.jpg")
    splits, issues = apollo.scan_layout(root)
    assert [e.image_path for e in splits["valid"]] == [img] and splits["test"][0].image_path == flat
    assert len(splits["train"]) == 1
    assert [(i.path, i.blocking) for i in issues["valid"]] == [(lab2, True)]
    assert [i.blocking for i in issues["train"]] == [False]
    with pytest.raises(DatasetLayoutError, match=re.escape(lab2)):
        data_pipelines.get_dataset(reader_config(root, split_source="scan")).keys("valid")


def test_config_variants_and_errors(tmp_path):
    real = apolloscape_config.get_config("")
    assert real.data.crop_top == 1700 and tuple(real.data.image_hw) == (496, 1488)
    assert tuple(real.data.teacher_image_hw) == (460, 1380)
    assert real.data.augment.scale_of == "source" and real.data.augment.rotation_prob == 0.5
    assert tuple(real.data.mean_rgb) == (123.68, 116.779, 103.939)
    synthetic = apolloscape_config.get_config("synthetic")
    assert (
        synthetic.data.crop_top == synth.scaled_geometry(synthetic.data.synthetic.scale)["crop_top"]
    )
    h, w = synthetic.data.image_hw
    assert w == 3 * h and len(synthetic.data.class_weights) == 37
    smoke = apolloscape_config.get_config("smoke")
    assert smoke.data.crop_top == synth.scaled_geometry(smoke.data.synthetic.scale)["crop_top"]
    with pytest.raises(ValueError, match="variant"):
        apolloscape_config.get_config("nope")
    with pytest.raises(DataConfigError, match="data_dir"):
        data_pipelines.get_dataset(reader_config(tmp_path / "absent"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DataConfigError, match="not an ApolloScape root"):
        data_pipelines.get_dataset(reader_config(tmp_path / "empty"))
    with pytest.raises(DataConfigError, match="class_weights"):
        data_pipelines.get_dataset(reader_config(tmp_path, class_weights=(1.0, 1.0)))
    with pytest.raises(DataConfigError, match="split_source"):
        data_pipelines.get_dataset(reader_config(tmp_path, split_source="glob"))


def test_synthetic_config_generates_and_refuses_other_parameters(tmp_path):
    cfg = reader_config(tmp_path / "gen", **{"synthetic.enabled": True})
    ds = data_pipelines.get_dataset(cfg)
    ds.prepare()
    assert synth.read_marker(tmp_path / "gen")["scale"] == cfg.synthetic.scale
    cfg.synthetic.seed = 9
    with pytest.raises(DataConfigError, match="generated with"):
        data_pipelines.get_dataset(cfg).prepare()
    make_tree(tmp_path / "foreign")
    foreign = reader_config(tmp_path / "foreign", **{"synthetic.enabled": True})
    with pytest.raises(DataConfigError, match="did not write"):
        data_pipelines.get_dataset(foreign).prepare()


# ----------------------------------------------------------------------------------------------
# One smoke run of the whole pipeline.


def test_smoke_pipeline_runs_all_stages(run_smoke_pipeline):
    results, table = run_smoke_pipeline(apolloscape_config)
    # 37 classes: the comparison keeps to mIoU; per-class IoUs stay in the stage reports.
    assert "mIoU" in table and "IoU noise_ignored" not in table
    assert len(results["distill"]["iou_by_class"]) == 37
