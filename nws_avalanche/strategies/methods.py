"""The method registry: name -> strategy class (a ``TaskIncrementalStrategy``)."""
from ..common.registry import Registry

METHODS: Registry = Registry("method")


def load_all() -> None:
    """Import every module that registers a method."""
    import importlib

    for mod in ("nws_avalanche.strategies.nws", "baselines"):
        importlib.import_module(mod)
