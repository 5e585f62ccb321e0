"""Which layers search grouped vectors: ``group_size`` (``gs``) input channels of a 1x1 conv form one
vector of length ``gs`` (the appendix's grouping of MobileNet-V2's pointwise convs).

``RunConfig.group_size`` / ``--group-size`` applies to every 1x1 convolution with more than one
input channel per group; kxk kernels (depthwise ones included) and the head keep ``gs = 1``.
"""
from __future__ import annotations

import torch.nn as nn

from ..common.errors import ConfigError
from .layers import NWSLinear
from .nwsify import convertible_layers


def group_sizes_for(model: nn.Module, group_size: int) -> dict[str, int]:
    """``{layer name: gs}`` for the 1x1 convs of ``model`` (empty when ``group_size == 1``)."""
    if group_size == 1:
        return {}
    out = {}
    for name, m in convertible_layers(model, include_head=False):
        if isinstance(m, (NWSLinear, nn.Linear)) or tuple(m.kernel_size) != (1, 1):
            continue
        cin = m.in_channels // m.groups
        if cin == 1:
            continue
        if cin % group_size:
            raise ConfigError(f"group_size={group_size} does not divide the {cin} input channels of 1x1 "
                              f"conv {name!r}; choose a group_size that divides every 1x1 conv's inputs")
        out[name] = group_size
    return out
