"""Model surgery shared by the baselines: swap layers in place, pick BatchNorm state."""
from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn as nn


def replace_layers(model: nn.Module, kind: type, make: Callable[[str, nn.Module], nn.Module],
                   skip: Callable[[str], bool] = lambda name: False) -> None:
    """Replace every module of exactly type ``kind`` by ``make(name, module)`` (unless ``skip(name)``)."""
    targets = [(n, m) for n, m in model.named_modules() if type(m) is kind and n and not skip(n)]
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, make(name, module))


def layers_of(model: nn.Module, kind: type) -> Iterator[tuple[str, nn.Module]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, kind))


def bn_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The entries of ``state`` that belong to BatchNorm modules of ``model``."""
    prefixes = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    return {k: v for k, v in state.items() if k.startswith(prefixes)}
