"""ERFNet (Romera et al., 2017), the IntRA-KD student, as a Flax Linen module.

Layer for layer as the PyTorch ERFNet used by the ERFNet-CULane / IntRA-KD code, with submodule
names that mirror the PyTorch state-dict keys (``encoder.initial_block.conv`` becomes
``params/encoder/initial_block/conv``) so a weight converter is a rename plus a transpose.

All padding is explicit and follows PyTorch, so converted weights give the same outputs; the
transposed convolutions use ``transpose_kernel=True`` so their kernels are the PyTorch
``ConvTranspose2d`` weights transposed from (in, out, kh, kw) to (kh, kw, out, in).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from intrakd_jax.models.batch_norm import norm_act
from intrakd_jax.models.conv import Conv, ConvImpl, ConvTranspose, check_conv_impl, max_pool
from intrakd_jax.models.layers import ChannelDropout, batch_norm, norm_axis_name

# PyTorch's default conv init (kaiming_uniform, a=sqrt(5)) is uniform with variance 1/(3 fan_in).
_TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_conv_transpose_padding(
    kernel_size: int, padding: int, output_padding: int
) -> tuple[int, int]:
    """Explicit ``lax.conv_transpose`` padding equivalent to a PyTorch ``ConvTranspose2d``.

    ``lax.conv_transpose`` with explicit padding pads the stride-dilated input directly, while
    PyTorch removes ``padding`` from each side of the full transposed output and adds
    ``output_padding`` at the end. Both describe the same correlation window when the dilated
    input is padded by ``k - 1 - p`` before and ``k - 1 - p + output_padding`` after.

    Args:
      kernel_size: Kernel size along one spatial axis.
      padding: PyTorch ``padding``.
      output_padding: PyTorch ``output_padding``.

    Returns:
      The (low, high) padding pair for that axis.

    Raises:
      ValueError: If the padding would be negative.
    """
    low = kernel_size - 1 - padding
    high = low + output_padding
    if low < 0:
        raise ValueError(
            f"torch_conv_transpose_padding: padding={padding} must be <= kernel_size - 1 "
            f"(kernel_size={kernel_size})"
        )
    return low, high


def torch_conv_transpose_2d(
    features: int,
    kernel_size: int,
    stride: int,
    padding: int = 0,
    output_padding: int = 0,
    impl: ConvImpl = "auto",
    **kwargs: Any,
) -> ConvTranspose:
    """A transposed convolution with PyTorch ``ConvTranspose2d`` semantics (NHWC).

    Output size per axis is ``(n - 1) * stride - 2 * padding + kernel_size + output_padding``.
    The kernel has shape (kh, kw, out, in): PyTorch weights (in, out, kh, kw) map to it by
    ``w.transpose(2, 3, 1, 0)``, with no spatial flip.

    Args:
      features: Output channels.
      kernel_size: Square kernel size.
      stride: Stride along both axes.
      padding: PyTorch ``padding``.
      output_padding: PyTorch ``output_padding``.
      impl: "auto", "fast" (no inserted zeros, CPU-tuned gradients; ``models.conv``), "onednn"
        or "xla" (``lax.conv_transpose``); the parameters are those of ``nn.ConvTranspose``
        in every mode.
      **kwargs: Passed to ``conv.ConvTranspose`` (``name``, ``dtype``, ``use_bias``, inits).

    Returns:
      The configured (unbound) module.
    """
    pad = torch_conv_transpose_padding(kernel_size, padding, output_padding)
    kwargs.setdefault("kernel_init", _TORCH_DEFAULT_INIT)
    return ConvTranspose(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=(pad, pad),
        transpose_kernel=True,
        impl=impl,
        **kwargs,
    )


class DownsamplerBlock(nn.Module):
    """concat(conv3x3 stride 2 (in -> out - in), maxpool 2x2) -> BN -> ReLU."""

    out_channels: int
    norm: Any
    dtype: Any = jnp.float32
    conv_impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray) -> jnp.ndarray:
        """Halves the spatial size; ``x_bhwc`` must have even height and width."""
        in_channels = x_bhwc.shape[-1]
        if self.out_channels <= in_channels:
            raise ValueError(
                f"DownsamplerBlock: out_channels={self.out_channels} must exceed the input "
                f"channels ({in_channels}) because the max-pooled input is concatenated"
            )
        conv = Conv(
            self.out_channels - in_channels,
            (3, 3),
            strides=(2, 2),
            padding=((1, 1), (1, 1)),
            dtype=self.dtype,
            kernel_init=_TORCH_DEFAULT_INIT,
            impl=self.conv_impl,
            name="conv",
        )(x_bhwc)
        pooled = max_pool(x_bhwc, (2, 2), strides=(2, 2), padding="VALID", impl=self.conv_impl)
        # Order (conv, pool) matches torch.cat([conv, pool], 1), which matters for BN channels.
        y = jnp.concatenate([conv, pooled], axis=-1)
        return norm_act(self.norm(name="bn"), y, relu=True)


class NonBottleneck1d(nn.Module):
    """Factorised residual block: (3x1, 1x3) then dilated (3x1, 1x3), with BN and dropout."""

    dropout_rate: float
    dilation: int
    norm: Any
    dtype: Any = jnp.float32
    conv_impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray, train: bool) -> jnp.ndarray:
        """Applies the block; shape-preserving."""
        c = x_bhwc.shape[-1]
        d = self.dilation
        conv = functools.partial(
            Conv, c, dtype=self.dtype, kernel_init=_TORCH_DEFAULT_INIT, impl=self.conv_impl
        )
        y = conv((3, 1), padding=((1, 1), (0, 0)), relu=True, name="conv3x1_1")(x_bhwc)
        y = conv((1, 3), padding=((0, 0), (1, 1)), name="conv1x3_1")(y)
        y = norm_act(self.norm(name="bn1"), y, relu=True)
        y = conv(
            (3, 1), padding=((d, d), (0, 0)), kernel_dilation=(d, 1), relu=True, name="conv3x1_2"
        )(y)
        y = conv((1, 3), padding=((0, 0), (d, d)), kernel_dilation=(1, d), name="conv1x3_2")(y)
        # PyTorch Dropout2d drops whole channels: one factor per (image, channel), applied with
        # bn2, the residual and the ReLU in one pass where the BatchNorm is fused.
        drop = ChannelDropout(self.dropout_rate, norm_axis_name(self.norm))
        multiplier_bc = drop.multiplier(y, deterministic=not train)
        return norm_act(
            self.norm(name="bn2"), y, relu=True, multiplier_bc=multiplier_bc, residual_bhwc=x_bhwc
        )


def _residual_block(remat: bool) -> type[nn.Module]:
    """``NonBottleneck1d``, or with ``remat`` one that recomputes its activations when needed.

    The rematerialised block keeps only its input for the backward pass (same parameters;
    ``train`` is a static argument).
    """
    return nn.remat(NonBottleneck1d, static_argnums=(2,)) if remat else NonBottleneck1d


class UpsamplerBlock(nn.Module):
    """ConvTranspose 3x3 stride 2 (exact 2x) -> BN -> ReLU."""

    out_channels: int
    norm: Any
    dtype: Any = jnp.float32
    conv_impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray) -> jnp.ndarray:
        """Doubles the spatial size."""
        y = torch_conv_transpose_2d(
            self.out_channels,
            kernel_size=3,
            stride=2,
            padding=1,
            output_padding=1,
            impl=self.conv_impl,
            dtype=self.dtype,
            name="conv",
        )(x_bhwc)
        return norm_act(self.norm(name="bn"), y, relu=True)


class ERFNetEncoder(nn.Module):
    """ERFNet encoder; returns the 1/8 features, the 1/4 stage-1 and the mid-1/8 features."""

    channels: tuple[int, int, int]
    num_stage1_blocks: int
    num_stage2_repeats: int
    stage2_dilations: tuple[int, ...]
    stage1_dropout: float
    stage2_dropout: float
    norm: Any
    dtype: Any = jnp.float32
    conv_impl: ConvImpl = "auto"
    remat: bool = False

    @nn.compact
    def __call__(
        self, x_bhwc: jnp.ndarray, train: bool
    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Returns ``(encoder_bhwc (1/8, c2), stage1_bhwc (1/4, c1), stage2_mid_bhwc (1/8, c2))``.

        ``stage2_mid`` is the output of the first half of the 1/8 blocks (the first dilation group
        of ERFNet), or of the third downsampler when there are none.
        """
        c0, c1, c2 = self.channels
        kw = dict(norm=self.norm, dtype=self.dtype, conv_impl=self.conv_impl)
        block = _residual_block(self.remat)
        x = DownsamplerBlock(c0, name="initial_block", **kw)(x_bhwc)
        idx = 0

        def name() -> str:
            nonlocal idx
            idx += 1
            return f"layers_{idx - 1}"

        x = DownsamplerBlock(c1, name=name(), **kw)(x)
        for _ in range(self.num_stage1_blocks):
            x = block(self.stage1_dropout, 1, name=name(), **kw)(x, train)
        stage1_bhwc = x
        x = DownsamplerBlock(c2, name=name(), **kw)(x)
        dilations = [d for _ in range(self.num_stage2_repeats) for d in self.stage2_dilations]
        stage2_mid_bhwc = x
        for i, d in enumerate(dilations):
            x = block(self.stage2_dropout, d, name=name(), **kw)(x, train)
            if i + 1 == len(dilations) // 2:
                stage2_mid_bhwc = x
        return x, stage1_bhwc, stage2_mid_bhwc


