"""The PyTorch checkpoint families the importer knows: names, models and conventions.

An arch says which project model the checkpoint builds (registry name and arguments), how a Flax
module path of that model is named in the checkpoint, which part of the model the checkpoint
fills, which of its entries are consumed but unused, and the input channel order it was trained
with. WEIGHTS.md (shared design docs) lists the layouts; ``reference/weights/*.json`` beside it
lists every name and shape.

  intrakd_erfnet           the released IntRA-KD ApolloScape ERFNet (erfnet_trained.pth.tar):
                           the whole model; encoder.output_conv is unused by segmentation; BGR
  intrakd_pspnet           the released IntRA-KD ApolloScape PSPNet-ResNet-101
                           (pspnet_46_6.pth.tar): the whole model, scale-series pyramid,
                           align_corners; BGR
  torchvision_resnet{18,34,50,101}
                           ImageNet ResNets (resnet101-5d3b4d8f.pth, ...): the dilated backbone
                           of the PSPNet teacher and the ResNet students; fc unused; RGB
  erfnet_imagenet_encoder  Eromera's ImageNet ERFNet encoder (erfnet_encoder_pretrained.pth.tar):
                           ERFNet's encoder; classifier.linear unused; RGB
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from intrakd_jax.weights.readers import WeightsError


@dataclasses.dataclass(frozen=True)
class Arch:
    """One checkpoint family.

    Attributes:
      name: the arch name users pass.
      model: registry name of the model ``import_torch_checkpoint`` builds.
      model_kwargs: its arguments where they differ from the model's defaults (the released
        architecture; ``models.model_defaults`` has the rest).
      torch_module: Flax module path (``"encoder/layers_3/conv1x3_1"``) -> checkpoint module name
        (``"encoder.layers.3.conv1x3_1"``), or None for a module the checkpoint does not hold.
      covers: Flax module path prefix the checkpoint must fill completely ("" = the whole model).
      unused: regex of checkpoint names that are consumed without a place in the model.
      head: Flax module paths that may keep their initialisation when their shape differs from
        the checkpoint's (a new classifier for another class count, when fine-tuning).
      channel_order: "bgr" or "rgb", the input the checkpoint was trained on.
      flip_kernel: Flax module path of the first conv, whose input channels are reversed to
        change the channel order; or None, with ``flip_field`` naming the model field instead.
      flip_field: boolean model field that reverses the input channels inside the model (ERFNet:
        its first block also concatenates the raw input, so a kernel flip is not enough).
      input_note: the input convention, for documentation and messages.
    """

    name: str
    model: str
    model_kwargs: Mapping[str, Any]
    torch_module: Callable[[str], str | None]
    covers: str
    unused: str
    head: tuple[str, ...]
    channel_order: str
    flip_kernel: str | None = None
    flip_field: str | None = None
    input_note: str = ""

    @property
    def has_classifier(self) -> bool:
        """Whether the checkpoint holds the whole model, classifier included."""
        return self.covers == ""


def _erfnet_module(path: str) -> str:
    # "encoder/layers_3/conv1x3_1" -> "encoder.layers.3.conv1x3_1"
    return re.sub(r"layers_(\d+)", r"layers.\1", path).replace("/", ".")


_RESNET_RULES = (
    (r"^layer(\d)_(\d+)/", r"layer\1.\2."),
    (r"downsample_conv$", "downsample.0"),
    (r"downsample_bn$", "downsample.1"),
)


def _resnet_module(prefix: str) -> Callable[[str], str | None]:
    """``backbone/layer3_4/downsample_conv`` -> ``<prefix>layer3.4.downsample.0``."""

    def rename(path: str) -> str | None:
        if not path.startswith("backbone/"):
            return None
        name = path[len("backbone/") :]
        for pattern, replacement in _RESNET_RULES:
            name = re.sub(pattern, replacement, name)
        return prefix + name.replace("/", ".")

    return rename


_PSPP_RULES = (
    (r"^ppm/conv_(\d+)$", r"context_model.conv2d_list.\1"),
    (r"^ppm/bn_(\d+)$", r"context_model.bn2d_list.\1"),
    (r"^head_conv$", "context_model.out_conv2d"),
    (r"^head_bn$", "context_model.out_bn2d"),
    (r"^classifier$", "classifier"),
)


def _intrakd_pspnet_module(path: str) -> str | None:
    if path.startswith("backbone/"):
        return _resnet_module("base_model.")(path)
    for pattern, replacement in _PSPP_RULES:
        if re.match(pattern, path):
            return re.sub(pattern, replacement, path)
    return None


def _imagenet_encoder_module(path: str) -> str | None:
    return "features." + _erfnet_module(path) if path.startswith("encoder/") else None


_BGR_NOTE = (
    "cv2 BGR 0..255 minus the mean (103.939, 116.779, 123.68), std 1: the project's RGB input "
    "with data.mean_rgb (123.68, 116.779, 103.939) and std 1 once the channel order is matched"
)
_IMAGENET_NOTE = (
    "RGB /255 normalised with mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225); the "
    "official recipe fine-tunes from them on mean-subtracted 0..255 images as the project does"
)


def _torchvision(depth: int) -> Arch:
    student = depth in (18, 34)
    return Arch(
        name=f"torchvision_resnet{depth}",
        model=f"resnet{depth}" if student else "pspnet",
        model_kwargs={} if student else {"depth": depth},
        torch_module=_resnet_module(""),
        covers="backbone/",
        unused=r"^fc\.",
        head=(),
        channel_order="rgb",
        flip_kernel="backbone/conv1",
        input_note=_IMAGENET_NOTE,
    )


ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch(
            name="intrakd_erfnet",
            model="erfnet",
            model_kwargs={"stage1_dropout": 0.1, "stage2_dropout": 0.1},  # 0.03, 0.3 in ERFNet
            torch_module=_erfnet_module,
            covers="",
            unused=r"^encoder\.output_conv\.",
            head=("decoder/output_conv",),
            channel_order="bgr",
            flip_field="reverse_input_channels",
            input_note=_BGR_NOTE,
        ),
        Arch(
            name="intrakd_pspnet",
            model="pspnet",
            model_kwargs={"depth": 101, "scale_series": (10, 20, 30, 60), "align_corners": True},
            torch_module=_intrakd_pspnet_module,
            covers="",
            unused=r"$^",  # every entry has a place
            head=("classifier",),
            channel_order="bgr",
            flip_kernel="backbone/conv1",
            input_note=_BGR_NOTE,
        ),
        *(_torchvision(depth) for depth in (18, 34, 50, 101)),
        Arch(
            name="erfnet_imagenet_encoder",
            model="erfnet",
            model_kwargs={},
            torch_module=_imagenet_encoder_module,
            covers="encoder/",
            unused=r"^classifier\.linear\.",
            head=(),
            channel_order="rgb",
            flip_field="reverse_input_channels",
            input_note=_IMAGENET_NOTE,
        ),
    )
}


def get_arch(name: str) -> Arch:
    """The arch called ``name``.

    Raises:
      WeightsError: an unknown name (the message lists the known ones).
    """
    if name not in ARCHS:
        raise WeightsError(f"unknown checkpoint arch {name!r}; known archs: {', '.join(ARCHS)}")
    return ARCHS[name]
