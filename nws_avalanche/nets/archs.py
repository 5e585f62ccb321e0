"""The appendix's other backbones (ResNet-34, MobileNet-V2, VGG-16), registered in ``models.ARCHS``.

All keep torchvision's parameter names, so torchvision state_dicts load (see
``pools.pretrained.load_torchvision_state``); the task head is always the bias-free Linear ``fc``.

- ``resnet34``: the paper's ResNet layout (7x7 stride-2 stem, no max-pool) with [3, 4, 6, 3]
  BasicBlocks; names as torchvision's ``resnet34``.
- ``mobilenet_v2``: torchvision's ``features`` (inverted residual blocks; depthwise 3x3 convs
  have one input channel per group, so NWS searches single-channel 3x3 kernels), global average
  pool and ``fc`` instead of ``classifier`` (Dropout + Linear): dropout is removed and
  torchvision's ``classifier.1.*`` is read as ``fc.*``.
- ``vgg16`` / ``vgg16-bn``: torchvision's ``features`` (13 convs, with bias; ``-bn`` adds
  BatchNorm as ``vgg16_bn``), global average pool and one ``fc`` in place of the three FC
  layers; torchvision's ``classifier.*`` entries are dropped on load.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers as vgg_make_layers

from .resnet import ResNet


class FeaturesHead(nn.Module):
    """``features`` (a torchvision trunk) -> global average pool -> bias-free ``fc``."""

    # torchvision checkpoint keys read under another name / entries not used (see load_torchvision_state)
    state_renames: dict[str, str] = {}
    state_drop_prefixes: tuple[str, ...] = ()

    def __init__(self, features: nn.Sequential, feature_dim: int, num_classes: int):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(feature_dim, num_classes, bias=False)
        self.feature_dim = feature_dim

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def _replace_first_conv(features: nn.Sequential, in_channels: int) -> None:
    """Give the stem conv ``in_channels`` inputs (e.g. 1 for grey images), same hyper-parameters."""
    if in_channels == 3:
        return
    for name, m in features.named_modules():
        if isinstance(m, nn.Conv2d):
            new = nn.Conv2d(in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                            bias=m.bias is not None)
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            if new.bias is not None:
                nn.init.zeros_(new.bias)
            parent, _, attr = name.rpartition(".")
            setattr(features.get_submodule(parent) if parent else features, attr, new)
            return


class MobileNetV2(FeaturesHead):
    state_renames = {"classifier.1.": "fc."}


class VGG16(FeaturesHead):
    state_drop_prefixes = ("classifier.",)
    min_input_size = 32  # five 2x2 max-pools


def resnet34(num_classes: int, in_channels: int = 3) -> ResNet:
    """The paper's ResNet layout with ResNet-34's [3, 4, 6, 3] blocks (37 NWS layers with the head)."""
    return ResNet([3, 4, 6, 3], [64, 128, 256, 512], num_classes, in_channels)


def mobilenet_v2(num_classes: int, in_channels: int = 3, width_mult: float = 1.0) -> MobileNetV2:
    trunk = tv_mobilenet_v2(weights=None, width_mult=width_mult).features
    _replace_first_conv(trunk, in_channels)
    dim = trunk[-1][0].out_channels
    return MobileNetV2(trunk, dim, num_classes)


def _vgg(batch_norm: bool, num_classes: int, in_channels: int) -> VGG16:
    trunk = vgg_make_layers(vgg_cfgs["D"], batch_norm=batch_norm)  # "D" = VGG-16
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    _replace_first_conv(trunk, in_channels)
    return VGG16(trunk, 512, num_classes)


def vgg16(num_classes: int, in_channels: int = 3) -> VGG16:
    return _vgg(False, num_classes, in_channels)


def vgg16_bn(num_classes: int, in_channels: int = 3) -> VGG16:
    return _vgg(True, num_classes, in_channels)
