"""Baselines, each one file registering itself in ``nws_avalanche.strategies.methods.METHODS``.

Every module here is imported, so adding a method is adding its file."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
