"""``nwsify``: replace the conv layers (and optionally the classifier) of a model by NWS layers."""
from __future__ import annotations

import torch
import torch.nn as nn

from .errors import ConfigError
from .fastbuild import skipping_init
from .layers import NWSConv2d, NWSLinear, SearchFactory
from .models import head_name


def vector_length(module: nn.Module, group_size: int = 1) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return kh * kw * group_size
    if isinstance(module, nn.Linear):
        return group_size
    raise TypeError(type(module))


def convertible_layers(model: nn.Module, include_head: bool = True) -> list[tuple[str, nn.Module]]:
    head = head_name(model)
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, NWSConv2d)) and not isinstance(m, NWSLinear):
            out.append((name, m))
        elif include_head and name == head and isinstance(m, (nn.Linear, NWSLinear)):
            out.append((name, m))
    return out


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def make_nws_layer(m: nn.Module, pool: torch.Tensor, group_size: int = 1,
                   search_factory: SearchFactory | None = None, search_now: bool = True) -> NWSConv2d:
    if isinstance(m, nn.Linear):
        new = NWSLinear(m.in_features, m.out_features, pool, bias=m.bias is not None,
                        group_size=group_size, search_factory=search_factory)
    else:
        new = NWSConv2d(m.in_channels, m.out_channels, m.kernel_size, pool, stride=m.stride,
                        padding=m.padding, dilation=m.dilation, groups=m.groups,
                        bias=m.bias is not None, group_size=group_size, search_factory=search_factory)
    if not skipping_init():  # when skipping, the source weights are uninitialised too
        with torch.no_grad():
            new.weight.copy_(m.weight.view_as(new.weight))
            if m.bias is not None:
                new.bias.copy_(m.bias)
    if search_now:
        new.assign()
    return new


def nwsify(model: nn.Module, pools: dict[str, torch.Tensor], include_head: bool = True,
           group_sizes: dict[str, int] | None = None,
           search_factory: SearchFactory | None = None, search_now: bool = True) -> nn.Module:
    """Convert in place every conv (and the head if ``include_head``) that has a pool in ``pools``.

    Each layer's temporary kernels start from the module's current weights. Every convertible
    layer must have a pool; a missing one is an error naming the layer. ``search_now=False``
    skips the initial search (for skeletons whose indices are loaded from an artifact).
    """
    group_sizes = group_sizes or {}
    for name, m in convertible_layers(model, include_head):
        if isinstance(m, NWSConv2d):
            continue
        if name not in pools:
            raise ConfigError(f"no kernel pool for layer {name!r}; the pool file has: {', '.join(pools)}")
        gs = group_sizes.get(name, 1)
        _swap(model, name, make_nws_layer(m, pools[name], gs, search_factory, search_now))
    return model
