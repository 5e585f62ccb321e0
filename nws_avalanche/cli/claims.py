"""``nws-bench claims``: run the paper's claims check on a benchmark over seeds (``reports.claims``)."""
from __future__ import annotations

import sys
from pathlib import Path

from . import command


def add_arguments(p):
    p.add_argument("--benchmark", default="font-glyphs", help="benchmark (default: font-glyphs, the embedded default)")
    p.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated (default: 0,1,2)")
    p.add_argument("--out", default="results/claims", help="run folder (finished runs are reused)")
    p.add_argument("--config", action="append", default=[], help="YAML file or preset name (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--no-run", action="store_true", help="only check the results already in --out")
    p.add_argument("--write-readme", nargs="?", const="README.md", default=None, metavar="FILE",
                   help="also write the output between the claims markers of FILE (default README.md)")


def grid(benchmark: str, seeds: list[int], configs=(), sets=()):
    """The RunSpecs of every claims variant and seed (resolved and checked by ``expand_grid``)."""
    from reports.claims import VARIANTS

    from ..runner.sweep import expand_grid

    specs = []
    for method, point in VARIANTS.values():
        sweeps = [f"{k}={v}" for k, v in point.items()]
        specs += expand_grid(list(configs), list(sets), [method], [benchmark], seeds, sweeps)
    return specs


def main(args):
    from reports.claims import check, pick, render, settings_text, write_readme
    from reports.load import load_results

    from ..common.errors import ConfigError
    from ..runner.launch import launch

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    out = Path(args.out)
    if not args.no_run:
        specs = grid(args.benchmark, seeds, args.config, args.set)
        failed = [o for o in launch("inline", specs, out) if not o.ok]
        if failed:
            print(f"{len(failed)} run(s) failed; the claims need them all", file=sys.stderr)
            return 1
    variants = pick(load_results([out]), args.benchmark, seeds)
    block = render(check(variants), args.benchmark, seeds, settings_text(variants["nws"][0]))
    print(block)
    if args.write_readme:
        extra = "".join(f" --set {s}" for s in args.set) + "".join(f" --config {c}" for c in args.config)
        cmd = f"nws-bench claims --benchmark {args.benchmark} --seeds {args.seeds}{extra} --write-readme"
        print(f"written to {write_readme(Path(args.write_readme), block, cmd)}")
    return 0


command("claims", "run NWS, NWS-random, Finetune (pretrained and from scratch) and the frozen control over seeds "
        "and check the paper's claims")((add_arguments, main))
