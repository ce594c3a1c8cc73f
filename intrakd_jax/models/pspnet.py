"""PSPNet (Zhao et al., 2017) on a dilated ResNet, the IntRA-KD teacher, as a Flax Linen module.

Backbone (output stride 8) -> pyramid pooling module (per bin: adaptive average pool to b x b,
1x1 conv to C / len(bins) channels, BN, ReLU, bilinear upsample; concatenated with the input)
-> 3x3 conv to ``head_channels`` -> BN -> ReLU (the "psp" tap) -> channel dropout -> 1x1
classifier -> bilinear upsample of the logits to the input size.

With ResNet-101, the 7x7 stem and 37 classes this has 65,592,933 parameters: backbone 42,500,160,
pyramid branches 4 x (2048 x 512 + 1024) = 4,198,400, head conv + BN 4096 x 512 x 9 + 1024 =
18,875,392, classifier 512 x 37 + 37 = 18,981.

``scale_series`` replaces the adaptive pooling by the pyramid of the released IntRA-KD teacher
(``context_pooling.PSPP`` of cardwing/Codes-for-IntRA-KD, same parameters), and ``align_corners``
gives every bilinear resize the semantics of PyTorch 0.3's ``upsample``, under which that teacher
was trained; together they reproduce the released ``pspnet_46_6.pth.tar`` (WEIGHTS.md 1).
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from intrakd_jax.models.batch_norm import norm_act
from intrakd_jax.models.conv import Conv, ConvImpl, check_conv_impl
from intrakd_jax.models.erfnet import _check_rates
from intrakd_jax.models.layers import ChannelDropout, batch_norm
from intrakd_jax.models.resnet import KAIMING_FAN_OUT, DilatedResNet, resnet_feature_channels


def _check_sizes(where: str, in_size: int, out_size: int) -> None:
    if in_size < 1 or out_size < 1:
        raise ValueError(f"{where}: sizes must be >= 1, got in_size={in_size}, out_size={out_size}")


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Averaging matrix of PyTorch ``AdaptiveAvgPool`` along one axis.

    Bin ``i`` averages input positions ``floor(i * n / b) <= j < ceil((i + 1) * n / b)``; bins may
    overlap when ``n`` is not divisible by ``b``, and repeat inputs when ``b > n``.

    Args:
      in_size: Input length ``n`` (>= 1).
      out_size: Number of bins ``b`` (>= 1).

    Returns:
      float32 array (out_size, in_size) whose rows sum to 1.

    Raises:
      ValueError: If a size is not positive.
    """
    _check_sizes("adaptive_pool_matrix", in_size, out_size)
    i = np.arange(out_size)
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil division
    j = np.arange(in_size)
    member = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return (member / (end - start)[:, None]).astype(np.float32)


