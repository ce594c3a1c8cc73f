"""ResNet-18/34 students: the dilated ResNet of ``resnet.py`` with a light segmentation head.

Backbone (output stride 8, the PSPNet teacher's, so torchvision ImageNet weights import the same
way) -> 3x3 conv to ``head_channels`` -> BN -> ReLU (the "head" tap) -> channel dropout -> 1x1
classifier -> bilinear upsampling of the logits to the input size.

Why this head: it is PSPNet's head without the pyramid pooling module. The pyramid pooling and
its 4096-channel 3x3 conv would add about 20M parameters at ResNet-18/34 width, more than the
backbones themselves, and make the "lightweight" students as large as a teacher. A bare 1x1
classifier on layer4 would leave no student feature map comparable to the teacher's "psp" tap;
the 3x3 conv to 128 channels (590K parameters, 5% of ResNet-18) gives a 1/8 high-level tap of
ERFNet's encoder width and some spatial context after the backbone.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from intrakd_jax.models.conv import ConvImpl
from intrakd_jax.models.pspnet import (
    RESNET_STAGE_TAPS,
    backbone_features,
    check_backbone_head_fields,
    segmentation_head,
)


class ResNetStudent(nn.Module):
    """Dilated ResNet (output stride 8) with a light head (student).

    Call as ``logits_bhwk, taps = model.apply(variables, images_bhwc, train=False)``. Logits are
    float32 at the input resolution (any input size; the 1/8 maps round up like PyTorch). Taps
    (compute dtype), with e = 1 for depth 18/34 and 4 for 50/101 (bottleneck expansion):

    ========  ======  ======================  =========================================
    tap       stride  channels                what
    ========  ======  ======================  =========================================
    "layer1"  4       base_width x e (64)     end of layer1; the "mid" level
    "layer2"  8       2 x base_width x e      end of layer2
    "layer3"  8       4 x base_width x e      end of layer3 (dilation 2)
    "layer4"  8       8 x base_width x e      end of layer4 (dilation 4)
    "head"    8       head_channels (128)     head conv + BN + ReLU; the "high" level
    ========  ======  ======================  =========================================

    ``sad_taps`` are layer2, layer3, layer4: the successive residual stages at 1/8. layer1 is
    left out as ENet-SAD leaves out its first block (SAD goes on the middle and late blocks).

    Parameters at 5 classes: 11,767,237 (ResNet-18) and 21,875,397 (ResNet-34): the torchvision
    backbone without ``fc`` (11,176,512 / 21,284,672), head conv + BN 590,080, classifier
    128 x classes + classes.

    Attributes:
      num_classes: Number of output classes.
      dtype: Compute dtype (params stay float32).
      bn_axis_name: Axis name for cross-device BatchNorm statistics (e.g. "data" in shard_map).
      bn_momentum: Flax BatchNorm momentum (0.9 equals PyTorch momentum 0.1).
      bn_epsilon: BatchNorm epsilon.
      depth: ResNet depth: 18 or 34 for the students (50 and 101 also build).
      base_width: ResNet base width (64 standard); shrinks everything for tests.
      deep_stem: Three 3x3 stem convs instead of the 7x7 one (torchvision weights need 7x7).
      head_channels: Channels of the 3x3 head conv (the "head" tap).
      dropout_rate: Channel dropout before the classifier.
      conv_impl: "auto" (default: "onednn" where installed, else "fast"), "fast" (CPU-tuned
        convolution gradients, ``models.conv``), "onednn" or "xla" (Flax's ``nn.Conv``
        computation); same parameters.
    """

    num_classes: int
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    depth: int = 18
    base_width: int = 64
    deep_stem: bool = False
    head_channels: int = 128
    dropout_rate: float = 0.1
    conv_impl: ConvImpl = "auto"

    tap_levels: ClassVar[dict[str, str]] = {"high": "head", "mid": "layer1"}
    sad_taps: ClassVar[tuple[str, ...]] = ("layer2", "layer3", "layer4")

    def __post_init__(self) -> None:
        check_backbone_head_fields(self)
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
        logits_bhwk, head_bhwc = segmentation_head(self, feats["layer4"], train, x.shape[1:3])
        return logits_bhwk, {**{k: feats[k] for k in RESNET_STAGE_TAPS}, "head": head_bhwc}
