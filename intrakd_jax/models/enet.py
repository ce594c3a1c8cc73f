"""ENet (Paszke et al., 2016) in the lane-detection layout of ENet-SAD, as a Flax Linen module.

Layer list: the authors' Torch ENet (e-lab/ENet-training ``models/encoder.lua`` and
``decoder.lua``), with the extra 1/8 encoder stage of ENet-SAD (Hou et al., ICCV 2019,
cardwing/Codes-for-Lane-Detection ``ENet-Label-Torch``): the encoder blocks E1 (1/4), E2, E3
and E4 (1/8, E3 and E4 repeat E2's eight bottlenecks without its downsampler, with their own
weights) and the max-unpooling decoder D1, D2. ENet-SAD's lane-existence branch is left out.
ENet-Label-Torch has no Lua definition of its network (training starts from a serialised model),
so the pieces come from the ENet code and the ENet-SAD paper; the decoder reads E4, as ENet's
decoder reads its last encoder stage.

Per the Torch code: bottleneck width ``out_channels // 4``; bias only on the initial 3x3 conv,
the middle conv of every bottleneck (the second half of an asymmetric pair) and the transposed
convolutions; BatchNorm epsilon 1e-3; per-channel PReLU (slopes start at 0.25) in the encoder,
ReLU in the decoder; spatial (channel) dropout 0.01 in E1 and 0.1 from E2 on, none in the
decoder; a downsampling bottleneck's shortcut is a 2x2 max pool padded with zero channels, an
upsampling bottleneck's is a 1x1 conv + BN max-unpooled with the indices of the matching encoder
pool. Module names follow the PyTorch ENet port (davidtvs/PyTorch-ENet: ``downsample1_0``,
``regular1_1``, ``dilated2_2``, ``asymmetric2_3``, ...), with E3/E4 numbered from 1 like the
paper's table and the decoder stages numbered 5 and 6 after E4.
"""

from __future__ import annotations

import functools
import re
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from intrakd_jax.models.conv import Conv, ConvImpl, check_conv_impl, max_pool
from intrakd_jax.models.erfnet import (
    _TORCH_DEFAULT_INIT,
    _check_images,
    _check_positive_int,
    _check_rates,
    _check_widths,
    torch_conv_transpose_2d,
)
from intrakd_jax.models.layers import ChannelDropout, batch_norm, norm_axis_name

# ENet's bottlenecks 2.1-2.8 (repeated as 3.1-3.8 and, in ENet-SAD, 4.1-4.8).
ENET_STAGE_BLOCKS: tuple[str, ...] = (
    "regular",
    "dilated2",
    "asymmetric5",
    "dilated4",
    "regular",
    "dilated8",
    "asymmetric5",
    "dilated16",
)

_BLOCK_SPEC = re.compile(r"(regular)|(dilated|asymmetric)([1-9][0-9]*)")


def parse_enet_block(spec: str) -> tuple[str, int]:
    """Splits an ENet block spec into (kind, size).

    Args:
      spec: "regular" (3x3 conv), "dilatedD" (3x3 conv with dilation D) or "asymmetricK"
        (a Kx1 conv then a 1xK conv, K odd).

    Returns:
      ``("regular", 1)``, ``("dilated", D)`` or ``("asymmetric", K)``.

    Raises:
      ValueError: For any other string, or an even K.
    """
    match = _BLOCK_SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(
            f"ENet.stage_blocks: bad block {spec!r}; expected 'regular', 'dilated<D>' or "
            "'asymmetric<K>' (e.g. 'dilated4', 'asymmetric5')"
        )
    if match.group(1):
        return "regular", 1
    kind, size = match.group(2), int(match.group(3))
    if kind == "asymmetric" and size % 2 == 0:
        raise ValueError(f"ENet.stage_blocks: {spec!r} needs an odd kernel length")
    return kind, size


