"""``nws-bench run``: train and evaluate methods x benchmarks x seeds (x sweep points), then write the
report. Reruns skip finished runs and resume unfinished ones; ``--launcher`` picks where jobs run."""
from __future__ import annotations

from pathlib import Path

from . import command
from ..common.atomic import check_writable
from ..common.errors import ConfigError
from ..config.run_config import build_config, check_device, load_yaml


def _csv(s: str | None) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def add_arguments(p):
    p.add_argument("--benchmark", default=None, help="benchmark name(s), comma-separated (default: split-digits)")
    p.add_argument("--methods", default=None, help="method names, comma-separated (default: the config's "
                   "method if it names one, e.g. a run folder's config.yaml; else all registered)")
    p.add_argument("--seeds", default=None, help="seeds, comma-separated (default: 0)")
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--config", action="append", default=[], help="YAML file or preset name (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="one run folder per value (repeatable: the grid of all combinations); any --set key")
    p.add_argument("--data-root", default=None, help="root folder of the benchmark's data")
    p.add_argument("--launcher", default="inline", choices=["inline", "local", "slurm"],
                   help="inline: here, one after the other; local: one process per run (submitit); "
                        "slurm: a Slurm job array (submitit; options from the config's slurm section)")
    p.add_argument("--dry-run", action="store_true", help="list the runs (and the sbatch file for slurm), run nothing")
    p.add_argument("--overwrite", action="store_true", help="delete and redo runs whose folder holds another config")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--no-verify", action="store_true",
                   help="skip finished runs without checking their artifacts against their sha256 digests")


def main(args):
    from ..runner.launch import SlurmOptions, launch, sbatch_script
    from ..runner.sweep import expand_grid
    from ..strategies.methods import METHODS, load_all

    load_all()
    base = build_config(args.config, args.set, data_root=args.data_root)
    # a config that names its method (a run folder's config.yaml) runs that method, not all of them
    named = any("method" in load_yaml(c) for c in args.config) or any(
        s.split("=", 1)[0].strip() == "method" for s in args.set)
    methods = _csv(args.methods) or ([base.method] if named else METHODS.names())
    benchmarks = _csv(args.benchmark) or [base.benchmark]
    try:
        seeds = [int(s) for s in _csv(args.seeds)] or None
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    specs = expand_grid(args.config, args.set, methods, benchmarks, seeds, args.sweep, data_root=args.data_root)
    for spec in specs:  # expand_grid resolved and checked every name and option; here the machine
        if args.launcher != "slurm":  # slurm jobs run on other machines; each checks its own device
            check_device(spec.cfg.device)
    out = Path(args.out)
    if args.dry_run:
        for spec in specs:
            print(f"{spec.name}  ->  {spec.run_dir(out)}")
        if args.launcher == "slurm":
            print(sbatch_script(specs, out, SlurmOptions.from_config(specs[0].cfg.slurm)))
        return 0
    check_writable(out)  # an unwritable or full --out stops before any job starts
    outcomes = launch(args.launcher, specs, out, overwrite=args.overwrite, verify=not args.no_verify)
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        print(f"FAILED {o.name}:\n{o.error}")
    if args.launcher == "slurm":
        print(f"\n{len(outcomes)} jobs submitted; follow them with: nws-bench status {out}")
        return 0
    print_summary([o for o in outcomes if o.ok])
    print(f"\n{len(outcomes) - len(failed)} of {len(outcomes)} runs finished")
    if not args.no_report and len(failed) < len(outcomes):
        from reports.report import line_progress, write_report
        path = write_report([out], out / "report", progress=line_progress())
        print(f"report: {path}")
    return 1 if failed else 0


def print_summary(outcomes) -> None:
    """The end-of-run table: one line per finished run."""
    rows = [o.summary for o in outcomes if o.summary and "average_accuracy" in o.summary]
    if not rows:
        return
    width = max(len(r["run"]) for r in rows) + 2
    print(f"\n{'run':<{width}}{'avg acc %':>10}{'MiB/task':>11}{'total MiB':>11}")
    for r in rows:
        print(f"{r['run']:<{width}}{r['average_accuracy']:>10.2f}{r['mib_per_task']:>11.4f}{r['total_mib']:>11.4f}")


command("run", "train and evaluate methods on benchmarks and seeds")((add_arguments, main))
