"""nws-avalanche: Neural Weight Search and its baselines on Avalanche task-incremental streams.

In your own Avalanche code: ``Naive(model, opt, crit, plugins=[NWSPlugin(pools=build_pools_kmeans(model, K=64))])``.
"""
from .layers import NWSConv2d, NWSLinear, commitment_loss, nws_layers
from .nwsify import nwsify
from .pools import PoolSet, build_pools_kmeans

__version__ = "0.1.0"
__all__ = ["NWS", "NWSPlugin", "NWSConv2d", "NWSLinear", "commitment_loss", "nws_layers", "nwsify", "PoolSet",
           "build_pools_kmeans"]


def __getattr__(name):  # Avalanche is imported only when the plugin or the strategy is asked for
    if name == "NWSPlugin":
        from .plugin import NWSPlugin
        return NWSPlugin
    if name == "NWS":
        from .avalanche_nws import NWS
        return NWS
    raise AttributeError(f"module 'nws_avalanche' has no attribute {name!r}")
