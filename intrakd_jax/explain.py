"""mode=explain: what IntRA-KD matches between the teacher and a student, image by image.

A distillation that does not help is debugged by looking at what the loss compares. For the
first ``config.explain.num_images`` images of the evaluation split and every IntRA-KD tap pair of
``config.distill.intra_kd``, ``explain_batch`` recomputes what ``intra_kd_loss`` computes, with
the loss module's own functions, and keeps every intermediate result: the AOI maps at each tap's
resolution, the node masses and which classes count as present, the per-class moment vectors,
the teacher's and the student's affinity graph per enabled moment and each moment's part of the
loss. ``render`` draws one image of such a result; ``explain`` (the mode) writes one PNG per
image and ``explain.json`` with the numbers to ``<workdir>/explain/`` (``config.explain.output``).

    python main.py --config=configs/culane.py --config.data.data_dir=/data/CULane \
        --config.mode=explain --config.checkpoint=runs/culane/distill --workdir=runs/culane

The teacher is found as the distill stage finds it (``config.teacher.checkpoint``, else
``<workdir>/teacher``); the student is ``config.checkpoint`` (any stage, so a baseline student can
be compared with the teacher too). In a notebook, with both models' taps of a batch:

    term = explain.intra_kd_term(config, student, teacher, info.image_hw)
    result = explain.explain_batch(s_taps, t_taps, labels_bhw, info.num_classes, term)
    figure_hw3 = explain.render(result, 0, image_rgb, labels_bhw[0], info.class_names)
"""

from __future__ import annotations

import functools
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageFont

from intrakd_jax import building, checkpointing, parallel
from intrakd_jax.errors import ConfigError
from intrakd_jax.evaluation import report, visualize
from intrakd_jax.losses import terms
from intrakd_jax.losses.intra_kd import affinity_graph, aoi_maps, moment_pool

__all__ = ["MOMENTS", "explain", "explain_batch", "intra_kd_term", "render"]

# The moment orders of config.distill.intra_kd.moment_weights, in its order.
MOMENTS = ("mean", "variance", "skewness")


# ----------------------------------------------------------------------------------------------
# The numbers
# ----------------------------------------------------------------------------------------------


def intra_kd_term(
    config: ml_collections.ConfigDict, student_model: Any, teacher_model: Any, image_hw
) -> terms.IntraKD:
    """The IntRA-KD settings of ``config.distill.intra_kd``, taps resolved for the two models.

    Built whether or not ``config.distill.terms`` enables IntRA-KD, so a student trained with
    another method (or none) can be explained against the same teacher.

    Args:
      config: the run's config.
      student_model: the student model.
      teacher_model: the teacher model.
      image_hw: the input size (to list the models' taps).

    Returns:
      The ``terms.IntraKD`` term: tap pairs, kernel size, moment weights, normaliser, guards and
      the global weight lambda.

    Raises:
      ConfigError: a bad option or a tap one of the models does not have (the field is named).
    """
    distill_cfg = {"terms": ("intra_kd",), "intra_kd": config.distill.intra_kd}
    spec = terms.distill_spec_from_config(distill_cfg, 1, student_model, teacher_model)
    terms.check_taps(
        spec,
        building.tap_names(student_model, image_hw),
        building.tap_names(teacher_model, image_hw),
    )
    (term,) = spec.terms
    return term


def _tap(taps: Mapping[str, jax.Array], name: str, role: str) -> jax.Array:
    if name not in taps:
        raise KeyError(f"explain_batch: {role} tap {name!r} not found; {role} taps: {sorted(taps)}")
    return taps[name]


