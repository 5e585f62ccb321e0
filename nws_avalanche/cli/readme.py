"""``nws-bench readme RESULTS --name NAME [--check]``: write (or compare) a README table generated from runs
between ``<!-- generated:NAME -->`` markers (``reports.readme``), so quoted figures cannot drift from the code."""
from __future__ import annotations

import sys
from pathlib import Path

from . import command


def preset_sets(config: dict) -> list[str]:
    """The ``--set`` items that turn the benchmark's preset into ``config`` (top-level keys)."""
    from ..config.run_config import build_config

    base = build_config([], [], benchmark=config["benchmark"]).to_dict()
    out = []
    for key, value in config.items():
        if key in ("benchmark", "method", "seed", "method_options", "wandb", "slurm", "loggers"):
            continue
        if key == "benchmark_options":
            out += [f"benchmark_options.{k}={v}" for k, v in sorted(value.items())
                    if base["benchmark_options"].get(k) != v]
        elif base.get(key) != value:
            out.append(f"{key}={value}")
    return out


def add_arguments(p):
    p.add_argument("results", help="the --out folder of the runs the block quotes")
    p.add_argument("--name", required=True, help="the block's name (<!-- generated:NAME -->)")
    p.add_argument("--readme", default="README.md")
    p.add_argument("--check", action="store_true", help="exit 1 if the README's block differs; write nothing")


def main(a) -> int:
    from reports.load import load_results
    from reports.readme import block, read_block, replace_block

    from ..common.atomic import atomic_write_text
    from ..common.errors import NWSError

    try:
        readme = Path(a.readme)
        text = readme.read_text()
        content = block(load_results([a.results]), preset_sets)
        if a.check:
            same = read_block(text, a.name) == content
            if read_block(text, a.name) is None:
                raise NWSError(f"{readme} has no generated:{a.name} block")
            print(f"{readme}: block {a.name} {'matches' if same else 'differs from'} {a.results}")
            return 0 if same else 1
        atomic_write_text(readme, replace_block(text, a.name, content))
    except (NWSError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


command("readme", "write (or --check) a README table generated from runs between its generated:NAME markers")(
    (add_arguments, main))
