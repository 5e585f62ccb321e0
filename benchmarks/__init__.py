"""Benchmarks, registered by name in ``BENCHMARKS``."""
from .base import BENCHMARKS, BenchmarkData, Task, build_benchmark, to_avalanche
from . import digits  # noqa: F401  (registers split-digits)
from . import digits_transfer  # noqa: F401  (registers digits-transfer)
from . import font_glyphs  # noqa: F401  (registers font-glyphs)
from . import cifar100  # noqa: F401  (registers split-cifar100)
from . import cub  # noqa: F401  (registers cub-to-sketches)

__all__ = ["BENCHMARKS", "BenchmarkData", "Task", "build_benchmark", "to_avalanche"]
