"""Independent PyTorch versions of the checkpoint families, for the weight-import tests.

Written from the descriptions in WEIGHTS.md and the released model code's behaviour, not from the
project's Flax code: ERFNet (IntRA-KD / Eromera layout), the dilated ResNet (torchvision names,
output stride 8) and the IntRA-KD PSPNet with its scale-series pyramid and PyTorch-0.3 bilinear
resizes. State dicts are built from the reference name/shape lists (random values), loaded
strictly into these modules (so the modules have exactly the real names and shapes), and their
BatchNorm statistics are measured on images (realistic running means and variances).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Copies of the shared design docs' reference/weights lists (names, shapes of real checkpoints).
REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "weight_lists"
BGR_MEAN = (103.939, 116.779, 123.68)


def reference_entries(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """``[(name, shape)]`` of a reference list, ``num_batches_tracked`` left out (0.3-era files)."""
    data = json.loads((REFERENCE_DIR / f"{name}.json").read_text())
    return [(k, tuple(shape)) for k, shape, _ in data["keys"] if "num_batches_tracked" not in k]


def random_state_dict(entries, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values of the right kind for every entry (weights by fan-in, positive variances)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in entries:
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_var":
            value = rng.uniform(0.5, 2.0, shape)
        elif leaf == "running_mean":
            value = rng.normal(0.0, 0.1, shape)
        elif leaf == "weight" and len(shape) == 1:  # BatchNorm scale
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "bias":
            value = rng.normal(0.0, 0.1, shape)
        else:  # conv / linear weight: roughly variance preserving
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        out[name] = torch.tensor(value, dtype=torch.float32)
    return out


def calibrate_batch_norm(module: nn.Module, images: torch.Tensor) -> None:
    """Sets every BatchNorm's running statistics to those of ``images`` (dropout off)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the forward passes
    module.train()
    for m in module.modules():
        if isinstance(m, nn.Dropout2d):
            m.eval()
    with torch.no_grad():
        module(images)
    module.eval()


def bgr_images(shape, seed: int = 0) -> np.ndarray:
    """Float32 NCHW images as the released code feeds them: BGR 0..255 minus the BGR mean.

    Smooth like photographs (random colours on a grid 8 pixels apart, bilinearly interpolated):
    white noise would excite every filter at once, which no real image does.
    """
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    grid = torch.tensor(rng.uniform(0.0, 255.0, (n, c, h // 8 + 2, w // 8 + 2)))
    images = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True).numpy()
    return (images - np.asarray(BGR_MEAN)[None, :, None, None]).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# ERFNet


class Downsampler(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout - cin, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(torch.cat([self.conv(x), F.max_pool2d(x, 2, 2)], 1)))


class Factorised(nn.Module):
    """non_bottleneck_1d: 3x1, 1x3, BN, then the dilated pair, BN, dropout, residual."""

    residual_bn = "bn2"

    def __init__(self, c: int, dropout: float, d: int):
        super().__init__()
        self.conv3x1_1 = nn.Conv2d(c, c, (3, 1), padding=(1, 0))
        self.conv1x3_1 = nn.Conv2d(c, c, (1, 3), padding=(0, 1))
        self.bn1 = nn.BatchNorm2d(c, eps=1e-3)
        self.conv3x1_2 = nn.Conv2d(c, c, (3, 1), padding=(d, 0), dilation=(d, 1))
        self.conv1x3_2 = nn.Conv2d(c, c, (1, 3), padding=(0, d), dilation=(1, d))
        self.bn2 = nn.BatchNorm2d(c, eps=1e-3)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1x3_1(F.relu(self.conv3x1_1(x)))))
        y = self.bn2(self.conv1x3_2(F.relu(self.conv3x1_2(y))))
        return F.relu(self.dropout(y) + x)