def explain_batch(
    student_taps: Mapping[str, jax.Array],
    teacher_taps: Mapping[str, jax.Array],
    labels_bhw: jax.Array | np.ndarray,
    num_classes: int,
    term: terms.IntraKD,
    ignore_label: int = 255,
) -> dict[str, Any]:
    """Everything IntRA-KD computes for a batch, per image, as numpy arrays.

    The same calls as ``intra_kd_loss`` (``aoi_maps``, ``moment_pool`` with the term's options,
    ``affinity_graph``), kept apart per image: each image's loss is its mean over the n x n graph
    entries, so the batch loss (``intra_kd_loss``, ``multi_tap_intra_kd_loss``) is the mean of
    the per-image values below.

    Args:
      student_taps: tap name -> (B, hs, ws, cs) student features.
      teacher_taps: tap name -> (B, ht, wt, ct) teacher features.
      labels_bhw: (B, H, W) integer labels.
      num_classes: n.
      term: the IntRA-KD settings (``intra_kd_term``); its ``taps`` name the pairs.
      ignore_label: label value of unlabelled pixels.

    Returns:
      ``pairs``: one dict per (student tap, teacher tap, weight) of ``term.taps`` with
      ``student_tap``, ``teacher_tap``, ``tap_weight``; ``aoi_student`` (B, hs, ws, n) and
      ``aoi_teacher`` (B, ht, wt, n); ``mass_student`` / ``mass_teacher`` (B, n), the soft AOI
      mass of each class in tap pixels; ``present_student`` / ``present_teacher`` (B, n) bool,
      whether the class is a node (mass > 0 and >= ``term.min_mass``; an absent class has a zero
      descriptor, so zero rows and columns in the graphs); ``moments``: for each enabled moment
      (``MOMENTS`` with weight > 0) a dict of ``alpha``, ``student`` (B, n, cs) and ``teacher``
      (B, n, ct) descriptors, ``graph_student`` and ``graph_teacher`` (B, n, n), ``mse`` (B,) =
      mean over the n x n entries of the squared difference and ``loss`` (B,) = alpha * mse; and
      ``loss`` (B,), the pair's sum over moments (before the tap weight).
      ``intra_kd`` (B,): sum over pairs of tap weight * loss; ``weighted`` (B,): lambda
      (``term.weight``) times that, the term's part of the student's objective;
      ``label_pixels`` (B, n) int64: pixels of each class in the labels.

    Raises:
      KeyError: a tap of ``term.taps`` is missing (the message lists the available ones).
    """
    labels = jnp.asarray(labels_bhw)
    batch = int(labels.shape[0])
    pool = functools.partial(
        moment_pool,
        normalizer=term.normalizer,
        skew_denominator=term.skew_denominator,
        min_mass=term.min_mass,
        skew_floor=term.skew_floor,
    )
    aoi_cache: dict[tuple[int, int], jax.Array] = {}

    def aoi_for(feats_bhwc: jax.Array) -> jax.Array:
        hw = (int(feats_bhwc.shape[1]), int(feats_bhwc.shape[2]))
        if hw not in aoi_cache:
            aoi_cache[hw] = aoi_maps(labels, num_classes, hw, term.kernel_size, ignore_label)
        return aoi_cache[hw]

    def present(aoi_bhwn: jax.Array) -> np.ndarray:
        # moment_pool's own rule, not a copy of it: the pooled mean of a constant-1 feature is
        # > 0 exactly where the class counts as present (for every normaliser), and 0 elsewhere.
        ones_bhw1 = jnp.ones((*aoi_bhwn.shape[:3], 1), jnp.float32)
        return np.asarray(pool(ones_bhw1, aoi_bhwn)[0][..., 0] > 0)

    pairs = []
    intra_kd_b = np.zeros(batch, np.float64)
    for s_name, t_name, tap_weight in term.taps:
        feats_s = jnp.asarray(_tap(student_taps, s_name, "student"))
        feats_t = jnp.asarray(_tap(teacher_taps, t_name, "teacher"))
        aoi_s, aoi_t = aoi_for(feats_s), aoi_for(feats_t)
        moments_s, moments_t = pool(feats_s, aoi_s), pool(feats_t, aoi_t)
        moments, pair_loss_b = {}, np.zeros(batch, np.float64)
        for name, alpha, m_s, m_t in zip(
            MOMENTS, term.moment_weights, moments_s, moments_t, strict=True
        ):
            if alpha == 0.0:  # the loss skips it too
                continue
            g_s, g_t = affinity_graph(m_s), affinity_graph(m_t)
            mse_b = np.asarray(jnp.mean(jnp.square(g_s - g_t), axis=(1, 2)), np.float64)
            moments[name] = {
                "alpha": float(alpha),
                "student": np.asarray(m_s),
                "teacher": np.asarray(m_t),
                "graph_student": np.asarray(g_s),
                "graph_teacher": np.asarray(g_t),
                "mse": mse_b,
                "loss": alpha * mse_b,
            }
            pair_loss_b += alpha * mse_b
        pairs.append(
            {
                "student_tap": s_name,
                "teacher_tap": t_name,
                "tap_weight": float(tap_weight),
                "aoi_student": np.asarray(aoi_s),
                "aoi_teacher": np.asarray(aoi_t),
                "mass_student": np.asarray(jnp.sum(aoi_s, axis=(1, 2))),
                "mass_teacher": np.asarray(jnp.sum(aoi_t, axis=(1, 2))),
                "present_student": present(aoi_s),
                "present_teacher": present(aoi_t),
                "moments": moments,
                "loss": pair_loss_b,
            }
        )
        intra_kd_b += tap_weight * pair_loss_b
    labels_np = np.asarray(labels).reshape(batch, -1)
    label_pixels = np.stack(
        [
            np.bincount(row[(row >= 0) & (row < num_classes)], minlength=num_classes)
            for row in labels_np
        ]
    ).astype(np.int64)
    return {
        "pairs": pairs,
        "intra_kd": intra_kd_b,
        "weighted": term.weight * intra_kd_b,
        "label_pixels": label_pixels,
    }


