"""Runs one (benchmark, method, seed) and writes its folder; ``run_grid`` loops over many.

Folder: ``<out>/<benchmark>/<method>/seed<seed>/`` with ``config.yaml`` (resolved),
``results.json`` and ``artifacts/`` (one file per task + the assist files). Every accuracy is
measured on a model rebuilt from the files in ``artifacts/``; memory is their size on disk.
"""
from __future__ import annotations

import random
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks import build_benchmark, to_avalanche
from .assets import prepare_assets
from .atomic import atomic_write_json, atomic_write_text
from .config import RunConfig
from .errors import ConfigError
from .methods import METHODS, load_all
from .results import build_results, memory_mib
from .training import evaluate


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_dir(out: Path, cfg: RunConfig) -> Path:
    return Path(out) / cfg.benchmark / cfg.method / f"seed{cfg.seed}"


def check_names(cfg: RunConfig) -> None:
    from benchmarks import BENCHMARKS

    from .config import method_options

    load_all()
    cls = METHODS.get(cfg.method)
    BENCHMARKS.get(cfg.benchmark)
    for name, opts in cfg.method_options.items():
        if name not in METHODS:
            raise ConfigError(f"method options given for unknown method {name!r} (--set {name}.KEY=...); "
                              f"methods: {', '.join(METHODS.names())}")
        if not isinstance(opts, dict):
            raise ConfigError(f"method_options.{name} must be a mapping of option: value")
    if getattr(cls, "Options", None) is not None:
        method_options(cfg, cfg.method, cls.Options)


def run_single(cfg: RunConfig, out: Path, overwrite: bool = False, progress: bool | None = None,
               callbacks=()) -> dict:
    cfg.validate()
    check_names(cfg)
    rdir = run_dir(out, cfg)
    results_path = rdir / "results.json"
    if results_path.is_file() and not overwrite:
        existing = (rdir / "config.yaml").read_text() if (rdir / "config.yaml").is_file() else None
        if existing == cfg.to_yaml():
            import json
            return json.loads(results_path.read_text())
        raise ConfigError(f"{rdir} holds a finished run with a different config; "
                          f"use another --out or pass --overwrite")
    seed_everything(cfg.seed)
    bench = build_benchmark(cfg)  # validates data before anything is written
    strategy_cls = METHODS.get(cfg.method)
    if overwrite and rdir.exists():
        shutil.rmtree(rdir)
    art = rdir / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    atomic_write_text(rdir / "config.yaml", cfg.to_yaml())
    needs_pools = getattr(strategy_cls, "needs_pools", cfg.method == "nws")
    assets = prepare_assets(cfg, bench, Path(out) / cfg.benchmark / "_assist", need_pools=needs_pools)
    if assets.pools is not None and needs_pools:
        shutil.copyfile(assets.pool_path, art / "pools.nwsp")
    seed_everything(cfg.seed)
    task_classes = [t.num_classes for t in bench.tasks]
    strategy = strategy_cls(cfg=cfg, assets=assets, task_classes=task_classes, progress=progress)
    scenario = to_avalanche(bench)
    T = len(bench.tasks)
    acc = [[None] * T for _ in range(T)]
    task_files: list[list[Path]] = []
    summaries, times = [], []
    for t, exp in enumerate(scenario.train_stream):
        start = time.perf_counter()
        # worker processes decode images in parallel; persistent so they are forked once per task
        strategy.train(exp, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
        times.append(time.perf_counter() - start)
        task_files.append(strategy.export_task(t, art))
        summaries.append(strategy.task_summary(t))
        for j in range(t + 1):
            model = strategy.rebuild_task(j, art)
            acc[t][j] = evaluate(model, bench.tasks[j].test, cfg.eval_batch_size, cfg.device, cfg.num_workers)
        for cb in callbacks:
            cb(t, acc, strategy)
    results = build_results(cfg, bench.task_names, acc, memory_mib(task_files, strategy.assist_files(art)),
                            summaries, times)
    atomic_write_json(results_path, results)
    return results


def expand_runs(base: RunConfig, methods: list[str], benchmarks: list[str], seeds: list[int]) -> list[RunConfig]:
    return [replace(base, benchmark=b, method=m, seed=s) for b in benchmarks for m in methods for s in seeds]
