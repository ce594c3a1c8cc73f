"""Dilated ResNet backbone (output stride 8) for the PSPNet teacher, as Flax Linen modules.

Follows the dilated ResNet of the IntRA-KD PSPNet code: layer3 has stride 1 and dilation 2 and
layer4 stride 1 and dilation 4 in every block, a block gets a projection shortcut whenever its
stride or dilation is not 1 or its width changes, bottleneck blocks put the stride on the 3x3
conv, and basic blocks dilate only their first 3x3 conv. Padding is explicit (PyTorch style) so
converted torchvision/PyTorch weights give the same outputs. Names mirror PyTorch keys
(``layer3.4.conv2`` becomes ``layer3_4/conv2``, ``downsample.0/1`` become
``downsample_conv/downsample_bn``).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from intrakd_jax.models.batch_norm import norm_act
from intrakd_jax.models.conv import Conv, ConvImpl, check_conv_impl
from intrakd_jax.models.layers import batch_norm

# PyTorch ResNets init convs with normal(0, sqrt(2 / (k * k * out_channels))): He, fan-out.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# depth -> (block kind, blocks per stage)
RESNET_LAYOUTS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}

# Per stage: (stride, dilation); gives output stride 8.
_STAGE_STRIDES = (1, 2, 1, 1)
_STAGE_DILATIONS = (1, 1, 2, 4)


def _pad(k: int, d: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    """PyTorch 'same-ish' padding ``d * (k - 1) // 2`` on both sides of both axes."""
    p = d * (k - 1) // 2
    return ((p, p), (p, p))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    planes: int
    stride: int
    dilation: int
    has_downsample: bool
    conv: Any
    norm: Any
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray) -> jnp.ndarray:
        """Applies the block."""
        s, d = self.stride, self.dilation
        y = self.conv(
            self.planes,
            (3, 3),
            strides=(s, s),
            padding=_pad(3, d),
            kernel_dilation=(d, d),
            name="conv1",
        )(x_bhwc)
        y = norm_act(self.norm(name="bn1"), y, relu=True)
        y = self.conv(self.planes, (3, 3), padding=_pad(3), name="conv2")(y)
        shortcut_bhwc = self._shortcut(x_bhwc)
        return norm_act(self.norm(name="bn2"), y, relu=True, residual_bhwc=shortcut_bhwc)

    def _shortcut(self, x_bhwc: jnp.ndarray) -> jnp.ndarray:
        if not self.has_downsample:
            return x_bhwc
        s = self.stride
        r = self.conv(
            self.planes * self.expansion,
            (1, 1),
            strides=(s, s),
            padding="VALID",
            name="downsample_conv",
        )(x_bhwc)
        return self.norm(name="downsample_bn")(r)


class Bottleneck(BasicBlock):
    """1x1 reduce, 3x3 (strided, dilated), 1x1 expand x4, with a residual (ResNet-50/101)."""

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray) -> jnp.ndarray:
        """Applies the block."""
        s, d = self.stride, self.dilation
        y = self.conv(self.planes, (1, 1), padding="VALID", name="conv1")(x_bhwc)
        y = norm_act(self.norm(name="bn1"), y, relu=True)
        y = self.conv(
            self.planes,
            (3, 3),
            strides=(s, s),
            padding=_pad(3, d),
            kernel_dilation=(d, d),
            name="conv2",
        )(y)
        y = norm_act(self.norm(name="bn2"), y, relu=True)
        y = self.conv(self.planes * self.expansion, (1, 1), padding="VALID", name="conv3")(y)
        shortcut_bhwc = self._shortcut(x_bhwc)
        return norm_act(self.norm(name="bn3"), y, relu=True, residual_bhwc=shortcut_bhwc)


def resnet_feature_channels(depth: int, base_width: int = 64) -> int:
    """Channels of the layer4 output of a ``DilatedResNet(depth, base_width)``.

    Args:
      depth: One of ``RESNET_LAYOUTS``.
      base_width: Width of layer1's 3x3 convs (64 in the standard ResNets).

    Returns:
      ``8 * base_width * expansion`` (512 for ResNet-18/34, 2048 for ResNet-50/101).
    """
    kind, _ = _layout(depth)
    expansion = Bottleneck.expansion if kind == "bottleneck" else BasicBlock.expansion
    return 8 * base_width * expansion


