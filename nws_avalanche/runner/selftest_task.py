"""The selftest's short NWS run on the embedded stream (split-digits), on the device under test.

Two tasks with the runner's own pieces (``build_strategy``, Avalanche's evaluator, the task
artifact), checking that Avalanche's accuracy of each task (its state kept in memory and swapped
in at evaluation) equals the accuracy of the model rebuilt from the task's stored file, that
task 0 is not forgotten after task 1, and that every tensor the training touches (parameters,
BatchNorm, pools, indices, the searches' state, the stored per-task state) is on the device.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from benchmarks import build_benchmark, to_avalanche
from ..config.run_config import build_config
from ..method.layers import nws_layers
from ..pools.pretrained import prepare_assets
from ..strategies.training import evaluate
from .checkpoint import seed_all
from .factory import build_strategy
from .run import avalanche_accuracies


def _tensors(obj, prefix: str):
    """(name, tensor) for every tensor attribute of ``obj`` (one level: a searcher's state)."""
    for k, v in vars(obj).items():
        if isinstance(v, torch.Tensor):
            yield f"{prefix}.{k}", v


def off_device(strategy, device: torch.device) -> tuple[int, list[str]]:
    """How many tensors training and evaluation use, and those not on ``device``."""
    model = strategy.model
    seen = list(model.state_dict().items())
    seen += [(n, p) for n, p in model.named_parameters()]
    for name, m in nws_layers(model):
        seen += list(_tensors(m.search, f"{name}.search"))
        if m._q is not None:
            seen.append((f"{name}.quantised", m._q))
    for label, state in getattr(strategy.plugin, "task_states", {}).items():
        seen += [(f"task{label}.indices.{k}", v) for k, v in state["indices"].items()]
        seen += [(f"task{label}.state.{k}", v) for k, v in state["state"].items()]
    for group in strategy.optimizer.state.values():
        seen += [(f"optimizer.{k}", v) for k, v in group.items() if isinstance(v, torch.Tensor)]

    def on(t):
        return t.device.type == device.type and (device.index is None or t.device.index == device.index)

    return len(seen), [n for n, t in seen if not on(t)]


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (b.index is None or a.index == b.index)


def run_task_check(device: str, quick: bool) -> list[tuple[str, str, bool, dict]]:
    """Rows (check, figure, holds, data) of the short run."""
    sets = ["pretrained=random", "benchmark_options.tasks=5", "batch_size=64" if quick else "batch_size=32",
            f"device={device}",
            "arch=resnet-tiny" if quick else "arch=resnet18-narrow", "epochs=1" if quick else "epochs=2",
            "pool_size=16" if quick else "pool_size=64", "kmeans_iters=3", "lr=0.05"]
    cfg = build_config([], sets, method="nws")
    dev = torch.device(device)
    tmp = Path(tempfile.mkdtemp(prefix="nws-selftest-"))
    try:
        seed_all(cfg.seed)
        bench = build_benchmark(cfg)
        assets = prepare_assets(cfg, bench, tmp / "_assist", need_pools=True, progress=False)
        art = tmp / "artifacts"
        art.mkdir()
        shutil.copyfile(assets.pool_path, art / "pools.nwsp")
        strategy = build_strategy(cfg, assets, [t.num_classes for t in bench.tasks], progress=False)
        scenario = to_avalanche(bench)
        train, test = list(scenario.train_stream), list(scenario.test_stream)
        accs, rebuilt, counts = [], [], []
        for t in range(2):
            strategy.train(train[t])
            counts.append(off_device(strategy, dev))
            accs.append(avalanche_accuracies(strategy, test, t + 1))
            strategy.export_task(t, art)
            model = strategy.rebuild_task(t, art)
            data = test[t].dataset
            data = data.eval() if hasattr(data, "eval") else data
            rebuilt.append(evaluate(model, data, batch_size=cfg.eval_batch_size, device=device))
            counts.append((sum(1 for _ in model.state_dict()),
                           [k for k, v in model.state_dict().items() if not _same_device(v.device, dev)]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    same = [accs[t][t] == rebuilt[t] for t in range(2)]
    forgot = accs[0][0] - accs[1][0]
    total = sum(n for n, _ in counts)
    off = sorted({name for _, names in counts for name in names})
    return [
        (f"NWS task on {device}: Avalanche accuracy = accuracy rebuilt from the artifact",
         ", ".join(f"task {t}: {accs[t][t]:.2f}% = {rebuilt[t]:.2f}%" if same[t] else
                   f"task {t}: {accs[t][t]:.2f}% vs {rebuilt[t]:.2f}%" for t in range(2))
         + f" ({cfg.arch}, K={cfg.pool_size}, {cfg.epochs} epoch(s))", all(same),
         {"avalanche": [accs[t][t] for t in range(2)], "rebuilt": rebuilt}),
        ("no forgetting after a second task",
         f"task 0: {accs[0][0]:.2f}% after task 0, {accs[1][0]:.2f}% after task 1", forgot == 0,
         {"after_task0": accs[0][0], "after_task1": accs[1][0]}),
        (f"pools, indices, BatchNorm, heads, search state on {device}",
         f"{len(off)} of {total} tensors elsewhere" + (f" ({', '.join(off[:3])}...)" if off else ""), not off,
         {"checked": total, "off_device": off[:50]}),
    ]
