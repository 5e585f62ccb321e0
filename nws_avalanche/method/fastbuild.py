"""Skip parameter initialisation when building a skeleton whose every value is loaded next.

``build_arch`` + ``nwsify`` draw kaiming weights for every kernel (twice: the plain conv, then the
NWS layer), which dominates the rebuild of a task's model from its artifact; those values are
all overwritten (NWS kernels by ``pool[indices]``, everything else by the stored state, and the
loader refuses a file that leaves an entry unset), so drawing them only costs time.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch.nn as nn

_FILLERS = ("kaiming_normal_", "kaiming_uniform_", "normal_", "uniform_", "ones_", "zeros_",
            "constant_", "xavier_normal_", "xavier_uniform_", "trunc_normal_", "orthogonal_")


def _keep(tensor, *args, **kwargs):
    return tensor


_depth = 0


def skipping_init() -> bool:
    """True inside ``skip_weight_init``: weights are uninitialised, copying them is pointless."""
    return _depth > 0


@contextmanager
def skip_weight_init():
    """Inside the block ``torch.nn.init`` fillers leave tensors as allocated (not thread-safe)."""
    global _depth
    saved = {name: getattr(nn.init, name) for name in _FILLERS if hasattr(nn.init, name)}
    _depth += 1
    try:
        for name in saved:
            setattr(nn.init, name, _keep)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)
        _depth -= 1