class ERFNetDecoder(nn.Module):
    """ERFNet decoder: two (upsampler, 2 x non_bottleneck_1d) stages and a 2x output deconv."""

    channels: tuple[int, int, int]
    num_classes: int
    norm: Any
    dtype: Any = jnp.float32
    conv_impl: ConvImpl = "auto"
    remat: bool = False

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray, train: bool) -> jnp.ndarray:
        """Maps 1/8 features to full-resolution logits (compute dtype)."""
        c0, c1, _ = self.channels
        kw = dict(norm=self.norm, dtype=self.dtype, conv_impl=self.conv_impl)
        block = _residual_block(self.remat)
        x = UpsamplerBlock(c1, name="layers_0", **kw)(x_bhwc)
        x = block(0.0, 1, name="layers_1", **kw)(x, train)
        x = block(0.0, 1, name="layers_2", **kw)(x, train)
        x = UpsamplerBlock(c0, name="layers_3", **kw)(x)
        x = block(0.0, 1, name="layers_4", **kw)(x, train)
        x = block(0.0, 1, name="layers_5", **kw)(x, train)
        return torch_conv_transpose_2d(
            self.num_classes,
            kernel_size=2,
            stride=2,
            impl=self.conv_impl,
            dtype=self.dtype,
            name="output_conv",
        )(x)


