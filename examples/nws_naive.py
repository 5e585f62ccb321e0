"""NWS in a plain Avalanche script: Naive + NWSPlugin on a task-incremental stream.

Run: ``python examples/nws_naive.py`` (a tiny synthetic stream; a few seconds on a CPU).
Each task is evaluated by Avalanche on the state it stores (indices, BatchNorm, head), so
the accuracy of an earlier task never changes and forgetting is zero.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.logging import TextLogger
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin

from nws_avalanche import NWSPlugin, build_pools_kmeans


def toy_data(n_classes: int = 6, per_class: int = 40, size: int = 8, seed: int = 0):
    """Images whose class is a fixed random pattern plus noise (train, test)."""
    gen = torch.Generator().manual_seed(seed)
    # a per-class colour (what global pooling sees) plus a per-class texture
    patterns = 1.5 * torch.randn(n_classes, 3, 1, 1, generator=gen) + torch.randn(n_classes, 3, size, size, generator=gen)

    def split(n):
        y = torch.arange(n_classes).repeat_interleave(n)
        x = patterns[y] + 0.8 * torch.randn(len(y), 3, size, size, generator=gen)
        ds = TensorDataset(x, y)
        ds.targets = y.tolist()  # what Avalanche's benchmark generators read the classes from
        return ds
    return split(per_class), split(per_class // 2)


class SmallNet(nn.Module):
    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


def make_benchmark(seed: int = 0):
    train, test = toy_data(seed=seed)
    return nc_benchmark(train, test, n_experiences=3, task_labels=True, seed=seed,
                        class_ids_from_zero_in_each_exp=True)


def main(epochs: int = 3, log=None, plugins=(), after_task=None):
    """Train on the stream, evaluating the whole test stream after each experience;
    ``after_task(strategy, t)`` runs after each experience's training (e.g. to save artifacts)."""
    torch.manual_seed(0)
    bench = make_benchmark()
    model = SmallNet()
    pools = build_pools_kmeans(model, K=16, seed=0)   # k-means over the (here untrained) kernels
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                 forgetting_metrics(experience=True),
                                 loggers=[TextLogger(log)] if log is not None else [])
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     criterion=nn.CrossEntropyLoss(),
                     train_mb_size=16, train_epochs=epochs, eval_mb_size=64,
                     plugins=[NWSPlugin(pools=pools, beta=0.5), *plugins], evaluator=evaluator)
    for t, exp in enumerate(bench.train_stream):
        strategy.train(exp)
        if after_task is not None:
            after_task(strategy, t)
        strategy.eval(bench.test_stream)
    return strategy, bench, pools


if __name__ == "__main__":
    import sys

    strategy, _, _ = main(log=sys.stdout)
    metrics = strategy.evaluator.get_last_metrics()
    for k in sorted(metrics):
        if k.startswith(("Top1_Acc_Exp", "ExperienceForgetting")):
            print(f"{k}: {metrics[k]:.4f}")
