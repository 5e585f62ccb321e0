"""What a benchmark provides: an ordered list of tasks, each with its own classes and datasets.

A benchmark builder is registered by name in ``BENCHMARKS`` and called as
``build(cfg) -> BenchmarkData``; ``cfg`` is the run's ``RunConfig``. Datasets yield
``(image_tensor, label)`` with labels ``0..num_classes-1`` within the task; transforms are
already applied (train: augmentation; test: none).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from nws_avalanche.common.registry import Registry

BENCHMARKS: Registry = Registry("benchmark")
# benchmark name -> dataclass of its ``benchmark_options`` (checked with the rest of the config)
BENCHMARK_OPTIONS: Registry = Registry("benchmark options")


@dataclass
class Task:
    name: str
    classes: list[str]
    train: Dataset
    test: Dataset

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class BenchmarkData:
    name: str
    tasks: list[Task]
    in_channels: int = 3
    image_size: int = 32
    # Data (disjoint from every test set) to pretrain the network that pools and initial
    # weights come from, when the user gives no pretrained checkpoint; None if unavailable.
    pretrain: Dataset | None = None
    pretrain_classes: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


def check_benchmark_options(cfg) -> Any:
    """``cfg.benchmark_options`` as the benchmark's options dataclass: unknown keys, wrong types and
    out-of-range values stop here (ConfigError), before any work. None for a benchmark without one."""
    from nws_avalanche.common.errors import ConfigError
    from nws_avalanche.common.typed_options import build_options

    BENCHMARKS.get(cfg.benchmark)
    if cfg.benchmark not in BENCHMARK_OPTIONS:
        return None
    try:
        return build_options("benchmark_options", cfg.benchmark_options, BENCHMARK_OPTIONS.get(cfg.benchmark))
    except ConfigError as e:
        raise ConfigError(f"{cfg.benchmark}: {e}") from None


def build_benchmark(cfg) -> BenchmarkData:
    check_benchmark_options(cfg)
    return BENCHMARKS.get(cfg.benchmark)(cfg)


def to_avalanche(data: BenchmarkData):
    """An Avalanche scenario with ``train_stream``/``test_stream``; experience t has task label t."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_classification_dataset

    def wrap(ds, t):
        targets = getattr(ds, "targets", None)
        if targets is None:
            targets = [int(ds[i][1]) for i in range(len(ds))]
        return _make_taskaware_classification_dataset(ds, task_labels=t, targets=list(map(int, targets)))

    return with_task_labels(benchmark_from_datasets(
        train=[wrap(task.train, t) for t, task in enumerate(data.tasks)],
        test=[wrap(task.test, t) for t, task in enumerate(data.tasks)]))