class ERFNet(nn.Module):
    """ERFNet semantic segmentation network (student).

    Call as ``logits_bhwk, taps = model.apply(variables, images_bhwc, train=False)``. Logits
    are float32 at the input resolution; ``taps`` holds, in the compute dtype, ``"stage1"``
    (1/4, ``channels[1]``: end of the 1/4 blocks; the "mid" level), ``"stage2_mid"`` (1/8,
    ``channels[2]``: after the first half of the 1/8 blocks, i.e. the first dilation group) and
    ``"encoder"`` (1/8, ``channels[2]``: encoder output; the "high" level). Height and width
    must be divisible by 8. ``sad_taps`` are stage1, stage2_mid, encoder: the ends of the
    encoder's last three block groups, as ENet-SAD uses E2, E3 and E4.

    Attributes:
      num_classes: Number of output classes.
      dtype: Compute dtype (params stay float32).
      bn_axis_name: Axis name for cross-device BatchNorm statistics (e.g. "data" in shard_map).
      bn_momentum: Flax BatchNorm momentum (0.9 equals PyTorch momentum 0.1).
      bn_epsilon: BatchNorm epsilon (ERFNet uses 1e-3).
      channels: Widths after the three downsamplers, (16, 64, 128) in ERFNet.
      num_stage1_blocks: non_bottleneck_1d blocks at 1/4 resolution.
      num_stage2_repeats: Repeats of the dilated block group at 1/8 resolution.
      stage2_dilations: Dilations of one group at 1/8 resolution.
      stage1_dropout: Channel dropout rate of the 1/4 blocks (Romera et al.: 0.03).
      stage2_dropout: Channel dropout rate of the 1/8 blocks (Romera et al.: 0.3).
      conv_impl: "auto" (default): "onednn" where its pip packages are installed, else "fast";
        "fast": convolutions, transposed convolutions and max pooling with CPU-tuned gradients
        (``models.conv``; plain XLA gradients on other backends); "onednn": oneDNN's kernels on
        CPU; "xla": Flax's ``nn.Conv`` / ``nn.ConvTranspose`` / ``nn.max_pool`` computation.
        Same parameters.
      remat: Recompute each residual block's activations in the backward pass (gradient
        checkpointing): one more forward pass of the blocks for much less memory at large
        inputs, e.g. the ApolloScape distill step at batch 8 (BENCHMARKS.md). Same parameters
        and results.
      reverse_input_channels: Reverse the input's channel axis before the first layer, so
        weights trained on BGR images (the released IntRA-KD ERFNet) read the project's RGB
        input exactly. Flipping the first conv's kernel is not enough here: the first
        downsampler also concatenates the max-pooled raw input channels.
    """

    num_classes: int
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3
    channels: tuple[int, int, int] = (16, 64, 128)
    num_stage1_blocks: int = 5
    num_stage2_repeats: int = 2
    stage2_dilations: tuple[int, ...] = (2, 4, 8, 16)
    stage1_dropout: float = 0.03
    stage2_dropout: float = 0.3
    conv_impl: ConvImpl = "auto"
    remat: bool = False
    reverse_input_channels: bool = False

    tap_levels: ClassVar[dict[str, str]] = {"high": "encoder", "mid": "stage1"}
    sad_taps: ClassVar[tuple[str, ...]] = ("stage1", "stage2_mid", "encoder")

    def __post_init__(self) -> None:
        _check_positive_int("ERFNet.num_classes", self.num_classes)
        _check_widths("ERFNet.channels", self.channels, "each downsampler concatenates its input")
        _check_positive_int("ERFNet.num_stage1_blocks", self.num_stage1_blocks, allow_zero=True)
        _check_positive_int("ERFNet.num_stage2_repeats", self.num_stage2_repeats, allow_zero=True)
        for d in self.stage2_dilations:
            _check_positive_int("ERFNet.stage2_dilations entry", d)
        _check_rates(self, ("stage1_dropout", "stage2_dropout"))
        check_conv_impl("ERFNet.conv_impl", self.conv_impl)
        for field in ("remat", "reverse_input_channels"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"ERFNet.{field} must be a bool, got {getattr(self, field)!r}")
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
        _check_images("ERFNet", x, divisor=8)
        if x.shape[-1] >= self.channels[0]:
            raise ValueError(
                f"ERFNet: input has {x.shape[-1]} channels; channels[0]={self.channels[0]} must "
                "be larger (the first downsampler concatenates its input)"
            )
        norm = batch_norm(self, train)
        chans = tuple(self.channels)
        x_bhwc = x.astype(self.dtype)
        if self.reverse_input_channels:
            x_bhwc = x_bhwc[..., ::-1]
        encoder_bhwc, stage1_bhwc, stage2_mid_bhwc = ERFNetEncoder(
            channels=chans,
            num_stage1_blocks=self.num_stage1_blocks,
            num_stage2_repeats=self.num_stage2_repeats,
            stage2_dilations=tuple(self.stage2_dilations),
            stage1_dropout=self.stage1_dropout,
            stage2_dropout=self.stage2_dropout,
            norm=norm,
            dtype=self.dtype,
            conv_impl=self.conv_impl,
            remat=self.remat,
            name="encoder",
        )(x_bhwc, train)
        logits_bhwk = ERFNetDecoder(
            chans, self.num_classes, norm, self.dtype, self.conv_impl, self.remat, name="decoder"
        )(encoder_bhwc, train)
        taps = {"stage1": stage1_bhwc, "stage2_mid": stage2_mid_bhwc, "encoder": encoder_bhwc}
        return logits_bhwk.astype(jnp.float32), taps


