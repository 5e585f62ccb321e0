"""``nws-bench data check|speed|generate``: inspect a benchmark's local data before a run.

- ``check``: build the benchmark exactly as a run would (same checks, same errors), decoding
  every image file unless ``--quick``, and print per task the classes and train/test counts.
- ``speed``: one pass over every task's training set through a DataLoader, images/s per task.
- ``generate``: small generated data in a benchmark's real on-disk layout, to try the harness.
"""
from __future__ import annotations

import time

import numpy as np

from . import command
from ..common.atomic import USER_FIXABLE
from ..common.errors import ConfigError, OutputError
from ..config.run_config import build_config


def add_arguments(p):
    p.add_argument("action", choices=sorted(ACTIONS), help="check: validate and count; speed: time one "
                   "training epoch of data loading; generate: write small generated data")
    p.add_argument("--benchmark", required=True, help="benchmark name (e.g. split-cifar100, cub-to-sketches)")
    p.add_argument("--data-root", default=None, help="root folder of the benchmark's data (generate: where to write)")
    p.add_argument("--config", action="append", default=[], help="YAML file or preset name (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--quick", action="store_true", help="check: identify image files without decoding them")
    p.add_argument("--all-classes", action="store_true", help="check: list every class (default: the first few)")
    p.add_argument("--workers", type=int, default=None, help="speed: DataLoader workers (default: num_workers)")
    p.add_argument("--batch-size", type=int, default=None, help="speed: batch size (default: batch_size)")
    p.add_argument("--per-class", type=int, default=4, help="generate: training images per class")


def _config(args, **extra_opts):
    cfg = build_config(args.config, args.set, benchmark=args.benchmark, data_root=args.data_root)
    cfg.benchmark_options = {**extra_opts, **cfg.benchmark_options}
    return cfg


def _has_option(benchmark: str, name: str) -> bool:
    """Whether ``benchmark``'s options dataclass declares ``name`` (split-digits has no ``verify``)."""
    import dataclasses

    from benchmarks.base import BENCHMARK_OPTIONS, BENCHMARKS

    BENCHMARKS.get(benchmark)  # an unknown name: the registry's own error
    return benchmark in BENCHMARK_OPTIONS and name in {f.name for f in dataclasses.fields(BENCHMARK_OPTIONS.get(benchmark))}


def check(args) -> int:
    from benchmarks import build_benchmark

    full = not args.quick and _has_option(args.benchmark, "verify")
    cfg = _config(args, **({"verify": "full"} if full else {}))
    bench = build_benchmark(cfg)
    print(f"{bench.name}: {len(bench.tasks)} task(s) from {cfg.data_root or '(embedded data)'}")
    print(f"{'#':>3}  {'task':<32}{'classes':>8}{'train':>9}{'test':>8}{'min/class (train/test)':>25}")
    for t, task in enumerate(bench.tasks):
        counts = [np.bincount(np.asarray(ds.targets, dtype=np.int64), minlength=task.num_classes)
                  for ds in (task.train, task.test)]
        print(f"{t:>3}  {task.name:<32}{task.num_classes:>8}{len(task.train):>9}{len(task.test):>8}"
              f"{f'{counts[0].min()}/{counts[1].min()}':>25}")
        shown = task.classes if args.all_classes else task.classes[:6]
        more = "" if len(shown) == task.num_classes else f", ... ({task.num_classes - len(shown)} more)"
        print(f"     classes: {', '.join(shown)}{more}")
    skipped = bench.info.get("skipped_unreadable") or 0
    if (sum(skipped.values()) if isinstance(skipped, dict) else skipped):
        print(f"skipped unreadable images (skip_unreadable=true): {skipped}")
    print("OK")
    return 0


def speed(args) -> int:
    from torch.utils.data import DataLoader

    from benchmarks import build_benchmark

    cfg = _config(args)
    workers = cfg.num_workers if args.workers is None else args.workers
    batch = args.batch_size or cfg.batch_size
    bench = build_benchmark(cfg)
    total_n = total_s = 0.0
    print(f"{bench.name}: one training epoch per task, batch {batch}, {workers} worker(s)")
    for task in bench.tasks:
        loader = DataLoader(task.train, batch_size=batch, shuffle=True, num_workers=workers)
        start = time.perf_counter()
        n = sum(len(y) for _, y in loader)
        sec = time.perf_counter() - start
        total_n, total_s = total_n + n, total_s + sec
        print(f"  {task.name:<32}{n:>8} images {sec:>8.2f} s {n / sec:>10.0f} images/s")
    print(f"total: {int(total_n)} images in {total_s:.2f} s = {total_n / total_s:.0f} images/s")
    return 0


def generate(args) -> int:
    from pathlib import Path

    from benchmarks import synthetic

    if not args.data_root:
        raise ConfigError("data generate: give --data-root DIR to write into")
    root = Path(args.data_root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"data generate: --data-root {root} is a file, not a folder; give a folder to write into")
    cfg = _config(args)
    writers = {
        "split-cifar100": lambda: synthetic.write_cifar100_pickles(root, args.per_class, max(1, args.per_class // 2)),
        "cub-to-sketches": lambda: [synthetic.write_image_tree(
            root, name, classes=10, train_per_class=args.per_class, test_per_class=max(1, args.per_class // 2),
            size=(400, 300), seed=i) for i, name in enumerate(cfg.benchmark_options.get("datasets", DATASETS()))],
    }
    if args.benchmark not in writers:
        raise ConfigError(f"data generate knows {', '.join(sorted(writers))}, not {args.benchmark!r}")
    try:
        writers[args.benchmark]()
    except OSError as e:
        cause = USER_FIXABLE.get(e.errno, e.strerror or type(e).__name__)
        raise OutputError(f"data generate: cannot write {e.filename or root}: {cause}; give a writable folder "
                          f"as --data-root") from None
    print(f"wrote generated {args.benchmark} data under {root}")
    return 0


def DATASETS():
    from benchmarks.cub import DATASETS as names

    return names


ACTIONS = {"check": check, "speed": speed, "generate": generate}


def main(args):
    return ACTIONS[args.action](args)


command("data", "check, count and time a benchmark's local data")((add_arguments, main))
