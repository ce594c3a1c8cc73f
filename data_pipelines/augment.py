"""Shared image/label augmentation for segmentation pipelines (tf.data graph ops).

All randomness is stateless: every random draw derives from a 2-element seed tensor that the
caller builds from ``(run seed, global stream position)``, so an example gets the same
augmentation whichever process loads it and whether or not the run was resumed.

Images reach these functions already normalised (``(rgb - mean) / std``), so padding and
rotation fill the image with 0, i.e. with the mean colour, and the label with ``ignore_label``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from data_pipelines.errors import DataConfigError


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """Training augmentation settings (``config.data.augment``).

    Attributes:
        enabled: False turns every augmentation off (plain resize to the network size).
        scale_range: (low, high) of the random scale applied to the network size before the random
            crop/pad back to it; (1.0, 1.0) disables scaling.
        scale_of: what ``scale_range`` multiplies: ``"output"`` (the network size ``image_hw``; the
            scaled image is then ``round(image_hw * s)``) or ``"source"`` (the decoded, top-cropped
            image, like IntRA-KD's ``GroupRandomScale``: ``round(source_hw * s)``, aspect kept).
        rotation_deg: maximum absolute rotation angle in degrees (uniform in [-r, r]); 0 disables.
        rotation_prob: probability of rotating an example at all (IntRA-KD ApolloScape: 0.5).
        hflip: random horizontal flip with probability 0.5; the label's class ids go through the
            dataset's left/right swap table.
        brightness: maximum additive brightness change as a fraction of 255 (uniform in [-b, b]);
            0 disables.
    """

    enabled: bool = False
    scale_range: tuple[float, float] = (1.0, 1.0)
    scale_of: str = "output"
    rotation_deg: float = 0.0
    rotation_prob: float = 1.0
    hflip: bool = False
    brightness: float = 0.0

    @classmethod
    def from_config(cls, cfg, where: str = "config.data.augment") -> AugmentSpec:
        """Builds a validated spec from a ConfigDict/dict (missing fields take the defaults).

        Args:
            cfg: the ``augment`` config node, or None (= disabled).
            where: dotted name of the node, used in error messages.

        Returns:
            The spec.

        Raises:
            DataConfigError: a field has the wrong type or range.
        """
        if cfg is None:
            return cls()

        def get(name, default):
            value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
            return default if value is None else value

        scale = get("scale_range", (1.0, 1.0))
        try:
            lo, hi = (float(v) for v in scale)
        except (TypeError, ValueError):
            raise DataConfigError(
                f"{where}.scale_range must be a pair (low, high) of positive floats, got {scale!r}"
            ) from None
        if not (0.0 < lo <= hi) or not math.isfinite(hi):
            raise DataConfigError(
                f"{where}.scale_range must satisfy 0 < low <= high, got {scale!r}"
            )

        def number(name, default):
            value = get(name, default)
            try:
                out = float(value)
            except (TypeError, ValueError):
                out = math.nan
            if not math.isfinite(out) or isinstance(value, bool):
                raise DataConfigError(f"{where}.{name} must be a finite number, got {value!r}")
            return out

        spec = cls(
            enabled=bool(get("enabled", False)),
            scale_range=(lo, hi),
            scale_of=str(get("scale_of", "output")),
            rotation_deg=number("rotation_deg", 0.0),
            rotation_prob=number("rotation_prob", 1.0),
            hflip=bool(get("hflip", False)),
            brightness=number("brightness", 0.0),
        )
        if not (0.0 <= spec.rotation_deg < 90.0):
            raise DataConfigError(
                f"{where}.rotation_deg must be in [0, 90), got {spec.rotation_deg!r}"
            )
        if spec.scale_of not in ("output", "source"):
            raise DataConfigError(
                f"{where}.scale_of must be 'output' or 'source', got {spec.scale_of!r}"
            )
        if not (0.0 <= spec.rotation_prob <= 1.0):
            raise DataConfigError(
                f"{where}.rotation_prob must be in [0, 1], got {spec.rotation_prob!r}"
            )
        if not (0.0 <= spec.brightness <= 1.0):
            raise DataConfigError(
                f"{where}.brightness must be in [0, 1] (fraction of 255), got {spec.brightness!r}"
            )
        return spec


def resize_pair(
    image_hwc: tf.Tensor, label_hw1: tf.Tensor, out_hw: Sequence[int]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Resizes an image (bilinear, float32) and its label (nearest, dtype kept) to ``out_hw``."""
    out_hw = [int(out_hw[0]), int(out_hw[1])]
    image = tf.image.resize(tf.cast(image_hwc, tf.float32), out_hw, method="bilinear")
    label = tf.image.resize(label_hw1, out_hw, method="nearest")
    return image, label


def hflip_pair(
    image_hwc: tf.Tensor, label_hw1: tf.Tensor, class_lut: np.ndarray | None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirrors image and label left-right and remaps label ids through ``class_lut``.

    Args:
        image_hwc: (H, W, C) image.
        label_hw1: (H, W, 1) uint8 label.
        class_lut: uint8 table of 256 entries mapping each label value to its mirrored class
            (e.g. left lane <-> right lane), or None when classes are mirror-symmetric.

    Returns:
        The flipped (image, label).
    """
    image = tf.reverse(image_hwc, axis=[1])
    label = tf.reverse(label_hw1, axis=[1])
    if class_lut is not None:
        lut = tf.constant(np.asarray(class_lut, dtype=np.uint8))
        label = tf.gather(lut, tf.cast(label, tf.int32))
    return image, label


def rotate_pair(
    image_hwc: tf.Tensor, label_hw1: tf.Tensor, angle_rad: tf.Tensor, ignore_label: int = 255
) -> tuple[tf.Tensor, tf.Tensor]:
    """Rotates image (bilinear, fill 0) and label (nearest, fill ``ignore_label``) about the centre.

    Pixel centres sit at integer coordinates, so the centre of rotation is ((W-1)/2, (H-1)/2)
    and an angle of 0 reproduces the input exactly.
    """
    shape = tf.shape(image_hwc)
    h = tf.cast(shape[0], tf.float32)
    w = tf.cast(shape[1], tf.float32)
    cx = (w - 1.0) / 2.0
    cy = (h - 1.0) / 2.0
    c = tf.cos(angle_rad)
    s = tf.sin(angle_rad)
    # The op maps each OUTPUT pixel (x, y) to the INPUT location it samples.
    transform = tf.stack([c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0.0, 0.0])[None]
    out_shape = shape[:2]
    image = tf.raw_ops.ImageProjectiveTransformV3(
        images=image_hwc[None],
        transforms=transform,
        output_shape=out_shape,
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    label = tf.raw_ops.ImageProjectiveTransformV3(
        images=label_hw1[None],
        transforms=transform,
        output_shape=out_shape,
        fill_value=float(ignore_label),
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )[0]
    return image, label


def _crop_or_pad_plan(size: tf.Tensor, out: int, seed: tf.Tensor):
    """Random (pad_before, pad_after, crop_start) taking a length ``size`` axis to ``out``."""
    extra = size - out
    r = tf.random.stateless_uniform(
        [], seed=seed, minval=0, maxval=tf.abs(extra) + 1, dtype=tf.int32
    )
    zero = tf.constant(0, tf.int32)
    pad_before = tf.where(extra < 0, r, zero)
    pad_after = tf.where(extra < 0, -extra - r, zero)
    crop_start = tf.where(extra > 0, r, zero)
    return pad_before, pad_after, crop_start


def augment_pair(
    image_hwc: tf.Tensor,
    label_hw1: tf.Tensor,
    out_hw: Sequence[int],
    seed: tf.Tensor,
    spec: AugmentSpec,
    pixel_scale: Sequence[float] = (1.0, 1.0, 1.0),
    class_lut: np.ndarray | None = None,
    ignore_label: int = 255,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random scale -> brightness -> crop/pad to ``out_hw`` -> rotation -> horizontal flip.

    Args:
        image_hwc: normalised float32 image at source resolution, (h, w, 3).
        label_hw1: uint8 label at the same resolution, (h, w, 1).
        out_hw: network input size (H, W).
        seed: int64 (2,) stateless seed; the whole augmentation is a pure function of it.
        spec: augmentation settings; ``spec.enabled`` must be True.
        pixel_scale: 1/std per channel, converting the brightness delta (raw 0..255 units) to
            normalised units.
        class_lut: label remap applied on horizontal flip (see ``hflip_pair``).
        ignore_label: label value for padded / rotated-in pixels.

    Returns:
        (image float32 (H, W, 3), label uint8 (H, W, 1)).
    """
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)

    lo, hi = spec.scale_range
    scale = tf.random.stateless_uniform([], seed=seeds[0], minval=lo, maxval=hi)
    if lo == hi:
        scale = tf.constant(lo, tf.float32)
    if spec.scale_of == "source":
        src_hw = tf.cast(tf.shape(image_hwc)[:2], tf.float32)
        base_h, base_w = src_hw[0], src_hw[1]
    else:
        base_h, base_w = float(out_h), float(out_w)
    new_h = tf.maximum(1, tf.cast(tf.round(base_h * scale), tf.int32))
    new_w = tf.maximum(1, tf.cast(tf.round(base_w * scale), tf.int32))
    image = tf.image.resize(tf.cast(image_hwc, tf.float32), tf.stack([new_h, new_w]))
    label = tf.image.resize(label_hw1, tf.stack([new_h, new_w]), method="nearest")

    if spec.brightness > 0.0:
        delta = tf.random.stateless_uniform(
            [], seed=seeds[1], minval=-spec.brightness, maxval=spec.brightness
        )
        image = image + delta * 255.0 * tf.constant(pixel_scale, tf.float32)

    pt, pb, cy = _crop_or_pad_plan(new_h, out_h, seeds[2])
    pl, pr, cx = _crop_or_pad_plan(new_w, out_w, seeds[3])
    image = tf.pad(image, [[pt, pb], [pl, pr], [0, 0]])
    label = tf.pad(label, [[pt, pb], [pl, pr], [0, 0]], constant_values=ignore_label)
    image = image[cy : cy + out_h, cx : cx + out_w]
    label = label[cy : cy + out_h, cx : cx + out_w]
    image = tf.ensure_shape(image, [out_h, out_w, 3])
    label = tf.ensure_shape(label, [out_h, out_w, 1])

    if spec.rotation_deg > 0.0:
        max_rad = math.radians(spec.rotation_deg)
        angle = tf.random.stateless_uniform([], seed=seeds[4], minval=-max_rad, maxval=max_rad)
        if spec.rotation_prob < 1.0:
            # The coin uses a seed folded from the angle's, so specs with rotation_prob 1 keep
            # exactly the random streams they had before this option existed.
            coin_seed = tf.random.experimental.stateless_fold_in(seeds[4], 1)
            rotate = tf.random.stateless_uniform([], seed=coin_seed) < spec.rotation_prob
            angle = tf.where(rotate, angle, 0.0)
        image, label = rotate_pair(image, label, angle, ignore_label)

    if spec.hflip:
        flip = tf.random.stateless_uniform([], seed=seeds[5]) < 0.5
        image, label = tf.cond(
            flip,
            lambda: hflip_pair(image, label, class_lut),
            lambda: (image, label),
        )
    return image, label
