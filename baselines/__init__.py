"""Baselines, each one file registering itself in ``nws_avalanche.methods.METHODS``."""
from . import finetune  # noqa: F401
