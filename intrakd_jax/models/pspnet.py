"""PSPNet (Zhao et al., 2017) on a dilated ResNet, the IntRA-KD teacher, as a Flax Linen module.

Backbone (output stride 8) -> pyramid pooling module (per bin: adaptive average pool to b x b,
1x1 conv to C / len(bins) channels, BN, ReLU, bilinear upsample; concatenated with the input)
-> 3x3 conv to ``head_channels`` -> BN -> ReLU (the "psp" tap) -> channel dropout -> 1x1
classifier -> bilinear upsample of the logits to the input size.

With ResNet-101, the 7x7 stem and 37 classes this has 65,592,933 parameters: backbone 42,500,160,
pyramid branches 4 x (2048 x 512 + 1024) = 4,198,400, head conv + BN 4096 x 512 x 9 + 1024 =
18,875,392, classifier 512 x 37 + 37 = 18,981.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from intrakd_jax.models.conv import Conv, ConvImpl, check_conv_impl
from intrakd_jax.models.erfnet import _check_rates
from intrakd_jax.models.layers import batch_norm
from intrakd_jax.models.resnet import KAIMING_FAN_OUT, DilatedResNet, resnet_feature_channels


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
    if in_size < 1 or out_size < 1:
        raise ValueError(
            f"adaptive_pool_matrix: sizes must be >= 1, got in_size={in_size}, out_size={out_size}"
        )
    i = np.arange(out_size)
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil division
    j = np.arange(in_size)
    member = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return (member / (end - start)[:, None]).astype(np.float32)


def adaptive_avg_pool2d(x_bhwc: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
    """PyTorch-compatible ``AdaptiveAvgPool2d`` on NHWC input, as two small matmuls.

    Args:
      x_bhwc: Features (B, H, W, C).
      out_hw: Output (rows, cols).

    Returns:
      Pooled features (B, rows, cols, C) in the input dtype.
    """
    _, h, w, _ = x_bhwc.shape
    ph_oh = jnp.asarray(adaptive_pool_matrix(h, out_hw[0]), x_bhwc.dtype)
    pw_ow = jnp.asarray(adaptive_pool_matrix(w, out_hw[1]), x_bhwc.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", ph_oh, x_bhwc, pw_ow)


def _resize_bilinear(x_bhwc: jnp.ndarray, hw: tuple[int, int]) -> jnp.ndarray:
    """Bilinear resize (half-pixel centres, i.e. PyTorch ``align_corners=False``)."""
    b, _, _, c = x_bhwc.shape
    return jax.image.resize(x_bhwc, (b, hw[0], hw[1], c), method="bilinear")


class PyramidPoolingModule(nn.Module):
    """Concatenates the input with pooled, projected and re-upsampled copies of it."""

    bins: tuple[int, ...]
    reduction_channels: int
    norm: Any
    dtype: Any = jnp.float32
    conv_impl: ConvImpl = "fast"

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray) -> jnp.ndarray:
        """Returns (B, H, W, C + len(bins) * reduction_channels)."""
        hw = x_bhwc.shape[1:3]
        outs = [x_bhwc]
        for i, b in enumerate(self.bins):
            y = adaptive_avg_pool2d(x_bhwc, (b, b))
            y = Conv(
                self.reduction_channels,
                (1, 1),
                use_bias=False,
                dtype=self.dtype,
                kernel_init=KAIMING_FAN_OUT,
                impl=self.conv_impl,
                name=f"conv_{i}",
            )(y)
            y = nn.relu(self.norm(name=f"bn_{i}")(y))
            outs.append(_resize_bilinear(y, hw))
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
    module: Any, feat_bhwc: jnp.ndarray, train: bool, out_hw: tuple[int, int]
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
    head_bhwc = nn.relu(batch_norm(module, train)(name="head_bn")(y))
    # PyTorch Dropout2d drops whole channels: share the mask over H and W.
    y = nn.Dropout(module.dropout_rate, broadcast_dims=(1, 2))(head_bhwc, deterministic=not train)
    logits = Conv(
        module.num_classes,
        (1, 1),
        padding="SAME",
        dtype=module.dtype,
        kernel_init=nn.initializers.lecun_normal(),
        impl=module.conv_impl,
        name="classifier",
    )(y)
    return _resize_bilinear(logits.astype(jnp.float32), out_hw), head_bhwc


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
      bins: Pyramid pooling output sizes (b x b each).
      head_channels: Channels of the 3x3 head conv (the "psp" tap).
      dropout_rate: Channel dropout before the classifier.
      conv_impl: "fast" (CPU-tuned convolution gradients, ``models.conv``) or "xla" (Flax's
        ``nn.Conv`` computation); same parameters.
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
    conv_impl: ConvImpl = "fast"

    tap_levels: ClassVar[dict[str, str]] = {"high": "psp", "mid": "layer1"}
    sad_taps: ClassVar[tuple[str, ...]] = ("layer2", "layer3", "layer4")

    def __post_init__(self) -> None:
        check_backbone_head_fields(self)
        bins = tuple(self.bins)
        if not bins or not all(isinstance(b, int) and not isinstance(b, bool) for b in bins):
            raise ValueError(f"PSPNet.bins must be a non-empty tuple of ints, got {self.bins!r}")
        if min(bins) < 1:
            raise ValueError(f"PSPNet.bins must all be >= 1, got {self.bins!r}")
        if resnet_feature_channels(self.depth, self.base_width) < len(bins):
            raise ValueError(
                f"PSPNet: {len(bins)} bins need at least as many backbone channels, got "
                f"{resnet_feature_channels(self.depth, self.base_width)}"
            )
        super().__post_init__()

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
        bins = tuple(self.bins)
        y = PyramidPoolingModule(
            bins,
            feat_bhwc.shape[-1] // len(bins),
            batch_norm(self, train),
            self.dtype,
            self.conv_impl,
            name="ppm",
        )(feat_bhwc)
        logits_bhwk, psp_bhwc = segmentation_head(self, y, train, x.shape[1:3])
        return logits_bhwk, {**{k: feats[k] for k in RESNET_STAGE_TAPS}, "psp": psp_bhwc}
