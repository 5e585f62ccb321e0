"""``nwsify``: replace the conv layers and Linear layers of a model by NWS layers.

Converted: every ``nn.Conv2d`` (any ``padding_mode``: reflect/circular/replicate pad explicitly,
as ``nn.Conv2d`` does) and every ``nn.Linear`` (a 1x1 NWS conv, d = group size), the task
head(s) included unless ``include_head=False``. The head is ``fc``, every classifier inside an
Avalanche ``MultiHeadClassifier``/``IncrementalClassifier``, else the last ``nn.Linear``.
Layers that cannot be searched faithfully (``Conv1d``, ``Conv3d``, transposed and lazy convs,
``nn.MultiheadAttention``'s projections, subclasses of Conv2d/Linear whose forward may differ)
are refused with their name and the reason.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

from ..common.errors import ConfigError
from ..nets.models import head_name
from .fastbuild import skipping_init
from .layers import NWSConv2d, NWSLinear, SearchFactory


_REFUSED = {
    nn.Conv1d: "Conv1d kernels are 1-D; NWS pools here hold 2-D kernels (reshape to Conv2d (k, 1) first)",
    nn.Conv3d: "Conv3d is not supported by NWS layers",
    nn.ConvTranspose1d: "transposed convolutions are not supported by NWS layers",
    nn.ConvTranspose2d: "transposed convolutions are not supported by NWS layers",
    nn.ConvTranspose3d: "transposed convolutions are not supported by NWS layers",
}


def head_names(model: nn.Module) -> set[str]:
    """The task head(s): ``fc`` (``models.head_name``), every Avalanche incremental/multi-head
    classifier's Linear, else the last ``nn.Linear`` of the model."""
    from avalanche.models import IncrementalClassifier, MultiHeadClassifier

    names = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, NWSLinear))}
    heads = {head_name(model)} & names
    for n, m in model.named_modules():
        if isinstance(m, (MultiHeadClassifier, IncrementalClassifier)):
            heads |= {f"{n}.{c}" if n else c for c, _ in m.named_modules() if c} & names
    if not heads and names:
        heads = {[n for n, m in model.named_modules() if isinstance(m, (nn.Linear, NWSLinear))][-1]}
    return heads


def refusal(name: str, m: nn.Module) -> str | None:
    """Why layer ``m`` cannot become an NWS layer faithfully (None: it can, or it is not a candidate)."""
    for kind, why in _REFUSED.items():
        if type(m) is kind:
            return why
    if isinstance(m, nn.modules.lazy.LazyModuleMixin):
        return "lazy layers have no weight shape yet: run one forward pass before converting"
    if isinstance(m, nn.MultiheadAttention):
        return "nn.MultiheadAttention uses its projection weights directly, not through its Linear layers"
    if isinstance(m, (nn.Conv2d, nn.Linear)) and type(m) not in (nn.Conv2d, nn.Linear) \
            and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return f"{type(m).__name__} subclasses {type(m).__mro__[1].__name__}; its forward may differ from the NWS layer's"
    return None


def convertible_layers(model: nn.Module, include_head: bool = True) -> list[tuple[str, nn.Module]]:
    """Every layer ``nwsify`` converts (or has converted): convs, hidden Linears and the head(s).

    Raises ``ConfigError`` naming the first layer that cannot be converted faithfully."""
    heads = head_names(model)
    inside_attention = {f"{n}.{c}" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
                        for c, _ in m.named_modules() if c}
    out = []
    for name, m in model.named_modules():
        if isinstance(m, NWSConv2d):
            if include_head or name not in heads:
                out.append((name, m))
            continue
        if name in inside_attention:
            continue
        why = refusal(name, m)
        if why is not None:
            raise ConfigError(f"layer {name!r} ({type(m).__name__}) cannot be converted to NWS: {why}")
        if type(m) is nn.Conv2d or (type(m) is nn.Linear and (include_head or name not in heads)):
            out.append((name, m))
    return out


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` in ``model`` (container children included)."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, (nn.ModuleDict, nn.Sequential, nn.ModuleList)):
        parent._modules[attr] = module
    else:
        setattr(parent, attr, module)


def make_nws_layer(m: nn.Module, pool: torch.Tensor, group_size: int = 1,
                   search_factory: SearchFactory | None = None, search_now: bool = True) -> NWSConv2d:
    if isinstance(m, nn.Linear):
        new = NWSLinear(m.in_features, m.out_features, pool, bias=m.bias is not None,
                        group_size=group_size, search_factory=search_factory)
    else:
        new = NWSConv2d(m.in_channels, m.out_channels, m.kernel_size, pool, stride=m.stride,
                        padding=m.padding, dilation=m.dilation, groups=m.groups,
                        bias=m.bias is not None, group_size=group_size, search_factory=search_factory,
                        padding_mode=m.padding_mode)
    new.to(m.weight.device)
    if not skipping_init():  # when skipping, the source weights are uninitialised too
        with torch.no_grad():
            new.weight.copy_(m.weight.view_as(new.weight))
            if m.bias is not None:
                new.bias.copy_(m.bias)
    if search_now:
        new.assign()
    return new


def pool_for(name: str, pools: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """``pools[name]``; for a head added later by Avalanche (``classifiers.<task>.``), a sibling head's pool."""
    if name in pools:
        return pools[name]
    pattern = re.sub(r"classifiers\.[^.]+\.", "classifiers.*.", name)
    if pattern == name:
        return None
    for key, table in pools.items():
        if re.sub(r"classifiers\.[^.]+\.", "classifiers.*.", key) == pattern:
            return table
    return None


def nwsify(model: nn.Module, pools, include_head: bool = True,
           group_sizes: dict[str, int] | None = None,
           search_factory: SearchFactory | None = None, search_now: bool = True) -> nn.Module:
    """Convert in place every conv (and the head if ``include_head``) that has a pool in ``pools``.

    ``pools``: a ``PoolSet`` (its group sizes apply) or a dict ``{layer name: [K, d] table}``.
    Each layer's temporary kernels start from the module's current weights, on its device. Every
    convertible layer must have a pool; a missing one is an error naming the layer.
    ``search_now=False`` skips the initial search (for skeletons whose indices are loaded from an
    artifact).
    """
    if hasattr(pools, "tables"):  # a PoolSet
        group_sizes = {**pools.group_sizes, **(group_sizes or {})}
        pools = pools.tables
    group_sizes = group_sizes or {}
    for name, m in convertible_layers(model, include_head):
        if isinstance(m, NWSConv2d):
            continue
        table = pool_for(name, pools)
        if table is None:
            raise ConfigError(f"no kernel pool for layer {name!r}; the pools have: {', '.join(pools)}")
        gs = group_sizes.get(name, 1)
        expected = gs * (m.kernel_size[0] * m.kernel_size[1] if isinstance(m, nn.Conv2d) else 1)
        if table.dim() != 2 or table.shape[1] != expected:
            raise ConfigError(f"the pool of layer {name!r} is {list(table.shape)}, the layer needs [K, {expected}]"
                              f" (group size {gs}); build pools for this model (build_pools_kmeans)")
        set_module(model, name, make_nws_layer(m, table.to(m.weight.device), gs, search_factory, search_now))
    return model