def bilinear_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
    """Interpolation matrix of PyTorch's bilinear ``interpolate(size=...)`` along one axis.

    No antialiasing when shrinking (PyTorch samples two neighbours whatever the ratio).
    ``align_corners=True`` maps output ``i`` to input ``i * (n - 1) / (m - 1)`` (``0`` when
    ``m == 1``), the only behaviour of PyTorch 0.3's ``upsample``; ``False`` maps it to
    ``(i + 0.5) * n / m - 0.5`` clamped at 0 (half-pixel centres, PyTorch >= 0.4's default).

    Args:
      in_size: Input length ``n`` (>= 1).
      out_size: Output length ``m`` (>= 1).
      align_corners: Which of the two mappings.

    Returns:
      float32 array (out_size, in_size) whose rows sum to 1.

    Raises:
      ValueError: If a size is not positive.
    """
    _check_sizes("bilinear_matrix", in_size, out_size)
    i = np.arange(out_size, dtype=np.float64)
    if align_corners:
        src = i * ((in_size - 1) / (out_size - 1)) if out_size > 1 else np.zeros_like(i)
    else:
        src = np.maximum((i + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low
    matrix = np.zeros((out_size, in_size), np.float64)
    np.add.at(matrix, (np.arange(out_size), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(out_size), high), frac)
    return matrix.astype(np.float32)


def _separable(x_bhwc: jnp.ndarray, rows_oh: np.ndarray, cols_ow: np.ndarray) -> jnp.ndarray:
    """Applies one matrix along H and one along W (two small matmuls)."""
    rows = jnp.asarray(rows_oh, x_bhwc.dtype)
    cols = jnp.asarray(cols_ow, x_bhwc.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x_bhwc, cols)


def adaptive_avg_pool2d(x_bhwc: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
    """PyTorch-compatible ``AdaptiveAvgPool2d`` on NHWC input, as two small matmuls.

    Args:
      x_bhwc: Features (B, H, W, C).
      out_hw: Output (rows, cols).

    Returns:
      Pooled features (B, rows, cols, C) in the input dtype.
    """
    _, h, w, _ = x_bhwc.shape
    return _separable(
        x_bhwc, adaptive_pool_matrix(h, out_hw[0]), adaptive_pool_matrix(w, out_hw[1])
    )


def torch_resize_bilinear(
    x_bhwc: jnp.ndarray, hw: tuple[int, int], align_corners: bool
) -> jnp.ndarray:
    """PyTorch's bilinear ``interpolate`` on NHWC input (see ``bilinear_matrix``)."""
    _, h, w, _ = x_bhwc.shape
    return _separable(
        x_bhwc,
        bilinear_matrix(h, hw[0], align_corners),
        bilinear_matrix(w, hw[1], align_corners),
    )


def _resize_bilinear(
    x_bhwc: jnp.ndarray, hw: tuple[int, int], align_corners: bool = False
) -> jnp.ndarray:
    """Bilinear resize: half-pixel centres (``jax.image.resize``), or ``align_corners=True``."""
    if align_corners:
        return torch_resize_bilinear(x_bhwc, hw, align_corners=True)
    b, _, _, c = x_bhwc.shape
    return jax.image.resize(x_bhwc, (b, hw[0], hw[1], c), method="bilinear")


class PyramidPoolingModule(nn.Module):
    """Concatenates the input with pooled, projected and re-upsampled copies of it."""

    bins: tuple[int, ...]
    reduction_channels: int
    norm: Any
    dtype: Any = jnp.float32
    conv_impl: ConvImpl = "auto"
    align_corners: bool = False

    def _branch(self, i: int, y_bhwc: jnp.ndarray) -> jnp.ndarray:
        """1x1 conv (no bias) -> BN -> ReLU of branch ``i`` (``conv_i``, ``bn_i``)."""
        y = Conv(
            self.reduction_channels,
            (1, 1),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=KAIMING_FAN_OUT,
            impl=self.conv_impl,
            name=f"conv_{i}",
        )(y_bhwc)
        return norm_act(self.norm(name=f"bn_{i}"), y, relu=True)

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray) -> jnp.ndarray:
        """Returns (B, H, W, C + len(bins) * reduction_channels)."""
        hw = x_bhwc.shape[1:3]
        outs = [x_bhwc]
        for i, b in enumerate(self.bins):
            y = self._branch(i, adaptive_avg_pool2d(x_bhwc, (b, b)))
            outs.append(_resize_bilinear(y, hw, self.align_corners))
        return jnp.concatenate(outs, axis=-1)


def scale_pyramid_geometry(size: int, scale: int) -> tuple[int, int]:
    """(pooled size, padding) of one axis of a ``ScalePyramidModule`` branch.

    The pooled size is ``max(1, (size - 1) // scale + 1)`` (ceil(size / scale)) and the padding
    makes the axis ``pooled * scale`` long.
    """
    pooled = max(1, (size - 1) // scale + 1)
    return pooled, pooled * scale - size


class ScalePyramidModule(PyramidPoolingModule):
    """The pyramid of the released IntRA-KD PSPNet (``PSPP``, ``scale_series``), same parameters.

    For each scale s, with the input of H x W: pooled size (ph, pw) = (ceil(H / s), ceil(W / s))
    and paddings (pad_h, pad_w) = (ph * s - H, pw * s - W); zero-pad, bilinear-resize to
    (ph, pw), 1x1 conv, BN, ReLU, bilinear-resize by the factor s to (ph * s, pw * s) and crop
    rows ``pad_h // 2 :`` and columns ``pad_w // 2 :`` back to H x W; concatenate the input and
    the branches. The official code hands ``(pad_h // 2, pad_h - pad_h // 2, pad_w // 2,
    pad_w - pad_w // 2)`` to ``F.pad``, which reads it last axis first: the rows get the column
    padding and the columns the row padding. That is what the released weights were trained
    with, so it is reproduced here. ``bins`` holds the scales.
    """

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray) -> jnp.ndarray:
        """Returns (B, H, W, C + len(bins) * reduction_channels)."""
        h, w = x_bhwc.shape[1:3]
        outs = [x_bhwc]
        for i, s in enumerate(self.bins):
            (ph, pad_h), (pw, pad_w) = scale_pyramid_geometry(h, s), scale_pyramid_geometry(w, s)
            pads = ((0, 0), (pad_w // 2, pad_w - pad_w // 2), (pad_h // 2, pad_h - pad_h // 2))
            padded = jnp.pad(x_bhwc, (*pads, (0, 0)))
            y = self._branch(i, torch_resize_bilinear(padded, (ph, pw), self.align_corners))
            y = torch_resize_bilinear(y, (ph * s, pw * s), self.align_corners)
            outs.append(y[:, pad_h // 2 : pad_h // 2 + h, pad_w // 2 : pad_w // 2 + w])
        return jnp.concatenate(outs, axis=-1)


# Backbone stages every dilated-ResNet segmentation model returns as taps.
RESNET_STAGE_TAPS = ("layer1", "layer2", "layer3", "layer4")


def check_backbone_head_fields(module: Any) -> None:
    """Validates the fields a dilated-ResNet segmentation model shares with PSPNet.

    Args:
      module: A model with ``conv_impl``, ``num_classes``, ``head_channels``, ``base_width``,
        ``depth`` and ``dropout_rate`` fields (PSPNet, ResNetStudent).

    Raises:
      ValueError: Naming ``<Class>.<field>`` and what it must be.
    """
    cls = type(module).__name__
    check_conv_impl(f"{cls}.conv_impl", module.conv_impl)
    for field in ("num_classes", "head_channels", "base_width"):
        value = getattr(module, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{cls}.{field} must be a positive int, got {value!r}")
    try:
        resnet_feature_channels(module.depth)
    except ValueError as err:
        raise ValueError(f"{cls}.depth: {err}") from None
    _check_rates(module, ("dropout_rate",))


def backbone_features(module: Any, x: jnp.ndarray, train: bool) -> dict[str, jnp.ndarray]:
    """Runs the ``DilatedResNet`` that ``module``'s fields describe, as its child "backbone".

    Call it inside the module's compact method.

    Args:
      module: A model with PSPNet's backbone fields (depth, base_width, deep_stem, dtype, bn_*,
        conv_impl).
      x: Images (B, H, W, C).
      train: Batch statistics when True, running statistics otherwise.

    Returns:
      The backbone's feature dict (``DilatedResNet``).

    Raises:
      ValueError: If ``x`` is not 4-D (the message names the module's class).
    """
    if getattr(x, "ndim", None) != 4:
        raise ValueError(
            f"{type(module).__name__}: expected images of shape (B, H, W, C), got "
            f"{getattr(x, 'shape', x)}"
        )
    return DilatedResNet(
        depth=module.depth,
        base_width=module.base_width,
        deep_stem=module.deep_stem,
        dtype=module.dtype,
        bn_axis_name=module.bn_axis_name,
        bn_momentum=module.bn_momentum,
        bn_epsilon=module.bn_epsilon,
        conv_impl=module.conv_impl,
        name="backbone",
    )(x, train)


def segmentation_head(
    module: Any,
    feat_bhwc: jnp.ndarray,
    train: bool,
    out_hw: tuple[int, int],
    align_corners: bool = False,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """3x3 conv (no bias) -> BN -> ReLU -> channel dropout -> 1x1 classifier -> bilinear resize.

    Call it inside ``module``'s compact method: the layers ``head_conv``, ``head_bn`` and
    ``classifier`` become children of the module (so PyTorch-style names stay flat).

    Args:
      module: A model with ``head_channels``, ``num_classes``, ``dropout_rate``, ``dtype``,
        ``conv_impl`` and the ``bn_*`` fields.
      feat_bhwc: Features (B, h, w, C).
      train: Batch statistics and dropout when True.
      out_hw: Size the logits are resized to (the input size).
      align_corners: Resize the logits with ``align_corners=True`` semantics (PyTorch 0.3).

    Returns:
      ``(logits_bhwk float32 at out_hw, head_bhwc)``, the latter after the ReLU, before dropout.
    """
    y = Conv(
        module.head_channels,
        (3, 3),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        dtype=module.dtype,
        kernel_init=KAIMING_FAN_OUT,
        impl=module.conv_impl,
        name="head_conv",
    )(feat_bhwc)
    head_bhwc = norm_act(batch_norm(module, train)(name="head_bn"), y, relu=True)
    # PyTorch Dropout2d drops whole channels: one mask per (image, channel).
    y = ChannelDropout(module.dropout_rate, module.bn_axis_name)(head_bhwc, deterministic=not train)
    logits = Conv(
        module.num_classes,
        (1, 1),
        padding="SAME",
        dtype=module.dtype,
        kernel_init=nn.initializers.lecun_normal(),
        impl=module.conv_impl,
        name="classifier",
    )(y)
    return _resize_bilinear(logits.astype(jnp.float32), out_hw, align_corners), head_bhwc


class PSPNet(nn.Module):
    """PSPNet on a dilated ResNet (teacher).

    Call as ``logits_bhwk, taps = model.apply(variables, images_bhwc, train=False)``. Logits
    are float32 at the input resolution (any input size); ``taps`` holds, in the compute dtype,
    the backbone stages ``"layer1"`` (1/4, base_width x expansion channels), ``"layer2"``,
    ``"layer3"``, ``"layer4"`` (1/8; 2, 4 and 8 x base_width x expansion) and ``"psp"`` (1/8,
    ``head_channels``: head conv + BN + ReLU after the pyramid pooling, before dropout).
    ``tap_levels``: "high" is "psp", "mid" is "layer1"; ``sad_taps`` are layer2-4, as for the
    ResNet students.

    Attributes:
      num_classes: Number of output classes.
      dtype: Compute dtype (params stay float32).
      bn_axis_name: Axis name for cross-device BatchNorm statistics (e.g. "data" in shard_map).
      bn_momentum: Flax BatchNorm momentum (0.9 equals PyTorch momentum 0.1).
      bn_epsilon: BatchNorm epsilon.
      depth: ResNet depth, one of 18, 34, 50, 101.
      base_width: ResNet base width (64 standard); shrinks everything for tests.
      deep_stem: Three 3x3 stem convs instead of the 7x7 one (the IntRA-KD teacher uses 7x7).
      bins: Pyramid pooling output sizes (b x b each); unused when ``scale_series`` is set.
      head_channels: Channels of the 3x3 head conv (the "psp" tap).
      dropout_rate: Channel dropout before the classifier.
      conv_impl: "auto" (default: "onednn" where installed, else "fast"), "fast" (CPU-tuned
        convolution gradients, ``models.conv``), "onednn" or "xla" (Flax's ``nn.Conv``
        computation); same parameters.
      scale_series: Non-empty: the released IntRA-KD pyramid (``ScalePyramidModule``, e.g.
        (10, 20, 30, 60)) replaces the adaptive pooling over ``bins``; same parameter names.
      align_corners: Every bilinear resize (pyramid and logits) with ``align_corners=True``, the
        semantics of PyTorch 0.3's ``upsample`` that the released IntRA-KD weights expect.
    """

    num_classes: int
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    depth: int = 101
    base_width: int = 64
    deep_stem: bool = False
    bins: tuple[int, ...] = (1, 2, 3, 6)
    head_channels: int = 512
    dropout_rate: float = 0.1
    conv_impl: ConvImpl = "auto"
    scale_series: tuple[int, ...] = ()
    align_corners: bool = False

    tap_levels: ClassVar[dict[str, str]] = {"high": "psp", "mid": "layer1"}
    sad_taps: ClassVar[tuple[str, ...]] = ("layer2", "layer3", "layer4")

    def __post_init__(self) -> None:
        check_backbone_head_fields(self)
        for field, allow_empty in (("bins", False), ("scale_series", True)):
            values = tuple(getattr(self, field))
            if (not values and not allow_empty) or not all(
                isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in values
            ):
                kind = "a tuple" if allow_empty else "a non-empty tuple"
                raise ValueError(
                    f"PSPNet.{field} must be {kind} of ints >= 1, got {getattr(self, field)!r}"
                )
        if not isinstance(self.align_corners, bool):
            raise ValueError(f"PSPNet.align_corners must be a bool, got {self.align_corners!r}")
        branches = len(self._pyramid())
        if resnet_feature_channels(self.depth, self.base_width) < branches:
            raise ValueError(
                f"PSPNet: {branches} pyramid branches need at least as many backbone channels, "
                f"got {resnet_feature_channels(self.depth, self.base_width)}"
            )
        super().__post_init__()

    def _pyramid(self) -> tuple[int, ...]:
        """The scales of the scale-series pyramid when set, else the pooling bins."""
        return tuple(self.scale_series) or tuple(self.bins)

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, train: bool = False
    ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
        """Runs the network.

        Args:
          x: Images (B, H, W, C), any H and W.
          train: Batch statistics and dropout when True, running statistics otherwise.

        Returns:
          ``(logits_bhwk float32, taps)``.
        """
        feats = backbone_features(self, x, train)
        feat_bhwc = feats["layer4"]
        pyramid = self._pyramid()
        pyramid_cls = ScalePyramidModule if self.scale_series else PyramidPoolingModule
        y = pyramid_cls(
            pyramid,
            feat_bhwc.shape[-1] // len(pyramid),
            batch_norm(self, train),
            self.dtype,
            self.conv_impl,
            self.align_corners,
            name="ppm",
        )(feat_bhwc)
        logits_bhwk, psp_bhwc = segmentation_head(self, y, train, x.shape[1:3], self.align_corners)
        return logits_bhwk, {**{k: feats[k] for k in RESNET_STAGE_TAPS}, "psp": psp_bhwc}
