"""Plain backbones that ``nwsify`` converts. Registered by name in ``ARCHS``.

``resnet18`` is the NWS paper's ResNet-18: 7x7 stride-2 stem, no max-pool, four stages of two
BasicBlocks, 1x1 shortcut convs where the shape changes, global average pool and a bias-free
classifier ``fc`` (converted to a 1x1 NWS conv). Parameter names follow torchvision so its
state_dicts load (``fc.bias`` is ignored when the head has no bias).
"""
from __future__ import annotations

import torch.nn as nn

from . import archs
from ..common.registry import Registry
from .resnet import BasicBlock, ResNet  # noqa: F401  (the public names of the backbones)

ARCHS: Registry = Registry("architecture")


@ARCHS.register("resnet18")
def resnet18(num_classes: int, in_channels: int = 3) -> ResNet:
    """The paper's NWS-ResNet-18 (21 NWS layers with the head)."""
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_channels)


@ARCHS.register("resnet18-narrow")
def resnet18_narrow(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-18's layout at a quarter of the width, for small data (the embedded benchmark)."""
    return ResNet([2, 2, 2, 2], [16, 32, 64, 128], num_classes, in_channels)


@ARCHS.register("resnet-tiny")
def resnet_tiny(num_classes: int, in_channels: int = 3) -> ResNet:
    """One block per stage, widths 8..64: for tests."""
    return ResNet([1, 1, 1, 1], [8, 16, 32, 64], num_classes, in_channels, stem_kernel=3, stem_stride=1)


# the appendix's other backbones (``archs``)
for _name, _build in (("resnet34", archs.resnet34), ("mobilenet_v2", archs.mobilenet_v2),
                      ("vgg16", archs.vgg16), ("vgg16-bn", archs.vgg16_bn)):
    ARCHS.register(_name)(_build)


def build_arch(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    return ARCHS.get(name)(num_classes=num_classes, in_channels=in_channels)


def head_name(model: nn.Module) -> str:
    """The attribute that holds the task head (replaced per task): ``fc`` in every backbone here."""
    return "fc"


def get_head(model: nn.Module) -> nn.Module:
    return getattr(model, head_name(model))


def set_head(model: nn.Module, head: nn.Module) -> None:
    setattr(model, head_name(model), head)