def _check_positive_int(field: str, value: Any, allow_zero: bool = False) -> None:
    """Raises ValueError unless ``value`` is an int > 0 (or >= 0 with ``allow_zero``)."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a non-negative int" if allow_zero else "a positive int"
        raise ValueError(f"{field} must be {kind}, got {value!r}")


def _check_widths(field: str, value: Any, why: str) -> None:
    """Raises ValueError unless ``value`` is 3 strictly increasing positive ints (``why``)."""
    widths = tuple(value) if isinstance(value, Sequence) else ()
    if len(widths) != 3 or not all(
        isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in widths
    ):
        raise ValueError(f"{field} must be 3 positive ints, got {value!r}")
    if not widths[0] < widths[1] < widths[2]:
        raise ValueError(f"{field} must be strictly increasing ({why}), got {value!r}")


def _check_rates(module: Any, fields: Sequence[str]) -> None:
    """Raises ValueError unless each named field of ``module`` is a rate in [0, 1)."""
    for field in fields:
        rate = getattr(module, field)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{type(module).__name__}.{field} must be in [0, 1), got {rate!r}")


def _check_images(model: str, x: Any, divisor: int = 1) -> None:
    """Raises ValueError unless ``x`` is a (B, H, W, C) array with H, W divisible by ``divisor``."""
    shape: Sequence[int] = getattr(x, "shape", ())
    if len(shape) != 4:
        raise ValueError(f"{model}: expected images of shape (B, H, W, C), got shape {shape}")
    if shape[1] % divisor or shape[2] % divisor:
        raise ValueError(
            f"{model}: image height and width must be divisible by {divisor}, got "
            f"{shape[1]}x{shape[2]}"
        )
