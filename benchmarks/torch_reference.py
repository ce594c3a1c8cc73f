"""Eager PyTorch reference of the IntRA-KD steps, for benchmarking the JAX implementation.

The same networks as ``intrakd_jax.models`` layer for layer (ERFNet student; PSPNet on a dilated
ResNet, output stride 8, as teacher), the same losses (class-weighted cross entropy with an ignore
label; IntRA-KD with AOI maps, moment pooling, affinity graphs) and the same optimiser (SGD with
momentum, weight decay added to the gradient, poly learning rate), written for this project in
plain eager PyTorch (NCHW, default CPU kernels): the baseline that the JAX step is compared with.

Module names follow the Flax parameter paths (``encoder/layers_3/conv3x1_1`` is
``encoder.layers.3.conv3x1_1`` here), so ``load_flax_variables`` copies a Flax variables tree in
and ``python benchmarks/torch_reference.py --check`` verifies that both frameworks compute the
same logits, taps and losses on tiny models.

PyTorch is an optional benchmark dependency (``benchmarks/requirements.txt``); nothing in the
package imports this file.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# Run as a script from anywhere: the project root must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from intrakd_jax import models
from intrakd_jax.losses.intra_kd import intra_kd_loss as jax_intra_kd_loss
from intrakd_jax.losses.segmentation import weighted_cross_entropy

# ----------------------------------------------------------------------------------------------
# ERFNet
# ----------------------------------------------------------------------------------------------

_ERF_BN_EPS = 1e-3
_RESNET_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1  # PyTorch convention; Flax momentum 0.9


class DownsamplerBlock(nn.Module):
    """concat(conv3x3 stride 2 (in -> out - in), maxpool 2x2) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels <= in_channels:
            raise ValueError(
                f"DownsamplerBlock: out_channels={out_channels} must exceed in_channels="
                f"{in_channels}"
            )
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(out_channels, eps=_ERF_BN_EPS, momentum=_BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.conv(x), F.max_pool2d(x, 2, 2)], 1)
        return F.relu(self.bn(y))


class NonBottleneck1d(nn.Module):
    """(3x1, 1x3) then dilated (3x1, 1x3) convs, BN, channel dropout, residual."""

    def __init__(self, channels: int, dropout_rate: float, dilation: int) -> None:
        super().__init__()
        c, d = channels, dilation
        self.conv3x1_1 = nn.Conv2d(c, c, (3, 1), padding=(1, 0))
        self.conv1x3_1 = nn.Conv2d(c, c, (1, 3), padding=(0, 1))
        self.bn1 = nn.BatchNorm2d(c, eps=_ERF_BN_EPS, momentum=_BN_MOMENTUM)
        self.conv3x1_2 = nn.Conv2d(c, c, (3, 1), padding=(d, 0), dilation=(d, 1))
        self.conv1x3_2 = nn.Conv2d(c, c, (1, 3), padding=(0, d), dilation=(1, d))
        self.bn2 = nn.BatchNorm2d(c, eps=_ERF_BN_EPS, momentum=_BN_MOMENTUM)
        self.dropout_rate = dropout_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv3x1_1(x))
        y = F.relu(self.bn1(self.conv1x3_1(y)))
        y = F.relu(self.conv3x1_2(y))
        y = self.bn2(self.conv1x3_2(y))
        if self.dropout_rate > 0:
            y = F.dropout2d(y, self.dropout_rate, self.training)
        return F.relu(y + x)


