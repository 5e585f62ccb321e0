"""Benchmark: epoch time of Avalanche ``Naive`` + ``NWSPlugin`` over plain ``Naive`` (not a test).

    python -m nws_avalanche.speed.plugin_bench [--arch resnet18-narrow] [--size 32] [--samples 640] [--threads 2]

Same model (initial weights), same data, same optimiser, one process: ``--epochs`` epochs of
each, timed by Avalanche's epoch hooks in wall time and in process CPU time (the steadier figure
on a shared machine); the ratios of the medians over the epochs after the first are the steady
cost (the first NWS epoch also runs the initial full searches). Prints one line per figure.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn


def _epoch_times(strategy_cls, model, exp, plugins, epochs):
    from avalanche.core import SupervisedPlugin
    from avalanche.training.plugins import EvaluationPlugin

    class Clock(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.times = []

        def before_training_epoch(self, strategy, **kw):
            self.start = (time.perf_counter(), time.process_time())

        def after_training_epoch(self, strategy, **kw):
            self.times.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))

    clock = Clock()
    strategy = strategy_cls(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                            criterion=nn.CrossEntropyLoss(), train_mb_size=32, train_epochs=epochs,
                            eval_mb_size=256, plugins=[*plugins, clock], evaluator=EvaluationPlugin(loggers=[]))
    torch.manual_seed(0)
    strategy.train(exp)
    return clock.times


def main(argv=None) -> dict:
    import warnings

    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_classification_dataset
    from avalanche.training import Naive
    from torch.utils.data import TensorDataset

    from ..method.plugin import NWSPlugin
    from ..nets.models import build_arch
    from ..pools.pool_set import build_pools_kmeans

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18-narrow")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--samples", type=int, default=640)
    p.add_argument("--pool-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 3, args.size, args.size, generator=gen)
    y = torch.randint(0, 10, (args.samples,), generator=gen)
    ds = _make_taskaware_classification_dataset(TensorDataset(x, y), task_labels=0, targets=y.tolist())
    exp = with_task_labels(benchmark_from_datasets(train=[ds])).train_stream[0]
    torch.manual_seed(0)
    base = build_arch(args.arch, 10)
    pools = build_pools_kmeans(base, K=args.pool_size, seed=0, iters=2)
    plain = _epoch_times(Naive, copy.deepcopy(base), exp, [], args.epochs)
    nws = _epoch_times(Naive, copy.deepcopy(base), exp, [NWSPlugin(pools=pools)], args.epochs)

    def steady(times, k):
        return statistics.median(t[k] for t in times[1:]) if len(times) > 1 else times[0][k]
    out = {"plain_epoch_wall_s": steady(plain, 0), "nws_epoch_wall_s": steady(nws, 0),
           "ratio_wall": steady(nws, 0) / steady(plain, 0), "ratio_cpu": steady(nws, 1) / steady(plain, 1),
           "first_epoch_ratio_cpu": nws[0][1] / plain[0][1]}
    print(f"{args.arch} {args.size}x{args.size}, {args.samples} samples, batch 32, K={args.pool_size}, "
          f"{args.threads} threads, {args.epochs} epochs each")
    for k, v in out.items():
        print(f"{k}: {v:.3f}")
    return out


if __name__ == "__main__":
    main()
