"""The ApolloScape lane-marking class table and the lookup tables derived from it.

This is the project's single copy of the table (dataset-api ``helpers/laneMarkDetection.py``,
identical to IntRA-KD ``trainId2color.py``; DATASETS.md 3.4), with the IntRA-KD 37-class train ids
added (noise 249 and ignored 255 merged into class 36). The reader (``data_pipelines.apolloscape``),
the synthetic generator and the evaluation code (``intrakd_jax.evaluation.apolloscape``) import
it from here. numpy only: importing this module does not load TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class ApolloLabel:
    """One row of the official ApolloScape lane-marking class table."""

    name: str
    id: int  # value stored in label and submission PNGs (the palette index of a _bin.png)
    train_id: int  # official trainId (255 = not trained)
    intrakd_train_id: int  # IntRA-KD 37-class train id (noise and ignored merged into 36)
    category: str
    cat_id: int
    ignore_in_eval: bool
    color: tuple[int, int, int]  # (R, G, B)


# fmt: off
LABELS: tuple[ApolloLabel, ...] = (
    #            name        id  trainId ikTrain category     catId ignore color (R, G, B)
    ApolloLabel("void",       0,   0,   0, "void",        0, False, (0, 0, 0)),
    ApolloLabel("s_w_d",    200,   1,   1, "dividing",    1, False, (70, 130, 180)),
    ApolloLabel("s_y_d",    204,   2,   2, "dividing",    1, False, (220, 20, 60)),
    ApolloLabel("ds_w_dn",  213,   3,   3, "dividing",    1, True,  (128, 0, 128)),
    ApolloLabel("ds_y_dn",  209,   4,   4, "dividing",    1, False, (255, 0, 0)),
    ApolloLabel("sb_w_do",  206,   5,   5, "dividing",    1, True,  (0, 0, 60)),
    ApolloLabel("sb_y_do",  207,   6,   6, "dividing",    1, True,  (0, 60, 100)),
    ApolloLabel("b_w_g",    201,   7,   7, "guiding",     2, False, (0, 0, 142)),
    ApolloLabel("b_y_g",    203,   8,   8, "guiding",     2, False, (119, 11, 32)),
    ApolloLabel("db_w_g",   211,   9,   9, "guiding",     2, True,  (244, 35, 232)),
    ApolloLabel("db_y_g",   208,  10,  10, "guiding",     2, True,  (0, 0, 160)),
    ApolloLabel("db_w_s",   216,  11,  11, "stopping",    3, True,  (153, 153, 153)),
    ApolloLabel("s_w_s",    217,  12,  12, "stopping",    3, False, (220, 220, 0)),
    ApolloLabel("ds_w_s",   215,  13,  13, "stopping",    3, True,  (250, 170, 30)),
    ApolloLabel("s_w_c",    218,  14,  14, "chevron",     4, True,  (102, 102, 156)),
    ApolloLabel("s_y_c",    219,  15,  15, "chevron",     4, True,  (128, 0, 0)),
    ApolloLabel("s_w_p",    210,  16,  16, "parking",     5, False, (128, 64, 128)),
    ApolloLabel("s_n_p",    232,  17,  17, "parking",     5, True,  (238, 232, 170)),
    ApolloLabel("c_wy_z",   214,  18,  18, "zebra",       6, False, (190, 153, 153)),
    ApolloLabel("a_w_u",    202,  19,  19, "thru/turn",   7, True,  (0, 0, 230)),
    ApolloLabel("a_w_t",    220,  20,  20, "thru/turn",   7, False, (128, 128, 0)),
    ApolloLabel("a_w_tl",   221,  21,  21, "thru/turn",   7, False, (128, 78, 160)),
    ApolloLabel("a_w_tr",   222,  22,  22, "thru/turn",   7, False, (150, 100, 100)),
    ApolloLabel("a_w_tlr",  231,  23,  23, "thru/turn",   7, True,  (255, 165, 0)),
    ApolloLabel("a_w_l",    224,  24,  24, "thru/turn",   7, False, (180, 165, 180)),
    ApolloLabel("a_w_r",    225,  25,  25, "thru/turn",   7, False, (107, 142, 35)),
    ApolloLabel("a_w_lr",   226,  26,  26, "thru/turn",   7, False, (201, 255, 229)),
    ApolloLabel("a_n_lu",   230,  27,  27, "thru/turn",   7, True,  (0, 191, 255)),
    ApolloLabel("a_w_tu",   228,  28,  28, "thru/turn",   7, True,  (51, 255, 51)),
    ApolloLabel("a_w_m",    229,  29,  29, "thru/turn",   7, True,  (250, 128, 114)),
    ApolloLabel("a_y_t",    233,  30,  30, "thru/turn",   7, True,  (127, 255, 0)),
    ApolloLabel("b_n_sr",   205,  31,  31, "reduction",   8, False, (255, 128, 0)),
    ApolloLabel("d_wy_za",  212,  32,  32, "attention",   9, True,  (0, 255, 255)),
    ApolloLabel("r_wy_np",  227,  33,  33, "no parking", 10, False, (178, 132, 190)),
    ApolloLabel("vom_wy_n", 223,  34,  34, "others",     11, True,  (128, 128, 64)),
    ApolloLabel("om_n_n",   250,  35,  35, "others",     11, False, (102, 0, 204)),
    ApolloLabel("noise",    249, 255,  36, "ignored",   255, True,  (0, 153, 153)),
    ApolloLabel("ignored",  255, 255,  36, "ignored",   255, True,  (255, 255, 255)),
)
# fmt: on

ID_TO_LABEL: dict[int, ApolloLabel] = {label.id: label for label in LABELS}
NAME_TO_LABEL: dict[str, ApolloLabel] = {label.name: label for label in LABELS}
TABLE_IDS: frozenset[int] = frozenset(ID_TO_LABEL)
VOID_ID = 0
NOISE_ID = 249
IGNORED_ID = 255
NUM_IDS = 256  # ids are 8-bit; the official confusion matrix is (max id + 1) squared
NUM_INTRAKD_CLASSES = 37
IGNORE_LABEL = 255  # train-id value excluded from loss and metrics
# Ids scored by the official metric (ignoreInEval False), in table order: 17 markings + void.
EVAL_IDS: tuple[int, ...] = tuple(label.id for label in LABELS if not label.ignore_in_eval)
CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(label.category for label in LABELS))

# Official frame geometry (DATASETS.md 3.1, 3.5): (height, width) and the IntRA-KD crop row.
IMAGE_HW = (2710, 3384)
CROP_TOP = 1700  # IntRA-KD keeps rows 1700..2709 of image and label

# IntRA-KD road_npy2img `new_list`: train id t -> id; only the first 37 entries are reachable.
INTRAKD_TRAINID_TO_ID: np.ndarray = np.array(
    [label.id for label in LABELS[:NUM_INTRAKD_CLASSES]], dtype=np.uint8
)
# Names of the 37 IntRA-KD classes; 36 is noise (249) and ignored (255) merged.
INTRAKD_CLASS_NAMES: tuple[str, ...] = tuple(
    label.name for label in LABELS[: NUM_INTRAKD_CLASSES - 1]
) + ("noise_ignored",)
# Overlay colours (R, G, B) of the 37 train ids; 36 takes the noise colour.
INTRAKD_TRAINID_COLORS: np.ndarray = np.array(
    [label.color for label in LABELS[:NUM_INTRAKD_CLASSES]], dtype=np.uint8
)


def _id_lut(field: str) -> np.ndarray:
    lut = np.full(NUM_IDS, IGNORE_LABEL, dtype=np.uint8)
    for label in LABELS:
        lut[label.id] = getattr(label, field)
    return lut


# id -> train id lookup tables (256 entries; ids outside the table map to 255).
ID_TO_TRAINID: np.ndarray = _id_lut("train_id")
ID_TO_INTRAKD_TRAINID: np.ndarray = _id_lut("intrakd_train_id")
KNOWN_ID_MASK: np.ndarray = np.zeros(NUM_IDS, dtype=bool)
KNOWN_ID_MASK[[label.id for label in LABELS]] = True
IGNORED_ID_MASK: np.ndarray = np.zeros(NUM_IDS, dtype=bool)
IGNORED_ID_MASK[[label.id for label in LABELS if label.ignore_in_eval]] = True

# Palette of the released `_bin.png` labels as the synthetic generator writes it: entry id = the
# table colour of id, every other entry black. uint8 (256, 3) RGB.
ID_PALETTE: np.ndarray = np.zeros((NUM_IDS, 3), dtype=np.uint8)
for _label in LABELS:
    ID_PALETTE[_label.id] = _label.color
del _label


def color_hash(rgb: np.ndarray) -> np.ndarray:
    """IntRA-KD colour key ``R + 3*G + 5*B`` (int32, 0..2295) of (..., 3) RGB values."""
    c = np.asarray(rgb).astype(np.int32)
    return c[..., 0] + 3 * c[..., 1] + 5 * c[..., 2]


COLOR_HASH_SIZE = 255 * 9 + 1
# hash -> index into LABELS (-1 = no table colour); the 38 table hashes are distinct.
HASH_TO_ROW: np.ndarray = np.full(COLOR_HASH_SIZE, -1, dtype=np.int16)
HASH_TO_ROW[color_hash(np.array([label.color for label in LABELS]))] = np.arange(len(LABELS))
# hash -> IntRA-KD train id (255 = no table colour), the lookup of IntRA-KD `origin_id`.
HASH_TO_INTRAKD_TRAINID: np.ndarray = np.full(COLOR_HASH_SIZE, IGNORE_LABEL, dtype=np.uint8)
HASH_TO_INTRAKD_TRAINID[HASH_TO_ROW >= 0] = [
    LABELS[r].intrakd_train_id for r in HASH_TO_ROW[HASH_TO_ROW >= 0]
]

# Horizontal mirroring swaps the left/right arrows (a_w_tl <-> a_w_tr, a_w_l <-> a_w_r). The
# official recipe does not flip; other turning arrows (U-turns) have no mirrored class.
INTRAKD_HFLIP_LUT: np.ndarray = np.arange(256, dtype=np.uint8)
for _a, _b in (("a_w_tl", "a_w_tr"), ("a_w_l", "a_w_r")):
    _ta, _tb = NAME_TO_LABEL[_a].intrakd_train_id, NAME_TO_LABEL[_b].intrakd_train_id
    INTRAKD_HFLIP_LUT[_ta], INTRAKD_HFLIP_LUT[_tb] = _tb, _ta
del _a, _b, _ta, _tb


@functools.cache
def packed_color_lut() -> np.ndarray:
    """uint8 (2**24,) packed 0xRRGGBB colour -> IntRA-KD train id (255 = no table colour).

    16 MiB, built on first use (RGB labels only): one gather is ~3x faster than the hash lookup
    plus an exact-colour check.
    """
    lut = np.full(1 << 24, IGNORE_LABEL, dtype=np.uint8)
    for label in LABELS:
        r, g, b = label.color
        lut[(r << 16) | (g << 8) | b] = label.intrakd_train_id
    return lut


def rgb_to_intrakd_trainid(rgb: np.ndarray) -> np.ndarray:
    """Maps (H, W, 3) RGB table colours to IntRA-KD train ids (uint8 (H, W)).

    Same result as IntRA-KD's hash lookup ``R + 3G + 5B`` for table colours; a colour that is
    not exactly a table colour (also one whose hash collides with a table hash) maps to 255.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W, 3) RGB, got {rgb.dtype} {rgb.shape}")
    return packed_color_lut()[pack_rgb(rgb)]


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """int32 0xRRGGBB keys of (..., 3) uint8 RGB values."""
    key = rgb[..., 0].astype(np.int32) << 16
    key |= rgb[..., 1].astype(np.int32) << 8
    key |= rgb[..., 2]
    return key
