"""Benchmarks, registered by name in ``BENCHMARKS``."""
from .base import BENCHMARKS, BenchmarkData, Task, build_benchmark, to_avalanche
from . import digits  # noqa: F401  (registers split-digits)

__all__ = ["BENCHMARKS", "BenchmarkData", "Task", "build_benchmark", "to_avalanche"]