class UpsamplerBlock(nn.Module):
    """ConvTranspose 3x3 stride 2 (padding 1, output padding 1) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            in_channels, out_channels, 3, stride=2, padding=1, output_padding=1
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=_ERF_BN_EPS, momentum=_BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ERFNetEncoder(nn.Module):
    """Three downsamplers with non-bottleneck blocks; returns (1/8 features, 1/4 features)."""

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, int, int],
        num_stage1_blocks: int,
        num_stage2_repeats: int,
        stage2_dilations: Sequence[int],
        stage1_dropout: float,
        stage2_dropout: float,
    ) -> None:
        super().__init__()
        c0, c1, c2 = channels
        self.initial_block = DownsamplerBlock(in_channels, c0)
        layers: list[nn.Module] = [DownsamplerBlock(c0, c1)]
        layers += [NonBottleneck1d(c1, stage1_dropout, 1) for _ in range(num_stage1_blocks)]
        self.num_stage1_layers = len(layers)
        layers.append(DownsamplerBlock(c1, c2))
        for _ in range(num_stage2_repeats):
            layers += [NonBottleneck1d(c2, stage2_dropout, d) for d in stage2_dilations]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.initial_block(x)
        stage1 = x
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == self.num_stage1_layers - 1:
                stage1 = x
        return x, stage1


class ERFNetDecoder(nn.Module):
    """Two (upsampler, 2 x non-bottleneck) stages and a 2x2 stride-2 output deconvolution."""

    def __init__(self, channels: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c0, c1, c2 = channels
        self.layers = nn.ModuleList(
            [
                UpsamplerBlock(c2, c1),
                NonBottleneck1d(c1, 0.0, 1),
                NonBottleneck1d(c1, 0.0, 1),
                UpsamplerBlock(c1, c0),
                NonBottleneck1d(c0, 0.0, 1),
                NonBottleneck1d(c0, 0.0, 1),
            ]
        )
        self.output_conv = nn.ConvTranspose2d(c0, num_classes, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.output_conv(x)


class ERFNet(nn.Module):
    """ERFNet student; ``forward(images_bchw) -> (logits_bchw, {"stage1", "encoder"})``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        channels: tuple[int, int, int] = (16, 64, 128),
        num_stage1_blocks: int = 5,
        num_stage2_repeats: int = 2,
        stage2_dilations: Sequence[int] = (2, 4, 8, 16),
        stage1_dropout: float = 0.03,
        stage2_dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.encoder = ERFNetEncoder(
            in_channels,
            tuple(channels),
            num_stage1_blocks,
            num_stage2_repeats,
            tuple(stage2_dilations),
            stage1_dropout,
            stage2_dropout,
        )
        self.decoder = ERFNetDecoder(tuple(channels), num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        encoder, stage1 = self.encoder(x)
        return self.decoder(encoder), {"stage1": stage1, "encoder": encoder}


# ----------------------------------------------------------------------------------------------
# PSPNet on a dilated ResNet (output stride 8)
# ----------------------------------------------------------------------------------------------

_RESNET_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
_STAGE_STRIDES = (1, 2, 1, 1)
_STAGE_DILATIONS = (1, 1, 2, 4)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_RESNET_BN_EPS, momentum=_BN_MOMENTUM)


class BasicBlock(nn.Module):
    """Two 3x3 convs (the first strided and dilated) with a residual."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int, dilation: int, has_downsample: bool
    ) -> None:
        super().__init__()
        d = dilation
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=d, dilation=d, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = _bn(planes)
        self._init_shortcut(inplanes, planes * self.expansion, stride, has_downsample)

    def _init_shortcut(self, inplanes: int, out: int, stride: int, has_downsample: bool) -> None:
        self.downsample_conv = (
            nn.Conv2d(inplanes, out, 1, stride, bias=False) if has_downsample else None
        )
        self.downsample_bn = _bn(out) if has_downsample else None

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample_conv is None:
            return x
        return self.downsample_bn(self.downsample_conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self._shortcut(x))


class Bottleneck(BasicBlock):
    """1x1 reduce, 3x3 (strided, dilated), 1x1 expand x4, with a residual."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int, dilation: int, has_downsample: bool
    ) -> None:
        nn.Module.__init__(self)
        d = dilation
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=d, dilation=d, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self._init_shortcut(inplanes, planes * 4, stride, has_downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self._shortcut(x))