def _layout(depth: int) -> tuple[str, tuple[int, int, int, int]]:
    if depth not in RESNET_LAYOUTS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth!r}")
    return RESNET_LAYOUTS[depth]


class DilatedResNet(nn.Module):
    """ResNet with output stride 8 (layer3 dilation 2, layer4 dilation 4), no classifier.

    Returns a dict of NHWC features in the compute dtype: ``"stem"`` (1/4, after the max pool),
    ``"layer1"`` (1/4), ``"layer2"``, ``"layer3"``, ``"layer4"`` (all 1/8). Sizes round up like
    PyTorch: an H-pixel input gives ``ceil(ceil(ceil(H / 2) / 2) / 2)`` rows at 1/8.

    Attributes:
      depth: 18, 34 (basic blocks), 50 or 101 (bottleneck blocks).
      base_width: Width of layer1's 3x3 convs; stage widths are base_width x (1, 2, 4, 8).
      deep_stem: Three 3x3 convs (widths w, w, 2w; PSPNet/semseg ResNets) instead of one 7x7.
      dtype: Compute dtype (params stay float32).
      bn_axis_name: Axis name for cross-device BatchNorm statistics.
      bn_momentum: Flax BatchNorm momentum (0.9 equals PyTorch momentum 0.1).
      bn_epsilon: BatchNorm epsilon.
      conv_impl: "auto" (default: "onednn" where installed, else "fast"), "fast" (CPU-tuned
        convolution gradients, ``models.conv``), "onednn" or "xla" (Flax's ``nn.Conv``
        computation); same parameters.
    """

    depth: int = 101
    base_width: int = 64
    deep_stem: bool = False
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    conv_impl: ConvImpl = "auto"

    def __post_init__(self) -> None:
        _layout(self.depth)
        check_conv_impl("DilatedResNet.conv_impl", self.conv_impl)
        if isinstance(self.base_width, bool) or not isinstance(self.base_width, int):
            raise ValueError(f"DilatedResNet.base_width must be an int, got {self.base_width!r}")
        if self.base_width < 1:
            raise ValueError(f"DilatedResNet.base_width must be >= 1, got {self.base_width}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        """Runs the backbone on images ``x`` (B, H, W, C)."""
        if x.ndim != 4:
            raise ValueError(f"DilatedResNet: expected images (B, H, W, C), got shape {x.shape}")
        kind, blocks_per_stage = _layout(self.depth)
        block_cls = Bottleneck if kind == "bottleneck" else BasicBlock
        conv = functools.partial(
            Conv,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=KAIMING_FAN_OUT,
            impl=self.conv_impl,
        )
        norm = batch_norm(self, train)
        w = self.base_width
        y = x.astype(self.dtype)
        if self.deep_stem:
            stem_widths = (w, w, 2 * w)
            for i, width in enumerate(stem_widths):
                stride = 2 if i == 0 else 1
                y = conv(
                    width, (3, 3), strides=(stride, stride), padding=_pad(3), name=f"conv{i + 1}"
                )(y)
                y = norm_act(norm(name=f"bn{i + 1}"), y, relu=True)
            inplanes = 2 * w
        else:
            y = conv(w, (7, 7), strides=(2, 2), padding=_pad(7), name="conv1")(y)
            y = norm_act(norm(name="bn1"), y, relu=True)
            inplanes = w
        # PyTorch pads max pooling with -inf; nn.max_pool pads with the -inf init value too.
        y = nn.max_pool(y, (3, 3), strides=(2, 2), padding=_pad(3))
        feats = {"stem": y}
        for stage, num_blocks in enumerate(blocks_per_stage):
            planes = w * 2**stage
            stride, dilation = _STAGE_STRIDES[stage], _STAGE_DILATIONS[stage]
            for j in range(num_blocks):
                first = j == 0
                block_stride = stride if first else 1
                has_downsample = first and (
                    stride != 1 or dilation != 1 or inplanes != planes * block_cls.expansion
                )
                y = block_cls(
                    planes=planes,
                    stride=block_stride,
                    dilation=dilation,
                    has_downsample=has_downsample,
                    conv=conv,
                    norm=norm,
                    name=f"layer{stage + 1}_{j}",
                )(y)
                inplanes = planes * block_cls.expansion
            feats[f"layer{stage + 1}"] = y
        return feats
