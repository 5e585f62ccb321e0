"""nws-avalanche: Neural Weight Search and its baselines on Avalanche task-incremental streams."""
from .layers import NWSConv2d, NWSLinear, commitment_loss, nws_layers
from .nwsify import nwsify
from .pools import PoolSet, build_pools_kmeans

__version__ = "0.1.0"
__all__ = ["NWSConv2d", "NWSLinear", "commitment_loss", "nws_layers", "nwsify", "PoolSet", "build_pools_kmeans"]
