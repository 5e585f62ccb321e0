"""Benchmark: epoch time of Avalanche ``Naive`` + ``NWSPlugin`` over plain ``Naive`` (not a test).

    python -m nws_avalanche.speed.plugin_bench [--arch resnet18-narrow] [--size 32] [--samples 640] [--threads 2]
    python -m nws_avalanche.speed.plugin_bench --model small [--pairs 5]

Same model (initial weights), same data, same optimiser, one process: ``--epochs`` epochs of
each, timed by Avalanche's epoch hooks in wall time and in process CPU time (the steadier figure
on a shared machine); the ratios of the medians over the epochs after the first are the steady
cost (the first NWS epoch also runs the initial full searches). Prints one line per figure.

``--model small``: a user's small model (three 3x3 convs with BatchNorm, a Linear head named
``classifier``) on sklearn's digits at 16x16 (1,797 images, batch 32), K = 32, 1 thread; ``--pairs``
alternating (plain, NWS) runs of two epochs each, and the ratio is the median over the pairs of
the second (steady) epoch's CPU time.
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


class SmallNet(nn.Module):
    """The small user model: three 3x3 convs with BatchNorm, global pooling, a Linear ``classifier``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        chans = [in_channels, width, 2 * width, 2 * width]
        body = []
        for i in range(3):
            body += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                     nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*body)
        self.classifier = nn.Linear(chans[-1], num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def _digits16():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return (x - x.mean()) / x.std(), torch.tensor(d.target, dtype=torch.long)


def small_model_ratio(pairs: int = 5, pool_size: int = 32, threads: int = 1) -> dict:
    """NWS/plain CPU time of a steady epoch of the small model, median over alternating pairs."""
    from avalanche.training import Naive

    from ..method.plugin import NWSPlugin
    from ..pools.pool_set import build_pools_kmeans

    torch.set_num_threads(threads)
    x, y = _digits16()
    exp = _experience(x, y)
    torch.manual_seed(0)
    base = SmallNet()
    pools = build_pools_kmeans(base, K=pool_size, seed=0, iters=2)
    rows = []
    for _ in range(pairs):
        plain = _epoch_times(Naive, copy.deepcopy(base), exp, [], 2)
        nws = _epoch_times(Naive, copy.deepcopy(base), exp, [NWSPlugin(pools=pools)], 2)
        rows.append((plain[1], nws[1]))
    out = {"pairs": pairs, "plain_epoch_cpu_s": statistics.median(p[1] for p, _ in rows),
           "nws_epoch_cpu_s": statistics.median(n[1] for _, n in rows),
           "ratio_cpu": statistics.median(n[1] / p[1] for p, n in rows),
           "ratio_wall": statistics.median(n[0] / p[0] for p, n in rows)}
    print(f"small model (3 convs + BN, Linear classifier) on digits 16x16, {len(y)} samples, batch 32, "
          f"K={pool_size}, {threads} thread(s); {pairs} alternating pairs, second epoch of each run")
    for k, v in out.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    return out


def _experience(x, y):
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_classification_dataset
    from torch.utils.data import TensorDataset

    ds = _make_taskaware_classification_dataset(TensorDataset(x, y), task_labels=0, targets=y.tolist())
    return with_task_labels(benchmark_from_datasets(train=[ds])).train_stream[0]


def main(argv=None) -> dict:
    import warnings

    from avalanche.training import Naive

    from ..method.plugin import NWSPlugin
    from ..nets.models import build_arch
    from ..pools.pool_set import build_pools_kmeans

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("arch", "small"), default="arch",
                   help="arch: --arch at --size; small: the small user model on digits (see module doc)")
    p.add_argument("--pairs", type=int, default=5, help="--model small: alternating (plain, NWS) pairs")
    p.add_argument("--arch", default="resnet18-narrow")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--samples", type=int, default=640)
    p.add_argument("--pool-size", type=int, default=None, help="K (default: 512; --model small: 32)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 2; --model small: 1)")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.model == "small":
        return small_model_ratio(args.pairs, args.pool_size or 32, args.threads or 1)
    args.pool_size, args.threads = args.pool_size or 512, args.threads or 2
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 3, args.size, args.size, generator=gen)
    y = torch.randint(0, 10, (args.samples,), generator=gen)
    exp = _experience(x, y)
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
