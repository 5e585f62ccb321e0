"""A baseline (PackNet; likewise Finetune, KSM, AQD) on your own Avalanche stream and metrics.

Built the Avalanche way: ``PackNet(model=, optimizer=, criterion=, task_classes=..., options=...,
train_mb_size=..., ...)``. The model follows the package's convention (a ``feature_dim``
attribute and the head in ``fc``, as every ``nws_avalanche.nets.models`` architecture); the
optimiser's kind and hyper-parameters are reused for the fresh optimiser of every task. Each task
is evaluated by Avalanche on the state it keeps (PackNet: the weights it owns, its BatchNorm and
head), so forgetting is zero. Run: ``PYTHONPATH=. python examples/baseline_packnet.py``.
"""
from __future__ import annotations

import torch
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.logging import TextLogger
from avalanche.training.plugins import EvaluationPlugin

from baselines.packnet import PackNet, PackNetOptions
from nws_avalanche.nets.models import build_arch

from nws_naive import make_benchmark  # the example beside this one (its folder is on sys.path)


def main(epochs: int = 2, log=None, plugins=()):
    torch.manual_seed(0)
    bench = make_benchmark()
    model = build_arch("resnet-tiny", 2, in_channels=3)  # your pretrained network would go here
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), forgetting_metrics(experience=True),
                                 loggers=[TextLogger(log)] if log is not None else [])
    strategy = PackNet(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                       criterion=torch.nn.CrossEntropyLoss(), task_classes=[2, 2, 2], options=PackNetOptions(prune_ratio=0.6), train_mb_size=16,
                       train_epochs=epochs, eval_mb_size=64, plugins=plugins, evaluator=evaluator, progress=False)
    for exp in bench.train_stream:
        strategy.train(exp)
        strategy.eval(bench.test_stream)
    return strategy, bench


if __name__ == "__main__":
    import sys

    main(log=sys.stdout)
