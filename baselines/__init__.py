"""Baselines, each one file registering itself in ``nws_avalanche.methods.METHODS``."""
from . import aqd, avalanche_methods, finetune, frozen, ksm, packnet  # noqa: F401
