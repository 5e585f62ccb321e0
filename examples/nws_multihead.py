"""NWS with a multi-head model: an Avalanche ``MultiTaskModule`` with a ``MultiHeadClassifier``.

Avalanche adds one head per task; ``NWSPlugin`` turns each new head into an NWS layer (it takes
the pool of the first head) and keeps every task's indices, BatchNorm and head. Run:
``python examples/nws_multihead.py``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.logging import TextLogger
from avalanche.models import MultiHeadClassifier, MultiTaskModule
from avalanche.models.dynamic_modules import IncrementalClassifier
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin

from nws_avalanche import NWSPlugin, build_pools_kmeans

from nws_naive import make_benchmark  # the example beside this one (its folder is on sys.path)


class MultiHeadNet(MultiTaskModule):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = MultiHeadClassifier(16, initial_out_features=2)

    def forward_single_task(self, x, task_label):
        return self.classifier(self.features(x), task_label)


def skeleton(num_tasks: int) -> MultiHeadNet:
    """The network with heads for tasks ``0..num_tasks-1`` (to rebuild a task's artifact)."""
    model = MultiHeadNet()
    for t in range(1, num_tasks):
        model.classifier.classifiers[str(t)] = IncrementalClassifier(16, 2, masking=False, auto_adapt=False)
        model.classifier.register_buffer(f"active_units_T{t}", torch.zeros(2, dtype=torch.int8))
    return model


def main(epochs: int = 3, log=None, plugins=(), after_task=None):
    torch.manual_seed(0)
    bench = make_benchmark()
    model = MultiHeadNet()
    pools = build_pools_kmeans(model, K=16, seed=0)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                 forgetting_metrics(experience=True),
                                 loggers=[TextLogger(log)] if log is not None else [])
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     criterion=nn.CrossEntropyLoss(),
                     train_mb_size=16, train_epochs=epochs, eval_mb_size=64,
                     plugins=[NWSPlugin(pools=pools), *plugins], evaluator=evaluator)
    for t, exp in enumerate(bench.train_stream):
        strategy.train(exp)
        if after_task is not None:
            after_task(strategy, t)
        strategy.eval(bench.test_stream)
    return strategy, bench, pools


if __name__ == "__main__":
    import sys

    strategy, _, _ = main(log=sys.stdout)
