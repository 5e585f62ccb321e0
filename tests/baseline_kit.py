"""Tiny fixtures for the baseline tests (issue 4): synthetic tasks, a seeded 'pretrained' net."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from benchmarks import BenchmarkData, Task, to_avalanche
from nws_avalanche.config.run_config import build_config
from nws_avalanche.nets.models import build_arch
from nws_avalanche.pools.pretrained import Assets
from nws_avalanche.runner.factory import build_strategy
from nws_avalanche.strategies.methods import METHODS, load_all

ARCH, SIZE = "resnet-tiny", 12


def tiny_bench(n_tasks: int = 3, classes: int = 2, n_train: int = 32, n_test: int = 16, seed: int = 0) -> BenchmarkData:
    gen = torch.Generator().manual_seed(seed)

    def data(n):
        y = torch.arange(n) % classes
        x = torch.randn(n, 1, SIZE, SIZE, generator=gen) + y.view(-1, 1, 1, 1).float()
        return TensorDataset(x, y)

    tasks = [Task(f"t{t}", [str(c) for c in range(classes)], data(n_train), data(n_test)) for t in range(n_tasks)]
    return BenchmarkData("tiny", tasks, in_channels=1, image_size=SIZE)


def tiny_strategy(method: str, bench: BenchmarkData, *sets: str):
    load_all()
    cfg = build_config([], [f"arch={ARCH}", "epochs=1", "batch_size=16", *sets], method=method)
    torch.manual_seed(0)
    pre = build_arch(ARCH, 4, bench.in_channels)
    assets = Assets(ARCH, bench.in_channels, {k: v.clone() for k, v in pre.state_dict().items()}, 4, None, None)
    strategy = build_strategy(cfg, assets, [t.num_classes for t in bench.tasks], progress=False)
    return strategy, to_avalanche(bench)


@torch.no_grad()
def logits(model, bench: BenchmarkData, t: int) -> torch.Tensor:
    x = torch.stack([bench.tasks[t].test[i][0] for i in range(len(bench.tasks[t].test))])
    return model.eval()(x)


def cli_run(method: str, out: Path) -> dict:
    """A run through the CLI on the embedded benchmark, tiny config; returns results.json."""
    from nws_avalanche.cli import main

    rc = main(["run", "--methods", method, "--out", str(out), "--no-report",
               "--set", f"arch={ARCH}", "--set", "epochs=1", "--set", "pretrain_epochs=1",
               "--set", "pretrained=random", "--set", "benchmark_options.tasks=2",
               "--set", "benchmark_options.image_size=8", "--set", "batch_size=128"])
    assert rc in (0, None)
    return json.loads((out / "split-digits" / method / "seed0" / "results.json").read_text())


def assert_memory_is_files(results: dict, out: Path, method: str) -> None:
    """Memory == bytes of the files in artifacts/, and every file there is counted."""
    art = out / "split-digits" / method / "seed0" / "artifacts"
    mem = results["memory_mib"]
    listed = [n for files in mem["files"]["per_task"] for n in files] + mem["files"]["assist"]
    assert sorted(listed) == sorted(p.name for p in art.iterdir())
    for files, size in zip(mem["files"]["per_task"], mem["bytes"]["per_task"]):
        assert size == sum((art / n).stat().st_size for n in files)
    assert mem["bytes"]["assist"] == sum((art / n).stat().st_size for n in mem["files"]["assist"])
    T = len(results["tasks"])
    assert all(results["accuracy_matrix"][T - 1][j] is not None for j in range(T))
    assert_paper_memory(results)


def assert_paper_memory(results: dict) -> None:
    """The paper's accounting of the same content is recorded per task, with its assist and total."""
    paper = results["memory_mib"]["paper"]
    per_task, assist = paper["bytes"]["per_task"], paper["bytes"]["assist"]
    assert len(per_task) == len(results["tasks"]) and all(b > 0 for b in per_task) and assist >= 0
    assert paper["total"] == (sum(per_task) + assist) / float(1 << 20)
    assert paper["per_task"] == [b / float(1 << 20) for b in per_task]