class Upsampler(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class ERFEncoder(nn.Module):
    def __init__(self, channels=(16, 64, 128), blocks=5, repeats=2, dilations=(2, 4, 8, 16),
                 output_classes=None, dropout=(0.1, 0.1)):  # fmt: skip
        super().__init__()
        c0, c1, c2 = channels
        self.initial_block = Downsampler(3, c0)
        layers = [Downsampler(c0, c1)] + [Factorised(c1, dropout[0], 1) for _ in range(blocks)]
        layers.append(Downsampler(c1, c2))
        layers += [Factorised(c2, dropout[1], d) for _ in range(repeats) for d in dilations]
        self.layers = nn.ModuleList(layers)
        if output_classes is not None:  # registered by the segmentation ERFNet, never called
            self.output_conv = nn.Conv2d(c2, output_classes, 1)

    def forward(self, x):
        x = self.initial_block(x)
        for layer in self.layers:
            x = layer(x)
        return x


class ERFDecoder(nn.Module):
    def __init__(self, num_classes: int, channels=(16, 64, 128)):
        super().__init__()
        c0, c1, c2 = channels
        self.layers = nn.ModuleList(
            [Upsampler(c2, c1), Factorised(c1, 0, 1), Factorised(c1, 0, 1)]
            + [Upsampler(c1, c0), Factorised(c0, 0, 1), Factorised(c0, 0, 1)]
        )
        self.output_conv = nn.ConvTranspose2d(c0, num_classes, 2, stride=2)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.output_conv(x)


class ERFNet(nn.Module):
    def __init__(self, num_classes: int, channels=(16, 64, 128), blocks=5, repeats=2,
                 dilations=(2, 4, 8, 16)):  # fmt: skip
        super().__init__()
        self.encoder = ERFEncoder(channels, blocks, repeats, dilations, output_classes=num_classes)
        self.decoder = ERFDecoder(num_classes, channels)

    def forward(self, x):
        return self.decoder(self.encoder(x))


class ImageNetERFNet(nn.Module):
    """Eromera's ImageNet classifier: ``features.encoder`` + pooled ``classifier.linear``."""

    def __init__(self):
        super().__init__()
        self.features = nn.Module()
        self.features.encoder = ERFEncoder(dropout=(0.03, 0.3))
        self.classifier = nn.Module()
        self.classifier.linear = nn.Linear(128, 1000)

    def forward(self, x):
        return self.features.encoder(x)


# ----------------------------------------------------------------------------------------------
# Dilated ResNet (torchvision names) and the IntRA-KD PSPNet


class Basic(nn.Module):
    expansion = 1
    residual_bn = "bn2"

    def __init__(self, cin, planes, stride, dilation, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)  # only the first is dilated
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottle(nn.Module):
    expansion = 4
    residual_bn = "bn3"

    def __init__(self, cin, planes, stride, dilation, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


RESNETS = {18: (Basic, (2, 2, 2, 2)), 34: (Basic, (3, 4, 6, 3)), 50: (Bottle, (3, 4, 6, 3)),
           101: (Bottle, (3, 4, 23, 3))}  # fmt: skip


class DilatedResNet(nn.Module):
    """layer3 dilation 2, layer4 dilation 4, stride 8; ``fc`` registered when ``with_fc``."""

    def __init__(self, depth: int, with_fc: bool = True):
        super().__init__()
        block, counts = RESNETS[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (n, planes, stride, dilation) in enumerate(
            zip(counts, (64, 128, 256, 512), (1, 2, 1, 1), (1, 1, 2, 4), strict=True)
        ):
            blocks = []
            for j in range(n):
                down = None
                if j == 0 and (stride != 1 or dilation != 1 or cin != planes * block.expansion):
                    down = nn.Sequential(
                        nn.Conv2d(cin, planes * block.expansion, 1, stride, bias=False),
                        nn.BatchNorm2d(planes * block.expansion),
                    )
                blocks.append(block(cin, planes, stride if j == 0 else 1, dilation, down))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.feature_dim = cin
        if with_fc:
            self.fc = nn.Linear(cin, 1000)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        feats = {}
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats[f"layer{i}"] = x
        return feats


def upsample_03(x: torch.Tensor, size) -> torch.Tensor:
    """PyTorch 0.3 ``upsample(mode='bilinear')``: align_corners=True."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class ScalePyramid(nn.Module):
    """The released PSPP context module, padding call as in the released code."""

    def __init__(self, cin: int, channels: int = 512, scales=(10, 20, 30, 60)):
        super().__init__()
        self.scales = scales
        self.swap_padding = True  # False: rows padded by the row amount (a control)
        self.conv2d_list = nn.ModuleList(nn.Conv2d(cin, channels, 1, bias=False) for _ in scales)
        self.bn2d_list = nn.ModuleList(nn.BatchNorm2d(channels) for _ in scales)
        self.out_conv2d = nn.Conv2d(cin + channels * len(scales), channels, 3, 1, 1, bias=False)
        self.out_bn2d = nn.BatchNorm2d(channels)

    def forward(self, x):
        h, w = x.shape[2:]
        outs = [x]
        for conv, bn, s in zip(self.conv2d_list, self.bn2d_list, self.scales, strict=True):
            small = (max(1, int((h - 1) / s + 1)), max(1, int((w - 1) / s + 1)))
            pad_h, pad_w = small[0] * s - h, small[1] * s - w
            # F.pad reads its tuple last axis first: the released code's (h, h, w, w) tuple pads
            # the columns by the row amount and the rows by the column amount.
            rows, cols = (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)
            padded = F.pad(x, (*rows, *cols) if self.swap_padding else (*cols, *rows))
            y = F.relu(bn(conv(upsample_03(padded, small))))
            y = upsample_03(y, (small[0] * s, small[1] * s))
            outs.append(y[:, :, pad_h // 2 : pad_h // 2 + h, pad_w // 2 : pad_w // 2 + w])
        return F.relu(self.out_bn2d(self.out_conv2d(torch.cat(outs, 1))))


class IntraKDPSPNet(nn.Module):
    def __init__(self, num_classes: int = 37):
        super().__init__()
        self.base_model = DilatedResNet(101, with_fc=False)
        self.context_model = ScalePyramid(2048)
        self.classifier = nn.Conv2d(512, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)

    def forward(self, x):
        y = self.context_model(self.base_model(x)["layer4"])
        return upsample_03(self.classifier(self.dropout(y)), x.shape[2:])


def save_like_release(state, path, legacy: bool = True, **meta) -> str:
    """Saves as the released IntRA-KD files: ``{**meta, 'state_dict': {'module.' + name: ...}}``
    (legacy format: PyTorch 0.3 wrote no zip files)."""
    saved = {**meta, "state_dict": {"module." + k: v for k, v in state.items()}}
    torch.save(saved, path, _use_new_zipfile_serialization=not legacy)
    return str(path)


def built(module: nn.Module, reference: str, images: np.ndarray, prefix: str = "", seed: int = 0):
    """``module`` loaded strictly with a random state dict of ``reference``'s names, calibrated.

    Returns ``(module, state_dict)``, the state dict with the reference's names (``prefix``
    added) and the measured BatchNorm statistics, without ``num_batches_tracked``.
    """
    entries = reference_entries(reference)
    state = random_state_dict([(k[len(prefix) :], s) for k, s in entries], seed)
    module.load_state_dict(state, strict=True)
    # Trained residual networks end their residual branches with small BatchNorm scales (each
    # block adds a small correction); scales near 1 make a random 101-layer stream grow until
    # float32 rounding alone differs by 1e-4 between two correct implementations.
    rng = np.random.default_rng(seed + 1)
    for block in module.modules():
        if hasattr(block, "residual_bn"):
            scale = getattr(block, block.residual_bn).weight
            scale.data = torch.tensor(rng.uniform(0.05, 0.3, scale.shape), dtype=torch.float32)
    calibrate_batch_norm(module, torch.from_numpy(images))
    values = module.state_dict()
    # The released files' order (ImageNet ERFNet blocks register their layers in another order).
    return module, {k: values[k[len(prefix) :]].clone() for k, _ in entries}
