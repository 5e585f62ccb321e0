"""``nws-bench run``: train and evaluate methods x benchmarks x seeds, then write the report."""
from __future__ import annotations

from pathlib import Path

from ..cli import command
from ..config import build_config
from ..errors import ConfigError


def _csv(s: str | None) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def add_arguments(p):
    p.add_argument("--benchmark", default=None, help="benchmark name(s), comma-separated (default: split-digits)")
    p.add_argument("--methods", default=None, help="method names, comma-separated (default: all registered)")
    p.add_argument("--seeds", default=None, help="seeds, comma-separated (default: 0)")
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--config", action="append", default=[], help="YAML file or preset name (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--data-root", default=None, help="root folder of the benchmark's data")
    p.add_argument("--overwrite", action="store_true", help="replace runs whose folder holds another config")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")


def main(args):
    from ..methods import METHODS, load_all
    from ..runner import expand_runs, run_single

    load_all()
    methods = _csv(args.methods) or METHODS.names()
    base = build_config(args.config, args.set, data_root=args.data_root)
    benchmarks = _csv(args.benchmark) or [base.benchmark]
    try:
        seeds = [int(s) for s in _csv(args.seeds)] or [base.seed]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    runs = []
    for b in benchmarks:  # benchmark presets apply per benchmark
        cfg_b = build_config(args.config, args.set, data_root=args.data_root, benchmark=b)
        runs += expand_runs(cfg_b, methods, [b], seeds)
    for cfg in runs:
        cfg.validate()
    from ..runner import check_names
    for cfg in runs:
        check_names(cfg)
    out = Path(args.out)
    rows = []
    for cfg in runs:
        print(f"== {cfg.benchmark} / {cfg.method} / seed {cfg.seed}", flush=True)
        r = run_single(cfg, out, overwrite=args.overwrite)
        rows.append(r)
        print(f"   average accuracy {r['average_accuracy']:.2f} %, memory total {r['memory_mib']['total']:.3f} MiB",
              flush=True)
    print()
    print(f"{'benchmark':<16}{'method':<10}{'seed':>5}{'avg acc %':>11}{'MiB/task':>10}{'total MiB':>11}")
    for r in rows:
        per = r["memory_mib"]["per_task"]
        print(f"{r['benchmark']:<16}{r['method']:<10}{r['seed']:>5}{r['average_accuracy']:>11.2f}"
              f"{sum(per) / len(per):>10.4f}{r['memory_mib']['total']:>11.4f}")
    if not args.no_report:
        from reports.report import write_report
        path = write_report([out], out / "report")
        print(f"\nreport: {path}")
    return 0


command("run", "train and evaluate methods on benchmarks and seeds")((add_arguments, main))