class PReLU(nn.Module):
    """Per-channel PReLU, Torch/PyTorch ``nn.PReLU(C)``: one slope per channel, initially 0.25."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray) -> jnp.ndarray:
        """``x`` where positive, ``slope[c] * x`` elsewhere."""
        slope = self.param(
            "negative_slope", nn.initializers.constant(0.25), (x_bhwc.shape[-1],), jnp.float32
        )
        slope = slope.astype(self.dtype)
        return jnp.where(x_bhwc >= 0, x_bhwc, slope * x_bhwc)


def max_unpool_2x2(
    y_bhwc: jnp.ndarray, pool_input_bhwc: jnp.ndarray, impl: ConvImpl = "auto"
) -> jnp.ndarray:
    """``MaxUnpool2d(2)`` with the indices of a 2x2 max pool over ``pool_input_bhwc``.

    Each value of ``y`` goes to the position of its window's maximum in the pooled input (the
    first one in row-major order on ties, as Torch and PyTorch record it), zeros elsewhere.
    That map is exactly the transpose of the max pool at ``pool_input``, so it is taken from the
    pool's VJP rather than re-derived. The pool input only chooses positions: no gradient flows
    into it.

    Args:
      y_bhwc: Values (B, H/2, W/2, C).
      pool_input_bhwc: What the encoder pooled, (B, H, W, C) with even H and W.
      impl: ``models.conv`` implementation of the pool (and so of its transpose).

    Returns:
      (B, H, W, C) in the dtype of ``pool_input_bhwc``.
    """
    pool = functools.partial(max_pool, window=(2, 2), strides=(2, 2), padding="VALID", impl=impl)
    pooled, unpool = jax.vjp(pool, jax.lax.stop_gradient(pool_input_bhwc))
    if y_bhwc.shape != pooled.shape:
        raise ValueError(
            f"max_unpool_2x2: values of shape {y_bhwc.shape} do not match the pooled shape "
            f"{pooled.shape}"
        )
    return unpool(y_bhwc.astype(pooled.dtype))[0]


class InitialBlock(nn.Module):
    """concat(3x3 stride-2 conv (in -> out - in), 2x2 max pool) -> BN -> PReLU."""

    out_channels: int
    norm: Any
    dtype: Any = jnp.float32
    conv_impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray) -> jnp.ndarray:
        """Halves the spatial size."""
        conv = Conv(
            self.out_channels - x_bhwc.shape[-1],
            (3, 3),
            strides=(2, 2),
            padding=((1, 1), (1, 1)),
            dtype=self.dtype,
            kernel_init=_TORCH_DEFAULT_INIT,
            impl=self.conv_impl,
            name="conv",
        )(x_bhwc)
        pooled = max_pool(x_bhwc, (2, 2), strides=(2, 2), padding="VALID", impl=self.conv_impl)
        y = jnp.concatenate([conv, pooled], axis=-1)
        return PReLU(self.dtype, name="prelu")(self.norm(name="bn")(y))


class EncoderBottleneck(nn.Module):
    """ENet encoder bottleneck with a residual shortcut.

    Branch: 1x1 conv (2x2 stride 2 when downsampling) -> 3x3 / dilated 3x3 / asymmetric Kx1+1xK
    -> 1x1 conv, with BN + PReLU between and BN + channel dropout at the end. Shortcut: identity,
    or a 2x2 max pool padded with zero channels when downsampling. PReLU after the sum.
    """

    out_channels: int
    kind: str
    size: int
    downsample: bool
    dropout_rate: float
    internal_ratio: int
    norm: Any
    dtype: Any = jnp.float32
    conv_impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray, train: bool) -> jnp.ndarray:
        """Applies the block; halves H and W when ``downsample``."""
        internal = self.out_channels // self.internal_ratio
        s = 2 if self.downsample else 1
        conv = functools.partial(
            Conv, dtype=self.dtype, kernel_init=_TORCH_DEFAULT_INIT, impl=self.conv_impl
        )
        y = conv(internal, (s, s), strides=(s, s), padding="VALID", use_bias=False, name="conv1")(
            x_bhwc
        )
        y = PReLU(self.dtype, name="prelu1")(self.norm(name="bn1")(y))
        if self.kind == "asymmetric":
            k, p = self.size, (self.size - 1) // 2
            y = conv(internal, (k, 1), padding=((p, p), (0, 0)), use_bias=False, name="conv2a")(y)
            y = conv(internal, (1, k), padding=((0, 0), (p, p)), name="conv2b")(y)
        else:
            d = self.size
            y = conv(
                internal, (3, 3), padding=((d, d), (d, d)), kernel_dilation=(d, d), name="conv2"
            )(y)
        y = PReLU(self.dtype, name="prelu2")(self.norm(name="bn2")(y))
        y = conv(self.out_channels, (1, 1), padding="VALID", use_bias=False, name="conv3")(y)
        y = self.norm(name="bn3")(y)
        # Torch SpatialDropout drops whole channels: one mask per (image, channel).
        y = ChannelDropout(self.dropout_rate, norm_axis_name(self.norm))(y, deterministic=not train)
        shortcut = x_bhwc
        if self.downsample:
            shortcut = max_pool(
                shortcut, (2, 2), strides=(2, 2), padding="VALID", impl=self.conv_impl
            )
        missing = self.out_channels - shortcut.shape[-1]
        if missing:
            # Torch nn.Padding: zero channels appended after the input's.
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, missing)))
        return PReLU(self.dtype, name="prelu_out")(y + shortcut)


class DecoderBottleneck(nn.Module):
    """ENet decoder bottleneck with a residual shortcut.

    Branch: 1x1 conv -> 3x3 conv (3x3 stride-2 transposed conv when upsampling) -> 1x1 conv, with
    BN + ReLU between and BN at the end. Shortcut: identity, or a 1x1 conv + BN when the width or
    size changes, max-unpooled when upsampling. ReLU after the sum.
    """

    out_channels: int
    upsample: bool
    internal_ratio: int
    norm: Any
    dtype: Any = jnp.float32
    conv_impl: ConvImpl = "auto"

    @nn.compact
    def __call__(
        self, x_bhwc: jnp.ndarray, pool_input_bhwc: jnp.ndarray | None = None
    ) -> jnp.ndarray:
        """Applies the block.

        ``pool_input_bhwc`` (what the matching encoder pool saw) is needed, and H and W double,
        when ``upsample``.
        """
        if self.upsample and pool_input_bhwc is None:
            raise ValueError(f"{self.name}: an upsampling bottleneck needs the pool input")
        internal = self.out_channels // self.internal_ratio
        conv = functools.partial(
            Conv, dtype=self.dtype, kernel_init=_TORCH_DEFAULT_INIT, impl=self.conv_impl
        )
        y = conv(internal, (1, 1), padding="VALID", use_bias=False, name="conv1")(x_bhwc)
        y = nn.relu(self.norm(name="bn1")(y))
        if self.upsample:
            y = torch_conv_transpose_2d(
                internal,
                kernel_size=3,
                stride=2,
                padding=1,
                output_padding=1,
                impl=self.conv_impl,
                dtype=self.dtype,
                name="conv2",
            )(y)
        else:
            y = conv(internal, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = conv(self.out_channels, (1, 1), padding="VALID", use_bias=False, name="conv3")(y)
        y = self.norm(name="bn3")(y)
        shortcut = x_bhwc
        if self.upsample or x_bhwc.shape[-1] != self.out_channels:
            shortcut = conv(
                self.out_channels, (1, 1), padding="VALID", use_bias=False, name="main_conv"
            )(x_bhwc)
            shortcut = self.norm(name="main_bn")(shortcut)
            if self.upsample:
                shortcut = max_unpool_2x2(shortcut, pool_input_bhwc, self.conv_impl)
        return nn.relu(y + shortcut)


class ENet(nn.Module):
    """ENet semantic segmentation network (student), ENet-SAD layout without lane existence.

    Call as ``logits_bhwk, taps = model.apply(variables, images_bhwc, train=False)``. Logits are
    float32 at the input resolution; height and width must be divisible by 8. Taps (compute
    dtype), with the default widths:

    ======  ======  ================  ==============================================
    tap     stride  channels          what
    ======  ======  ================  ==============================================
    "e1"    4       channels[1] (64)  end of E1 (bottleneck 1.4); the "mid" level
    "e2"    8       channels[2] (128) end of E2 (bottleneck 2.8)
    "e3"    8       channels[2] (128) end of E3 (bottleneck 3.8)
    "e4"    8       channels[2] (128) end of E4 (4.8), the decoder input; "high" level
    ======  ======  ================  ==============================================

    ``sad_taps`` are E2, E3, E4: ENet-SAD (Hou et al. 2019) puts its attention maps after these
    blocks, the middle and late ones, and none after E1.

    Parameters (default widths): 509,577 at 5 classes and 511,657 at 37 (encoder 484,332 of
    which E4 is 146,176; decoder 24,920 + 65 per class). ENet as published (no E4) has 363,856 at
    12 classes (Paszke et al.: 0.37M). ENet-SAD's published 0.98M also counts its lane-existence
    branch (508,809 at CULane's 976x208 input, giving 1.02M with this layer list).

    Attributes:
      num_classes: Number of output classes.
      dtype: Compute dtype (params stay float32).
      bn_axis_name: Axis name for cross-device BatchNorm statistics (e.g. "data" in shard_map).
      bn_momentum: Flax BatchNorm momentum (0.9 equals PyTorch momentum 0.1).
      bn_epsilon: BatchNorm epsilon (1e-3 in the Torch ENet).
      channels: Widths after the initial block, E1 and E2: (16, 64, 128) in ENet. Each must be
        divisible by ``internal_ratio``.
      num_stage1_blocks: Regular bottlenecks after downsample1_0 (4 in ENet).
      stage_blocks: The bottlenecks of each of E2, E3 and E4 (after E2's downsampler), as
        ``parse_enet_block`` specs; ``ENET_STAGE_BLOCKS`` in ENet.
      internal_ratio: Bottleneck width = block output width // internal_ratio (4 in ENet).
      stage1_dropout: Channel dropout of the E1 bottlenecks (0.01).
      dropout: Channel dropout of the E2-E4 bottlenecks (0.1).
      conv_impl: "auto" (default: "onednn" where installed, else "fast"), "fast" (CPU-tuned
        convolution and pooling gradients, ``models.conv``), "onednn" or "xla" (Flax's
        computation); same parameters.
    """

    num_classes: int
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3
    channels: tuple[int, int, int] = (16, 64, 128)
    num_stage1_blocks: int = 4
    stage_blocks: tuple[str, ...] = ENET_STAGE_BLOCKS
    internal_ratio: int = 4
    stage1_dropout: float = 0.01
    dropout: float = 0.1
    conv_impl: ConvImpl = "auto"

    tap_levels: ClassVar[dict[str, str]] = {"high": "e4", "mid": "e1"}
    sad_taps: ClassVar[tuple[str, ...]] = ("e2", "e3", "e4")

    def __post_init__(self) -> None:
        _check_positive_int("ENet.num_classes", self.num_classes)
        _check_positive_int("ENet.internal_ratio", self.internal_ratio)
        _check_widths(
            "ENet.channels", self.channels, "downsampling shortcuts pad their input with zeros"
        )
        if any(c % self.internal_ratio for c in self.channels):
            raise ValueError(
                f"ENet.channels {self.channels!r} must all be divisible by "
                f"internal_ratio={self.internal_ratio} (the bottleneck width)"
            )
        _check_positive_int("ENet.num_stage1_blocks", self.num_stage1_blocks, allow_zero=True)
        for spec in self.stage_blocks:
            parse_enet_block(spec)
        _check_rates(self, ("stage1_dropout", "dropout"))
        check_conv_impl("ENet.conv_impl", self.conv_impl)
        super().__post_init__()

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, train: bool = False
    ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
        """Runs the network.

        Args:
          x: Images (B, H, W, C) with H and W divisible by 8 and C < channels[0].
          train: Batch statistics and dropout when True, running statistics otherwise.

        Returns:
          ``(logits_bhwk float32, taps)``.
        """
        _check_images("ENet", x, divisor=8)
        c0, c1, c2 = self.channels
        if x.shape[-1] >= c0:
            raise ValueError(
                f"ENet: input has {x.shape[-1]} channels; channels[0]={c0} must be larger (the "
                "initial block concatenates its max-pooled input)"
            )
        norm = batch_norm(self, train)
        kw = dict(norm=norm, dtype=self.dtype, conv_impl=self.conv_impl)
        enc = functools.partial(EncoderBottleneck, internal_ratio=self.internal_ratio, **kw)
        dec = functools.partial(DecoderBottleneck, internal_ratio=self.internal_ratio, **kw)
        taps = {}

        y = InitialBlock(c0, name="initial_block", **kw)(x.astype(self.dtype))
        pool1_input = y
        y = enc(c1, "regular", 1, True, self.stage1_dropout, name="downsample1_0")(y, train)
        for i in range(1, self.num_stage1_blocks + 1):
            y = enc(c1, "regular", 1, False, self.stage1_dropout, name=f"regular1_{i}")(y, train)
        taps["e1"] = pool2_input = y
        y = enc(c2, "regular", 1, True, self.dropout, name="downsample2_0")(y, train)
        for stage in (2, 3, 4):
            for i, spec in enumerate(self.stage_blocks, start=1):
                kind, size = parse_enet_block(spec)
                y = enc(c2, kind, size, False, self.dropout, name=f"{kind}{stage}_{i}")(y, train)
            taps[f"e{stage}"] = y

        y = dec(c1, True, name="upsample5_0")(y, pool2_input)
        y = dec(c1, False, name="regular5_1")(y)
        y = dec(c1, False, name="regular5_2")(y)
        y = dec(c0, True, name="upsample6_0")(y, pool1_input)
        y = dec(c0, False, name="regular6_1")(y)
        logits_bhwk = torch_conv_transpose_2d(
            self.num_classes,
            kernel_size=2,
            stride=2,
            impl=self.conv_impl,
            dtype=self.dtype,
            name="fullconv",
        )(y)
        return logits_bhwk.astype(jnp.float32), taps