# ----------------------------------------------------------------------------------------------
# The picture (Pillow; small blocks stacked into one image)
# ----------------------------------------------------------------------------------------------

# Anchor colours of the two colour scales: a viridis-like sequential one (AOI maps, |difference|)
# and a blue-white-red diverging one (graphs: cosine similarity in [-1, 1]).
_SEQUENTIAL = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64
)
_DIVERGING = np.array(
    [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]],
    np.float64,
)
_DIFF_MAX = 1.0  # |difference| colour scale 0 .. 1; larger values (up to 2) saturate
_TILE_W = 150  # width of an AOI heatmap tile
_AOI_PER_ROW = 6
_GRAPH_PX = 210  # side of a graph heatmap (cells are at most 36 px)
_IMAGE_W = 460  # width of the input and label panels
_GAP = 8
_ABSENT_RGB = (160, 160, 160)
_GREY_TEXT = (110, 110, 110)
_WARN_TEXT = (190, 30, 30)
_TINY_TEXT = (210, 110, 0)
# A node of less than one tap pixel has the variance and skewness of about one pixel: near zero,
# with a direction that rounding decides (the project's min_mass ablation uses the same 1 px).
_TINY_MASS = 1.0


def _tiny_nodes(pair: Mapping[str, Any], b: int) -> np.ndarray:
    """(n,) bool: present on a side with a mass under ``_TINY_MASS`` tap pixels there."""
    return (pair["present_student"][b] & (pair["mass_student"][b] < _TINY_MASS)) | (
        pair["present_teacher"][b] & (pair["mass_teacher"][b] < _TINY_MASS)
    )


def _tiny_share(moment: Mapping[str, Any], b: int, tiny_n: np.ndarray) -> float:
    """The part of a moment's loss in graph entries that touch a node of under 1 tap pixel."""
    sq_nn = np.square(moment["graph_student"][b] - moment["graph_teacher"][b])
    total = float(sq_nn.sum())
    return float(sq_nn[tiny_n[:, None] | tiny_n[None, :]].sum()) / total if total > 0 else 0.0


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _colormap(values: np.ndarray, lo: float, hi: float, anchors: np.ndarray) -> np.ndarray:
    """Values -> uint8 RGB by linear interpolation between equally spaced anchor colours."""
    t = np.clip((np.asarray(values, np.float64) - lo) / (hi - lo), 0.0, 1.0) * (len(anchors) - 1)
    i = np.minimum(np.floor(t).astype(int), len(anchors) - 2)
    f = (t - i)[..., None]
    return np.rint((1.0 - f) * anchors[i] + f * anchors[i + 1]).astype(np.uint8)


def _text(text: str, size: int = 12, fill=(0, 0, 0), width: int | None = None) -> Image.Image:
    """A block of text (wrapped to ``width`` pixels when given) on white."""
    font = _font(size)
    lines = []
    for paragraph in text.split("\n"):
        if width is None:
            lines.append(paragraph)
            continue
        chars = max(20, int(width / (0.55 * size)))
        lines += textwrap.wrap(paragraph, chars) or [""]
    line_h = size + 4
    w = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(s, font=font)) for s in lines)
    image = Image.new("RGB", (max(w, 1) + 2, line_h * len(lines)), "white")
    pen = ImageDraw.Draw(image)
    for k, line in enumerate(lines):
        pen.text((1, k * line_h), line, fill=fill, font=font)
    return image


def _stack(blocks: Sequence[Image.Image], vertical: bool, gap: int = _GAP) -> Image.Image:
    """Blocks one below the other (left aligned) or side by side (top aligned), on white."""
    if vertical:
        size = (
            max(b.width for b in blocks),
            sum(b.height for b in blocks) + gap * (len(blocks) - 1),
        )
    else:
        size = (
            sum(b.width for b in blocks) + gap * (len(blocks) - 1),
            max(b.height for b in blocks),
        )
    out = Image.new("RGB", size, "white")
    offset = 0
    for b in blocks:
        out.paste(b, (0, offset) if vertical else (offset, 0))
        offset += (b.height if vertical else b.width) + gap
    return out


def _resize(rgb: np.ndarray, width: int) -> Image.Image:
    """An RGB array scaled to ``width``: nearest when enlarging (tap pixels stay visible)."""
    h, w = rgb.shape[:2]
    height = max(1, round(h * width / w))
    interp = cv2.INTER_NEAREST if width >= w else cv2.INTER_AREA
    return Image.fromarray(cv2.resize(rgb, (width, height), interpolation=interp))


