"""nws-avalanche: Neural Weight Search and its baselines on Avalanche task-incremental streams.

In your own Avalanche code: ``Naive(model=model, optimizer=opt, criterion=crit, plugins=[NWSPlugin(pools=...)])``.

The public names are loaded on first use (PEP 562), so ``import nws_avalanche`` and the command
line's ``--help``/``status`` do not import torch, numba or Avalanche.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "NWS": "method.avalanche_nws", "NWSPlugin": "method.plugin", "NWSConv2d": "method.layers",
    "NWSLinear": "method.layers", "commitment_loss": "method.layers", "nws_layers": "method.layers",
    "nwsify": "method.nwsify", "PoolSet": "pools.pool_set", "build_pools_kmeans": "pools.pool_set",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'nws_avalanche' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
