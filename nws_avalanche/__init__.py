"""nws-avalanche: Neural Weight Search and its baselines on Avalanche task-incremental streams.

In your own Avalanche code: ``Naive(model, opt, crit, plugins=[NWSPlugin(pools=build_pools_kmeans(model, K=64))])``.

The public names are loaded on first use (PEP 562), so ``import nws_avalanche`` and the command
line's ``--help``/``status`` do not import torch, numba or Avalanche.
"""
from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "NWS": "avalanche_nws", "NWSPlugin": "plugin", "NWSConv2d": "layers", "NWSLinear": "layers",
    "commitment_loss": "layers", "nws_layers": "layers", "nwsify": "nwsify", "PoolSet": "pools",
    "build_pools_kmeans": "pools",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'nws_avalanche' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


class _Package(types.ModuleType):
    """Importing the submodule ``nws_avalanche.nwsify`` binds it as the package attribute
    ``nwsify``; the public name is the function of that name, so the function is kept."""

    def __setattr__(self, name, value):
        if name == "nwsify" and isinstance(value, types.ModuleType):
            value = value.nwsify
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