def _hatched(h: int, w: int) -> np.ndarray:
    """(h, w, 3) light grey with diagonal stripes: the mark of an absent class."""
    yy, xx = np.mgrid[:h, :w]
    stripes = ((xx + yy) % 8) < 2
    return np.where(stripes[..., None], np.uint8(_ABSENT_RGB[0]), np.uint8(225)).repeat(3, -1)


def _colorbar(anchors: np.ndarray, lo: float, hi: float, label: str) -> Image.Image:
    bar = _colormap(np.tile(np.linspace(lo, hi, 140), (12, 1)), lo, hi, anchors)
    ends = _stack([_text(f"{lo:g}"), Image.fromarray(bar), _text(f"{hi:g}")], vertical=False, gap=4)
    return _stack([_text(label), ends], vertical=True, gap=2)


def _legend() -> Image.Image:
    absent = _stack(
        [_text("absent class"), Image.fromarray(_hatched(16, 40))], vertical=True, gap=2
    )
    return _stack(
        [
            _colorbar(_SEQUENTIAL, 0.0, 1.0, "AOI map (soft class mask)"),
            _colorbar(_DIVERGING, -1.0, 1.0, "affinity graph (cosine similarity)"),
            _colorbar(
                _SEQUENTIAL, 0.0, _DIFF_MAX, f"|student - teacher| (>= {_DIFF_MAX:g} saturates)"
            ),
            absent,
        ],
        vertical=False,
        gap=28,
    )


def _swatch(class_id: int, num_classes: int) -> Image.Image:
    colour = visualize.palette(num_classes)[class_id]
    return Image.fromarray(np.broadcast_to(colour, (11, 11, 3)).astype(np.uint8))


def _aoi_block(
    aoi_hwn: np.ndarray,
    mass_n: np.ndarray,
    present_n: np.ndarray,
    shown: Sequence[int],
    class_names: Sequence[str],
    title: str,
) -> Image.Image:
    """A row (wrapped) of AOI heatmaps with the class name above and its mass bar below."""
    n = len(class_names)
    h, w = aoi_hwn.shape[:2]
    max_mass = max(float(mass_n[list(shown)].max()), 1e-12) if len(shown) else 1.0
    tiles = []
    for k in shown:
        name = _stack([_swatch(k, n), _text(f"{k} {class_names[k]}")], vertical=False, gap=3)
        if present_n[k]:
            heat = _resize(_colormap(aoi_hwn[..., k], 0.0, 1.0, _SEQUENTIAL), _TILE_W)
        else:
            tile_h = max(1, round(h * _TILE_W / w))
            heat = Image.fromarray(_hatched(tile_h, _TILE_W))
            ImageDraw.Draw(heat).text((4, 2), "absent", fill=_WARN_TEXT, font=_font(12))
        bar = np.full((6, _TILE_W, 3), 235, np.uint8)
        bar[:, : max(1 if mass_n[k] > 0 else 0, round(_TILE_W * mass_n[k] / max_mass))] = 60
        if not present_n[k]:
            caption = _text(f"mass {mass_n[k]:.3g} px", fill=_WARN_TEXT)
        elif mass_n[k] < _TINY_MASS:
            caption = _text(f"mass {mass_n[k]:.3g} px (< {_TINY_MASS:g} px)", fill=_TINY_TEXT)
        else:
            caption = _text(f"mass {mass_n[k]:.3g} px")
        tiles.append(_stack([name, heat, Image.fromarray(bar), caption], vertical=True, gap=2))
    rows = [
        _stack(tiles[i : i + _AOI_PER_ROW], vertical=False)
        for i in range(0, len(tiles), _AOI_PER_ROW)
    ] or [_text("no class is present at this tap", 12, fill=_WARN_TEXT)]
    return _stack([_text(title, 13), *rows], vertical=True, gap=4)