class DilatedResNet(nn.Module):
    """ResNet with output stride 8; ``forward`` returns the ``layer1`` and ``layer4`` features."""

    def __init__(self, depth: int = 101, base_width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        if depth not in _RESNET_LAYOUTS:
            raise ValueError(f"DilatedResNet: depth must be one of {sorted(_RESNET_LAYOUTS)}")
        kind, blocks = _RESNET_LAYOUTS[depth]
        block_cls = Bottleneck if kind == "bottleneck" else BasicBlock
        w = base_width
        self.conv1 = nn.Conv2d(in_channels, w, 7, 2, padding=3, bias=False)
        self.bn1 = _bn(w)
        inplanes = w
        for stage, num_blocks in enumerate(blocks):
            planes = w * 2**stage
            stride, dilation = _STAGE_STRIDES[stage], _STAGE_DILATIONS[stage]
            stage_blocks = []
            for j in range(num_blocks):
                block_stride = stride if j == 0 else 1
                has_downsample = j == 0 and (
                    stride != 1 or dilation != 1 or inplanes != planes * block_cls.expansion
                )
                stage_blocks.append(
                    block_cls(inplanes, planes, block_stride, dilation, has_downsample)
                )
                inplanes = planes * block_cls.expansion
            setattr(self, f"layer{stage + 1}", nn.ModuleList(stage_blocks))
        self.out_channels = inplanes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.max_pool2d(y, 3, 2, padding=1)
        feats = {}
        for stage in range(1, 5):
            for block in getattr(self, f"layer{stage}"):
                y = block(y)
            feats[f"layer{stage}"] = y
        return feats


class PyramidPoolingModule(nn.Module):
    """Input concatenated with (adaptive pool, 1x1 conv, BN, ReLU, bilinear up) per bin."""

    def __init__(self, in_channels: int, bins: Sequence[int]) -> None:
        super().__init__()
        reduction = in_channels // len(bins)
        self.bins = tuple(bins)
        self.conv = nn.ModuleList(
            [nn.Conv2d(in_channels, reduction, 1, bias=False) for _ in self.bins]
        )
        self.bn = nn.ModuleList([_bn(reduction) for _ in self.bins])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = x.shape[2:]
        outs = [x]
        for b, conv, bn in zip(self.bins, self.conv, self.bn, strict=True):
            y = F.relu(bn(conv(F.adaptive_avg_pool2d(x, b))))
            outs.append(F.interpolate(y, hw, mode="bilinear", align_corners=False))
        return torch.cat(outs, 1)


class PSPNet(nn.Module):
    """PSPNet teacher; ``forward(images_bchw) -> (logits_bchw, {"layer1", "psp"})``."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 101,
        base_width: int = 64,
        bins: Sequence[int] = (1, 2, 3, 6),
        head_channels: int = 512,
        dropout_rate: float = 0.1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.backbone = DilatedResNet(depth, base_width, in_channels)
        c = self.backbone.out_channels
        self.ppm = PyramidPoolingModule(c, bins)
        concat = c + len(tuple(bins)) * (c // len(tuple(bins)))
        self.head_conv = nn.Conv2d(concat, head_channels, 3, padding=1, bias=False)
        self.head_bn = _bn(head_channels)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        self.dropout_rate = dropout_rate

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats = self.backbone(x)
        psp = F.relu(self.head_bn(self.head_conv(self.ppm(feats["layer4"]))))
        y = F.dropout2d(psp, self.dropout_rate, self.training)
        logits = F.interpolate(
            self.classifier(y), x.shape[2:], mode="bilinear", align_corners=False
        )
        return logits, {"layer1": feats["layer1"], "psp": psp}


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def aoi_maps(
    labels_bhw: torch.Tensor,
    num_classes: int,
    out_hw: tuple[int, int],
    kernel_size: int = 5,
    ignore_label: int = 255,
) -> torch.Tensor:
    """Soft AOI maps (B, n, h, w): one-hot, k x k in-image box mean, bilinear downsampling.

    Ignore pixels and labels outside [0, n) give all-zero one-hot rows. The box mean divides by
    the number of in-image pixels under the window (separable: a product of 1-D counts). Even k
    covers offsets -(k // 2) .. k - 1 - k // 2. Resizing is half-pixel bilinear without
    antialiasing (``align_corners=False``).
    """
    if labels_bhw.dim() != 3:
        raise ValueError(f"aoi_maps: labels must be (B, H, W), got {tuple(labels_bhw.shape)}")
    del ignore_label  # any value outside [0, n), 255 included, matches no class below
    _, height, width = labels_bhw.shape
    classes = torch.arange(num_classes, device=labels_bhw.device).view(1, -1, 1, 1)
    onehot_bnhw = (labels_bhw.unsqueeze(1) == classes).float()
    left = kernel_size // 2
    right = kernel_size - 1 - left
    padded = F.pad(onehot_bnhw, (left, right, left, right))
    sums = F.avg_pool2d(F.avg_pool2d(padded, (kernel_size, 1), 1), (1, kernel_size), 1)

    def counts(n: int) -> torch.Tensor:
        i = torch.arange(n)
        return (torch.clamp(i + right, max=n - 1) - torch.clamp(i - left, min=0) + 1).float()

    scale = kernel_size * kernel_size / (counts(height)[:, None] * counts(width)[None, :])
    box_bnhw = sums * scale
    return F.interpolate(box_bnhw, out_hw, mode="bilinear", align_corners=False, antialias=False)


def moment_pool(
    feats_bchw: torch.Tensor, aoi_bnhw: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class mean, variance and skewness (each (B, n, c)) of features under the AOI maps.

    Soft-mass normaliser and std-cubed skew denominator; raw sums about a detached per-channel
    shift, absent classes give zeros (the JAX ``moment_pool`` defaults).
    """
    shift_bc11 = feats_bchw.mean(dim=(2, 3), keepdim=True).detach()
    g = feats_bchw - shift_bc11
    s1 = torch.einsum("bnhw,bchw->bnc", aoi_bnhw, g)
    s2 = torch.einsum("bnhw,bchw->bnc", aoi_bnhw, g * g)
    s3 = torch.einsum("bnhw,bchw->bnc", aoi_bnhw, g * g * g)
    s0 = aoi_bnhw.sum(dim=(2, 3)).unsqueeze(-1)
    denom = torch.clamp(s0, min=eps)
    shift_b1c = shift_bc11[:, :, 0, 0].unsqueeze(1)
    a = s1 / denom + shift_b1c * (s0 / denom - 1.0)
    mean = a + shift_b1c
    central2 = s2 - 2.0 * a * s1 + a * a * s0
    central3 = s3 - 3.0 * a * s2 + 3.0 * a * a * s1 - a * a * a * s0
    var = torch.clamp(central2 / denom, min=0.0)
    skew = central3 / denom / torch.sqrt(var + eps) ** 3
    present = s0 > 0
    zero = torch.zeros((), dtype=feats_bchw.dtype)
    return (
        torch.where(present, mean, zero),
        torch.where(present, var, zero),
        torch.where(present, skew, zero),
    )


def affinity_graph(moment_bnc: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity between class descriptors, (B, n, n); zero rows for absent classes."""
    sq = (moment_bnc * moment_bnc).sum(-1)
    positive = sq > 0
    # where() twice so that the gradient at an all-zero descriptor is 0, not NaN.
    norm = torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))), 0.0)
    dots = torch.bmm(moment_bnc, moment_bnc.transpose(1, 2))
    return dots / (norm[:, :, None] * norm[:, None, :] + eps)


def intra_kd_loss(
    student_bchw: torch.Tensor,
    teacher_bchw: torch.Tensor,
    labels_bhw: torch.Tensor,
    num_classes: int,
    kernel_size: int = 5,
    moment_weights: Sequence[float] = (1.0, 1.0, 1.0),
    ignore_label: int = 255,
) -> torch.Tensor:
    """sum_m alpha_m * mean (C_m^S - C_m^T)^2 over the mean/var/skew affinity graphs."""
    teacher_bchw = teacher_bchw.detach()
    cache: dict[tuple[int, int], torch.Tensor] = {}

    def aoi_for(feats: torch.Tensor) -> torch.Tensor:
        hw = (int(feats.shape[2]), int(feats.shape[3]))
        if hw not in cache:
            cache[hw] = aoi_maps(labels_bhw, num_classes, hw, kernel_size, ignore_label)
        return cache[hw]

    s_moments = moment_pool(student_bchw, aoi_for(student_bchw))
    with torch.no_grad():
        t_moments = moment_pool(teacher_bchw, aoi_for(teacher_bchw))
    total = student_bchw.new_zeros(())
    for alpha, m_s, m_t in zip(moment_weights, s_moments, t_moments, strict=True):
        if alpha == 0.0:
            continue
        diff = affinity_graph(m_s) - affinity_graph(m_t)
        total = total + alpha * (diff * diff).mean()
    return total


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------


class Trainer:
    """SGD (momentum, weight decay, poly rate) training of a student, optionally distilled.

    ``step(images_bchw, labels_bhw)`` runs one training step and returns the loss (a Python
    float, which synchronises like the JAX benchmark's ``block_until_ready``).
    """

    def __init__(
        self,
        student: nn.Module,
        class_weights: Sequence[float],
        teacher: nn.Module | None = None,
        taps: Sequence[tuple[str, str, float]] = (("encoder", "psp", 1.0),),
        kd_weight: float = 10.0,
        learning_rate: float = 0.01,
        num_steps: int = 10_000,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        poly_power: float = 0.9,
        ignore_label: int = 255,
    ) -> None:
        self.student = student.train()
        self.teacher = teacher.eval() if teacher is not None else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.class_weights = torch.tensor(list(class_weights), dtype=torch.float32)
        self.num_classes = len(self.class_weights)
        self.taps = tuple(taps)
        self.kd_weight = kd_weight
        self.ignore_label = ignore_label
        self.base_lr, self.num_steps, self.poly_power = learning_rate, num_steps, poly_power
        self.optimizer = torch.optim.SGD(
            student.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay
        )
        self.step_count = 0

    def step(self, images_bchw: torch.Tensor, labels_bhw: torch.Tensor) -> float:
        """One update; returns the total loss."""
        frac = min(self.step_count / max(self.num_steps, 1), 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * (1.0 - frac) ** self.poly_power
        t_taps = None
        if self.teacher is not None:
            with torch.no_grad():
                _, t_taps = self.teacher(images_bchw)
        logits, s_taps = self.student(images_bchw)
        loss = F.cross_entropy(
            logits, labels_bhw, weight=self.class_weights, ignore_index=self.ignore_label
        )
        if t_taps is not None:
            kd = sum(
                w
                * intra_kd_loss(
                    s_taps[s], t_taps[t], labels_bhw, self.num_classes, ignore_label=255
                )
                for s, t, w in self.taps
            )
            loss = loss + self.kd_weight * kd
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_count += 1
        return loss.detach().item()


def make_inference(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``infer(images_bchw) -> logits_bchw`` in eval mode without autograd."""
    model.eval()

    def infer(images_bchw: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(images_bchw)[0]

    return infer


# ----------------------------------------------------------------------------------------------
# Flax -> PyTorch weights
# ----------------------------------------------------------------------------------------------

_LIST_COMPONENT = re.compile(r"^(layers|layer[1-4]|conv|bn)_(\d+)$")


def _torch_path(flax_path: Sequence[str]) -> str:
    parts = []
    for comp in flax_path:
        m = _LIST_COMPONENT.match(comp)
        parts += [m.group(1), m.group(2)] if m else [comp]
    return ".".join(parts)


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, (*prefix, str(k))))
        else:
            out[(*prefix, str(k))] = v
    return out


_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def load_flax_variables(model: nn.Module, variables: Mapping[str, Any]) -> None:
    """Copies Flax ``{"params", "batch_stats"}`` of the same architecture into ``model``.

    Conv kernels (kh, kw, in, out) and transposed-conv kernels (kh, kw, out, in) both become
    PyTorch weights by a (3, 2, 0, 1) transpose; BN scale/bias/mean/var map to
    weight/bias/running_mean/running_var.

    Raises:
      KeyError: a Flax leaf has no PyTorch counterpart, or a PyTorch tensor is left unset.
      ValueError: shapes differ.
    """
    state = model.state_dict()
    assigned = set()
    for collection in ("params", "batch_stats"):
        for path, value in _flatten(variables.get(collection, {})).items():
            *module_path, leaf = path
            name = f"{_torch_path(module_path)}.{_LEAF_NAMES[(collection, leaf)]}"
            if name not in state:
                raise KeyError(f"load_flax_variables: {'/'.join(path)} -> {name} not in model")
            array = np.asarray(value, np.float32)
            if array.ndim == 4:
                array = array.transpose(3, 2, 0, 1)
            if tuple(array.shape) != tuple(state[name].shape):
                raise ValueError(
                    f"load_flax_variables: {name} has shape {tuple(state[name].shape)}, Flax "
                    f"{'/'.join(path)} gives {array.shape}"
                )
            state[name] = torch.from_numpy(np.array(array, np.float32, copy=True, order="C"))
            assigned.add(name)
    missing = [k for k in state if k not in assigned and not k.endswith("num_batches_tracked")]
    if missing:
        raise KeyError(f"load_flax_variables: PyTorch tensors not set: {missing[:5]} ...")
    model.load_state_dict(state)


# ----------------------------------------------------------------------------------------------
# Self-check against the JAX implementation
# ----------------------------------------------------------------------------------------------


def check_against_jax(seed: int = 0) -> dict[str, float]:
    """Runs tiny JAX and PyTorch models on the same weights and data; returns max differences.

    Compares ERFNet and PSPNet (ResNet-18 and -50 layouts) eval-mode logits and taps, the
    weighted cross entropy, the IntRA-KD loss and its gradient with respect to the student
    features, and the ERFNet parameter gradient of CE + IntRA-KD (train mode without dropout).
    """
    rng = np.random.default_rng(seed)
    n = 4
    images = rng.normal(size=(2, 48, 64, 3)).astype(np.float32)
    labels = rng.integers(0, n, size=(2, 48, 64)).astype(np.int64)
    labels[:, :5] = 255
    x_t = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    y_t = torch.from_numpy(labels)
    out: dict[str, float] = {}

    def diff(a_jax: Any, b_torch: torch.Tensor, nchw: bool = True) -> float:
        a = np.asarray(a_jax, np.float64)
        b = b_torch.detach().double().numpy()
        if nchw and b.ndim == 4:
            b = b.transpose(0, 2, 3, 1)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-12))

    erf_kw = dict(channels=(8, 16, 24), num_stage1_blocks=2, num_stage2_repeats=1)
    j_erf = models.ERFNet(num_classes=n, stage1_dropout=0.0, stage2_dropout=0.0, **erf_kw)
    v_erf = j_erf.init(jax.random.key(seed), jnp.asarray(images))
    t_erf = ERFNet(n, stage1_dropout=0.0, stage2_dropout=0.0, **erf_kw)
    load_flax_variables(t_erf, v_erf)
    t_erf.eval()
    j_logits, j_taps = j_erf.apply(v_erf, jnp.asarray(images))
    with torch.no_grad():
        t_logits, t_taps = t_erf(x_t)
    out["erfnet_logits"] = diff(j_logits, t_logits)
    out["erfnet_encoder_tap"] = diff(j_taps["encoder"], t_taps["encoder"])

    for depth in (18, 50):
        psp_kw = dict(depth=depth, base_width=4, head_channels=8)
        j_psp = models.PSPNet(num_classes=n, **psp_kw)
        v_psp = j_psp.init(jax.random.key(seed + 1), jnp.asarray(images))
        t_psp = PSPNet(n, **psp_kw)
        load_flax_variables(t_psp, v_psp)
        t_psp.eval()
        pj, pj_taps = j_psp.apply(v_psp, jnp.asarray(images))
        with torch.no_grad():
            pt, pt_taps = t_psp(x_t)
        out[f"pspnet{depth}_logits"] = diff(pj, pt)
        out[f"pspnet{depth}_psp_tap"] = diff(pj_taps["psp"], pt_taps["psp"])

    weights = [0.4] + [1.0] * (n - 1)
    ce_j = weighted_cross_entropy(j_logits, jnp.asarray(labels), jnp.asarray(weights))
    ce_t = F.cross_entropy(t_logits, y_t, weight=torch.tensor(weights), ignore_index=255)
    out["cross_entropy"] = abs(float(ce_j) - float(ce_t)) / abs(float(ce_t))

    s_feat = rng.normal(size=(2, 6, 8, 5)).astype(np.float32) + 3.0
    t_feat = rng.normal(size=(2, 12, 16, 7)).astype(np.float32)
    kd_j, g_j = jax.value_and_grad(
        lambda s: jax_intra_kd_loss(s, jnp.asarray(t_feat), jnp.asarray(labels), n)
    )(jnp.asarray(s_feat))
    s_t = torch.from_numpy(s_feat.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    kd_t = intra_kd_loss(s_t, torch.from_numpy(t_feat.transpose(0, 3, 1, 2).copy()), y_t, n)
    (g_t,) = torch.autograd.grad(kd_t, s_t)
    out["intra_kd_loss"] = abs(float(kd_j) - kd_t.item()) / abs(kd_t.item())
    out["intra_kd_grad"] = diff(g_j, g_t)

    # Parameter gradient of CE + IntRA-KD through the train-mode student.
    t_taps_j = {"psp": jnp.asarray(t_feat[:, :6, :8])}

    def jax_loss(params):
        (logits, taps), _ = j_erf.apply(
            {"params": params, "batch_stats": v_erf["batch_stats"]},
            jnp.asarray(images),
            train=True,
            mutable=["batch_stats"],
        )
        ce = weighted_cross_entropy(logits, jnp.asarray(labels), jnp.asarray(weights))
        kd = jax_intra_kd_loss(taps["encoder"], t_taps_j["psp"], jnp.asarray(labels), n)
        return ce + 10.0 * kd

    g_params = jax.grad(jax_loss)(v_erf["params"])
    t_erf.train()
    t_erf.zero_grad()
    t_logits, t_taps = t_erf(x_t)
    t_teacher = torch.from_numpy(t_feat[:, :6, :8].transpose(0, 3, 1, 2).copy())
    loss_t = F.cross_entropy(
        t_logits, y_t, weight=torch.tensor(weights), ignore_index=255
    ) + 10.0 * intra_kd_loss(t_taps["encoder"], t_teacher, y_t, n)
    loss_t.backward()
    grads_t = {name: p.grad for name, p in t_erf.named_parameters()}
    # One scale for all tensors: conv biases followed by BN have a true gradient of 0, so their
    # own maxima are rounding noise.
    errors, scale = [], 0.0
    for path, g in _flatten(g_params).items():
        *module_path, leaf = path
        name = f"{_torch_path(module_path)}.{_LEAF_NAMES[('params', leaf)]}"
        g_np = np.asarray(g)
        g_np = g_np.transpose(3, 2, 0, 1) if g_np.ndim == 4 else g_np
        scale = max(scale, float(np.max(np.abs(g_np))))
        errors.append(float(np.max(np.abs(g_np - grads_t[name].numpy()))))
    out["erfnet_param_grads"] = max(errors) / max(scale, 1e-12)
    return out


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the JAX implementation (tiny models)"
    )
    args = parser.parse_args()
    if not args.check:
        parser.print_help()
        return
    results = check_against_jax()
    for key, value in results.items():
        print(f"{key:24s} max relative difference {value:.2e}")
    worst = max(results.values())
    print(f"worst {worst:.2e}: {'OK' if worst < 1e-3 else 'MISMATCH'}")
    if not math.isfinite(worst) or worst >= 1e-3:
        raise SystemExit(1)


if __name__ == "__main__":
    _main()
