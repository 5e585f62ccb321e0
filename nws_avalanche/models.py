"""Plain backbones that ``nwsify`` converts. Registered by name in ``ARCHS``.

``resnet18`` is the NWS paper's ResNet-18: 7x7 stride-2 stem, no max-pool, four stages of two
BasicBlocks, 1x1 shortcut convs where the shape changes, global average pool and a bias-free
classifier ``fc`` (converted to a 1x1 NWS conv). Parameter names follow torchvision so its
state_dicts load (``fc.bias`` is ignored when the head has no bias).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .registry import Registry

ARCHS: Registry = Registry("architecture")


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers: Sequence[int], widths: Sequence[int], num_classes: int,
                 in_channels: int = 3, stem_kernel: int = 7, stem_stride: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], stem_kernel, stem_stride, stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(inplanes, w, stride=2 if (b == 0 and i > 0) else 1))
                inplanes = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes, bias=False)
        self.feature_dim = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x):
        return self.fc(self.features(x))


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


def build_arch(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    return ARCHS.get(name)(num_classes=num_classes, in_channels=in_channels)


def head_name(model: nn.Module) -> str:
    """The attribute that holds the task head (replaced per task)."""
    return getattr(model, "head_attr", "fc")


def get_head(model: nn.Module) -> nn.Module:
    return getattr(model, head_name(model))


def set_head(model: nn.Module, head: nn.Module) -> None:
    setattr(model, head_name(model), head)


from . import archs  # noqa: E402,F401  registers resnet34, mobilenet_v2, vgg16 (needs ARCHS and ResNet above)