def _graph_tile(
    graph_nn: np.ndarray,
    shown: Sequence[int],
    absent_n: np.ndarray,
    tiny_n: np.ndarray,
    lo: float,
    hi: float,
    anchors: np.ndarray,
    title: str,
) -> Image.Image:
    """A graph restricted to the shown nodes as a heatmap, class ids on both axes.

    Absent nodes' rows and columns are hatched and their ids red; tiny nodes' ids are orange.
    """
    idx = np.asarray(shown, int)
    m = len(idx)
    cell = int(np.clip(_GRAPH_PX // max(m, 1), 6, 36))
    rgb = _colormap(graph_nn[np.ix_(idx, idx)], lo, hi, anchors)
    rgb = rgb.repeat(cell, axis=0).repeat(cell, axis=1)
    hatch = _hatched(m * cell, m * cell)
    gone = absent_n[idx]
    mask = (gone[:, None] | gone[None, :]).repeat(cell, 0).repeat(cell, 1)
    rgb = np.where(mask[..., None], hatch, rgb)
    axis = 26
    image = Image.new("RGB", (axis + m * cell + 1, axis + m * cell + 1), "white")
    image.paste(Image.fromarray(rgb), (axis, axis))
    pen = ImageDraw.Draw(image)
    small = _font(10)
    for i, k in enumerate(idx):
        colour = _WARN_TEXT if gone[i] else _TINY_TEXT if tiny_n[k] else (0, 0, 0)
        c = axis + i * cell + cell // 2
        pen.text((c, axis - 3), str(k), fill=colour, font=small, anchor="md")
        pen.text((axis - 3, c), str(k), fill=colour, font=small, anchor="rm")
    if cell >= 30:  # room for the values themselves
        sub = graph_nn[np.ix_(idx, idx)]
        for i in range(m):
            for j in range(m):
                if gone[i] or gone[j]:
                    continue
                centre = (axis + j * cell + cell // 2, axis + i * cell + cell // 2)
                luminance = float(rgb[i * cell, j * cell] @ np.array([0.299, 0.587, 0.114]))
                ink = "white" if luminance < 128 else "black"
                pen.text(centre, f"{sub[i, j]:.2f}", fill=ink, font=small, anchor="mm")
    pen.rectangle([axis - 1, axis - 1, axis + m * cell, axis + m * cell], outline=(0, 0, 0))
    return _stack([_text(title, 12), image], vertical=True, gap=2)


def _image_panel(image_rgb, label_hw, class_names, label_pixels_n) -> Image.Image:
    n = len(class_names)
    shown = [k for k in range(n) if label_pixels_n[k] > 0]
    legend = [
        _stack([_swatch(k, n), _text(f"{k} {class_names[k]}: {label_pixels_n[k]} px")], False, 3)
        for k in shown
    ]
    columns = [legend[i : i + 12] for i in range(0, len(legend), 12)] or [[_text("no labels")]]
    return _stack(
        [
            _stack([_text("input", 12), _resize(image_rgb, _IMAGE_W)], vertical=True, gap=2),
            _stack(
                [_text("label", 12), _resize(visualize.colorize(label_hw, n), _IMAGE_W)],
                vertical=True,
                gap=2,
            ),
            *[_stack(c, vertical=True, gap=2) for c in columns],
        ],
        vertical=False,
        gap=12,
    )


def render(
    result: Mapping[str, Any],
    index: int,
    image_rgb: np.ndarray,
    label_hw: np.ndarray,
    class_names: Sequence[str],
    title: Sequence[str] = (),
    max_nodes: int = 12,
) -> np.ndarray:
    """The figure of one image of an ``explain_batch`` result.

    Top: the title lines, the colour scales, the input and its colourised label with the pixel
    count of each class. Then for every tap pair: the AOI map of each node class at the tap's
    resolution with its mass (a bar and the value), and for every enabled moment the teacher's
    graph, the student's graph and their absolute difference, titled with the moment's loss.
    Absent classes are hatched grey (their rows and columns are zero in the graphs).

    Args:
      result: ``explain_batch``'s output.
      index: which image of the batch.
      image_rgb: (H, W, 3) uint8 input for display (``visualize.denormalize``).
      label_hw: (H, W) label map.
      class_names: one name per class.
      title: lines printed above everything.
      max_nodes: with more classes than this, only classes that are a node on either side are
        drawn (ApolloScape's 37); the others are listed by name.

    Returns:
      (h, w, 3) uint8 RGB.
    """
    n = len(class_names)
    b = index
    blocks = [_text(line, 15 if i == 0 else 12) for i, line in enumerate(title)]
    blocks += [_legend(), _image_panel(image_rgb, label_hw, class_names, result["label_pixels"][b])]
    text_w = 900
    for pair in result["pairs"]:
        present_s, present_t = pair["present_student"][b], pair["present_teacher"][b]
        either = present_s | present_t
        shown = list(range(n)) if n <= max_nodes else [k for k in range(n) if either[k]]
        hw_s, hw_t = pair["aoi_student"].shape[1:3], pair["aoi_teacher"].shape[1:3]
        moments = pair["moments"]
        loss = float(pair["loss"][b])
        header = (
            f"student tap '{pair['student_tap']}' {hw_s[0]}x{hw_s[1]} vs teacher tap "
            f"'{pair['teacher_tap']}' {hw_t[0]}x{hw_t[1]} (tap weight {pair['tap_weight']:g}): "
            f"loss {loss:.4g} = sum over moments of alpha x mean over all {n}x{n} graph entries "
            f"of (student - teacher)^2"
        )
        blocks += [
            _stack(
                [Image.new("RGB", (text_w, 2), (0, 0, 0)), _text(header, 13, width=text_w)], True, 4
            )
        ]
        blocks.append(
            _aoi_block(
                pair["aoi_student"][b],
                pair["mass_student"][b],
                present_s,
                shown,
                class_names,
                f"AOI maps at the student tap ({hw_s[0]}x{hw_s[1]}); mass = AOI sum in tap pixels",
            )
        )
        if tuple(hw_t) != tuple(hw_s):
            blocks.append(
                _aoi_block(
                    pair["aoi_teacher"][b],
                    pair["mass_teacher"][b],
                    present_t,
                    shown,
                    class_names,
                    f"AOI maps at the teacher tap ({hw_t[0]}x{hw_t[1]})",
                )
            )
        tiny_n = _tiny_nodes(pair, b)
        tiny = np.flatnonzero(tiny_n)
        hidden = [k for k in range(n) if k not in shown]
        only = [k for k in range(n) if present_s[k] != present_t[k]]
        notes = [(f"Nodes: {int(either.sum())} of {n} classes are present.", _GREY_TEXT)]
        if hidden:
            notes.append(
                (
                    "Not drawn, absent on both sides (zero rows and columns in both graphs, "
                    "difference 0, still counted in the n x n mean): "
                    + ", ".join(class_names[k] for k in hidden)
                    + ".",
                    _GREY_TEXT,
                )
            )
        if only:
            notes.append(
                (
                    "Present on one side only (a whole row of difference): "
                    + ", ".join(class_names[k] for k in only)
                    + ".",
                    _WARN_TEXT,
                )
            )
        if len(tiny):
            notes.append(
                (
                    f"Under {_TINY_MASS:g} tap pixel (orange): "
                    + ", ".join(class_names[k] for k in tiny)
                    + ". Such a node's variance and skewness are those of about one pixel: near "
                    "0, with a direction that rounding decides, so their graph rows are mostly "
                    "noise (config.distill.intra_kd.min_mass drops such nodes).",
                    _TINY_TEXT,
                )
            )
        blocks.append(
            _stack([_text(t, 12, fill=c, width=text_w) for t, c in notes], vertical=True, gap=2)
        )
        for name, mom in moments.items():
            g_t, g_s = mom["graph_teacher"][b], mom["graph_student"][b]
            diff = np.abs(g_s - g_t)
            share = float(mom["loss"][b]) / loss if loss > 0 else 0.0
            lines = [
                f"alpha {mom['alpha']:g}",
                f"loss {float(mom['loss'][b]):.4g}",
                f"({100 * share:.0f} % of the tap's loss)",
            ]
            if len(tiny):
                lines.append(f"{100 * _tiny_share(mom, b, tiny_n):.0f} % of it from nodes < 1 px")
            both = np.flatnonzero(present_s & present_t)
            if len(both) > 1:  # the pair of nodes the student gets most wrong
                sub = diff[np.ix_(both, both)]
                i, j = np.unravel_index(np.argmax(sub), sub.shape)
                lines += [
                    f"largest |diff| {sub[i, j]:.2f}:",
                    f"  {class_names[both[i]]} - {class_names[both[j]]}",
                ]
            label = _stack([_text(name, 14), _text("\n".join(lines), 12)], vertical=True, gap=2)
            blocks.append(
                _stack(
                    [
                        _stack([label, Image.new("RGB", (170, 1), "white")], True, 0),
                        _graph_tile(g_t, shown, ~present_t, tiny_n, -1, 1, _DIVERGING, "teacher"),
                        _graph_tile(g_s, shown, ~present_s, tiny_n, -1, 1, _DIVERGING, "student"),
                        _graph_tile(
                            diff,
                            shown,
                            ~either,
                            tiny_n,
                            0,
                            _DIFF_MAX,
                            _SEQUENTIAL,
                            "|student - teacher|",
                        ),
                    ],
                    vertical=False,
                    gap=16,
                )
            )
    blocks.append(
        _text(
            "How to read it: each class region is a graph node described by the per-channel "
            "mean / variance / skewness of the tap's features under its AOI map; an edge is the "
            "cosine similarity of two nodes' descriptors. The student is trained to make its "
            "graphs equal the teacher's. A bright cell in |student - teacher| is a pair of "
            "regions whose relation the student has not (yet) learned for that moment; a class "
            "with a tiny mass is a node of a fraction of a pixel (see min_mass).",
            12,
            fill=_GREY_TEXT,
            width=text_w,
        )
    )
    figure = _stack(blocks, vertical=True, gap=10)
    framed = Image.new("RGB", (figure.width + 24, figure.height + 24), "white")
    framed.paste(figure, (12, 12))
    return np.asarray(framed)


# ----------------------------------------------------------------------------------------------
# The mode
# ----------------------------------------------------------------------------------------------


def _load_teacher(config, workdir: str, teacher, image_hw, mesh):
    """The teacher's variables, as the distill stage finds them; a clear error when missing."""
    default_path = os.path.join(workdir, "teacher")
    try:
        return building.load_teacher(config, default_path, teacher, image_hw, mesh)
    except checkpointing.CheckpointError as e:
        where = config.teacher.checkpoint or default_path
        raise checkpointing.CheckpointError(
            f"mode=explain compares the student with its teacher, but the teacher at {where} "
            f"cannot be loaded: {e}\nSet --config.teacher.checkpoint to the teacher the student "
            f"was distilled from (a stage directory such as runs/x/teacher), or use the workdir "
            f"that holds it."
        ) from None


def _figure_json(result: Mapping[str, Any], b: int) -> list[dict]:
    """The numbers of one image: per pair, masses, presence and per-moment graphs and losses."""
    pairs = []
    for pair in result["pairs"]:
        pairs.append(
            {
                "student_tap": pair["student_tap"],
                "teacher_tap": pair["teacher_tap"],
                "tap_weight": pair["tap_weight"],
                "student_hw": list(pair["aoi_student"].shape[1:3]),
                "teacher_hw": list(pair["aoi_teacher"].shape[1:3]),
                "loss": float(pair["loss"][b]),
                "mass_student": pair["mass_student"][b],
                "mass_teacher": pair["mass_teacher"][b],
                "present_student": pair["present_student"][b],
                "present_teacher": pair["present_teacher"][b],
                "moments": {
                    name: {
                        "alpha": mom["alpha"],
                        "loss": float(mom["loss"][b]),
                        "mse": float(mom["mse"][b]),
                        "max_abs_diff": float(
                            np.abs(mom["graph_student"][b] - mom["graph_teacher"][b]).max()
                        ),
                        "loss_share_under_1px": _tiny_share(mom, b, _tiny_nodes(pair, b)),
                        "graph_teacher": np.round(mom["graph_teacher"][b], 5),
                        "graph_student": np.round(mom["graph_student"][b], 5),
                    }
                    for name, mom in pair["moments"].items()
                },
            }
        )
    return pairs


def explain(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """mode=explain: AOI maps and affinity graphs of the teacher and ``config.checkpoint``.

    Writes ``image_<i>.png`` per image and ``explain.json`` (settings, and per image and tap pair:
    node masses, presence, graphs and per-moment losses) to ``config.explain.output`` (default
    ``<workdir>/explain``).

    Args:
      config: the run's config; ``checkpoint`` is the student, ``teacher`` the teacher (as in the
        distill stage), ``distill.intra_kd`` the settings explained, ``explain.num_images`` how
        many images of ``eval.split`` (default ``data.eval_split``) are drawn.
      workdir: the run's workdir (its ``teacher/`` is the default teacher).

    Returns:
      The content of ``explain.json``.

    Raises:
      ConfigError: no or several checkpoints, a bad ``num_images``, an unlabelled split or a bad
        IntRA-KD option or tap.
      checkpointing.CheckpointError: the student or the teacher cannot be loaded.
    """
    path = config.checkpoint
    if not path or "," in path:
        raise ConfigError(
            f"config.checkpoint={path!r}: mode=explain needs one student checkpoint, e.g. "
            "--config.checkpoint=runs/demo/distill (a stage directory, its best/ or a step "
            "folder, or a PyTorch file with config.checkpoint_arch)"
        )
    num_images = config.explain.num_images
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ConfigError(f"config.explain.num_images={num_images!r}; expected an int >= 1")
    if jax.process_index() > 0:  # a few images: process 0 does all of it
        return {}
    dataset = building.prepared_dataset(config.data)
    info = dataset.info
    split = config.eval.split or config.data.eval_split
    num_images = min(num_images, dataset.num_examples(split))
    if num_images < 1:
        raise ConfigError(f"mode=explain: split {split!r} of {info.name} has no images")
    out_dir = config.explain.output or os.path.join(workdir, "explain")
    # One device: a couple of images need no data parallelism.
    mesh = parallel.make_data_mesh(1)
    student, student_vars, step, meta = building.load_eval_checkpoint(config, path, info, mesh)
    teacher = building.build_teacher(config, info.num_classes, building.compute_dtype(config))
    teacher_vars = _load_teacher(config, workdir, teacher, info.image_hw, mesh)
    term = intra_kd_term(config, student, teacher, info.image_hw)
    s_names = sorted({s for s, _, _ in term.taps})
    t_names = sorted({t for _, t, _ in term.taps})

    @jax.jit
    def forward(s_vars, t_vars, images_bhwc):
        # Only the taps the term reads leave the program (XLA drops the rest).
        _, s_taps = student.apply(s_vars, images_bhwc, train=False)
        _, t_taps = teacher.apply(t_vars, images_bhwc, train=False)
        return {k: s_taps[k] for k in s_names}, {k: t_taps[k] for k in t_names}

    teacher_name = config.teacher.checkpoint or os.path.join(workdir, "teacher")
    teacher_model = config.teacher.get("checkpoint_arch") or config.teacher.model
    payload: dict[str, Any] = {
        "dataset": info.name,
        "split": split,
        "student": {"checkpoint": os.path.abspath(path), "model": meta["model"], "step": step},
        "teacher": {"checkpoint": os.path.abspath(teacher_name), "model": teacher_model},
        "intra_kd": {
            "weight": term.weight,
            "taps": [list(p) for p in term.taps],
            "kernel_size": term.kernel_size,
            "moment_weights": list(term.moment_weights),
            "normalizer": term.normalizer,
            "skew_denominator": term.skew_denominator,
            "min_mass": term.min_mass,
            "skew_floor": term.skew_floor,
        },
        "class_names": list(info.class_names),
        "images": [],
    }
    keys = dataset.keys(split)
    logging.info(
        "[explain] %s %s: %d image(s), student %s (step %d) vs teacher %s -> %s",
        info.name,
        split,
        num_images,
        meta["model"],
        step,
        teacher_model,
        out_dir,
    )
    # One image per forward pass: a figure does not depend on num_images or on the images
    # beside it (the compiled convolutions and pooling sums round differently per batch shape,
    # which the variance and skewness of nodes of a fraction of a pixel amplify).
    for batch in dataset.eval_batches(split, 1):
        if len(payload["images"]) >= num_images:
            break
        if not batch["mask"][0]:  # a corrupt sample masked by config.data.skip_corrupt
            continue
        index, key = int(batch["index"][0]), keys[int(batch["index"][0])]
        label_hw = np.asarray(batch["label"][0])
        if not (label_hw != info.ignore_label).any():
            if not payload["images"]:
                raise ConfigError(
                    f"mode=explain: {key} of split {split!r} carries no labels, so there are no "
                    "regions to compare; set --config.eval.split to a labelled split (e.g. valid)"
                )
            logging.warning("[explain] %s has no labelled pixel: every class is absent", key)
        s_taps, t_taps = jax.device_get(forward(student_vars, teacher_vars, batch["image"]))
        result = explain_batch(
            s_taps, t_taps, label_hw[None], info.num_classes, term, info.ignore_label
        )
        i = len(payload["images"])
        title = [
            f"What IntRA-KD matches: {info.name} {split} image {index} ({key})",
            f"student {meta['model']} {path} (step {step})",
            f"teacher {teacher_model} {teacher_name}",
            f"IntRA-KD loss on this image {float(result['intra_kd'][0]):.4g}; x lambda "
            f"{term.weight:g} = {float(result['weighted'][0]):.4g} in the student's objective "
            f"(kernel {term.kernel_size}, normaliser {term.normalizer}, min_mass "
            f"{term.min_mass:g}, skew_floor {term.skew_floor:g})",
        ]
        rgb = visualize.denormalize(batch["image"][0], config.data.mean_rgb, config.data.std_rgb)
        png = os.path.join(out_dir, f"image_{i:02d}.png")
        visualize.save_png(png, render(result, 0, rgb, label_hw, info.class_names, title))
        payload["images"].append(
            {
                "index": index,
                "key": key,
                "figure": os.path.abspath(png),
                "intra_kd": float(result["intra_kd"][0]),
                "weighted": float(result["weighted"][0]),
                "label_pixels": result["label_pixels"][0],
                "pairs": _figure_json(result, 0),
            }
        )
        per_moment = ", ".join(
            f"{m} {float(mom['loss'][0]):.4g}"
            for pair in result["pairs"]
            for m, mom in pair["moments"].items()
        )
        logging.info(
            "[explain] image %d/%d %s: IntRA-KD %.4g (%s) -> %s",
            i + 1,
            num_images,
            key,
            float(result["intra_kd"][0]),
            per_moment,
            png,
        )
    payload["mean_intra_kd"] = float(np.mean([im["intra_kd"] for im in payload["images"]]))
    json_path = os.path.join(out_dir, "explain.json")
    report.write_json(json_path, payload)
    logging.info("[explain] numbers -> %s", json_path)
    print(f"\nmode=explain: {len(payload['images'])} figure(s) and {json_path}")
    return payload
