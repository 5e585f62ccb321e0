"""Timing the report: five runs shaped like the quickstart's, written as results.json files.

``quickstart_like_runs`` writes one run per method (``nws``, ``finetune``, ``packnet``, ``ksm``,
``aqd``) of a 5-task embedded stream; the NWS run carries ``selection_counts`` for every NWS
layer of ``resnet18-narrow`` at K = 512 (the per-layer kernel counts of the real network, the
counts drawn from a seeded skewed distribution), which is what the report's figures spend their
time on. ``time_report`` writes the report and returns the seconds per figure group.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from nws_avalanche.common.atomic import atomic_write_json

METHODS = ("nws", "finetune", "packnet", "ksm", "aqd")
MIB = float(1 << 20)


def nws_layer_sizes(arch: str = "resnet18-narrow") -> dict[str, int]:
    """Kernels per NWS layer (convs and the head) of ``arch``."""
    import torch.nn as nn

    from nws_avalanche.nets.models import build_arch

    model = build_arch(arch, 2, 1)
    return {n: m.weight.shape[0] * m.weight.shape[1] for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def quickstart_like_runs(root: Path, tasks: int = 5, K: int = 512, arch: str = "resnet18-narrow",
                         benchmark: str = "split-digits", seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    sizes = nws_layer_sizes(arch)
    paths = []
    for i, method in enumerate(METHODS):
        final = list(np.round(90 + 10 * rng.random(tasks), 2))
        acc = [[float(final[j]) if j <= r else None for j in range(tasks)] for r in range(tasks)]
        per_task_bytes = [int(1000 + 100 * i)] * tasks
        per_task = [{} for _ in range(tasks)]
        if method == "nws":
            weights = 1.0 / np.arange(1, K + 1) ** 0.8
            per_task = [{"selection_counts": {name: rng.multinomial(n, rng.permutation(weights) / weights.sum()).tolist()
                                              for name, n in sizes.items()}} for _ in range(tasks)]
        r = {"format": 1, "benchmark": benchmark, "method": method, "seed": seed,
             "tasks": [f"t{t}" for t in range(tasks)], "accuracy_matrix": acc, "final_accuracy": acc[-1],
             "average_accuracy": statistics.fmean(acc[-1]),
             "memory_mib": {"per_task": [b / MIB for b in per_task_bytes], "assist": 0.0,
                            "total": sum(per_task_bytes) / MIB,
                            "bytes": {"per_task": per_task_bytes, "assist": 0},
                            "files": {"per_task": [[f"task{t:03d}.x"] for t in range(tasks)], "assist": []}},
             "train_seconds": [1.0] * tasks,
             "config": {"benchmark": benchmark, "method": method, "seed": seed, "arch": arch, "pool_size": K},
             "per_task": per_task}
        path = Path(root) / benchmark / method / f"seed{seed}" / "results.json"
        atomic_write_json(path, r)
        paths.append(path)
    return paths


def time_report(roots, out: Path) -> dict[str, float]:
    """Write the report of ``roots`` into ``out``; seconds per figure group and in total."""
    from .report import write_report

    times: dict[str, float] = {}
    last = [time.perf_counter()]

    def progress(group: str) -> None:
        now = time.perf_counter()
        times[group] = times.get(group, 0.0) + now - last[0]
        last[0] = now

    start = time.perf_counter()
    write_report(roots, out, progress=progress)
    times["total"] = time.perf_counter() - start
    return times
