"""README tables written from runs, so that they cannot drift from the code.

    python -m reports.readme RESULTS_DIR --name NAME [--readme README.md] [--check]

Replaces the text between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in the
README with the table of average final accuracy (%) per method and seed of the runs under
RESULTS_DIR, preceded by the command that reruns them and the environment they ran in (thread
setting, CPU instruction set, torch version: the bytes are guaranteed only for the same ones).
``--check`` writes nothing and exits 1 when the README's block differs from the runs.
Any block name works; each block is regenerated from its own results folder.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from nws_avalanche.common.atomic import atomic_write_text
from nws_avalanche.common.errors import NWSError

from .load import load_results


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"


def _sets(config: dict) -> list[str]:
    """The ``--set`` items that turn the benchmark's preset into ``config`` (top-level keys)."""
    from nws_avalanche.config.run_config import build_config

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


def environment_line(results: list[dict]) -> str:
    envs = {(r.get("environment", {}).get("threads", {}).get("setting"),
             r.get("environment", {}).get("cpu", {}).get("torch_capability"),
             r.get("environment", {}).get("versions", {}).get("torch")) for r in results}
    return "; ".join(f"threads {t}, CPU capability {c}, torch {v}" for t, c, v in sorted(envs, key=str))


def block(results: list[dict]) -> str:
    """The generated Markdown: the command, the environment, the table (2 decimals throughout)."""
    benches = sorted({r["benchmark"] for r in results})
    methods = sorted({r["method"] for r in results})
    seeds = sorted({r["seed"] for r in results})
    sets = sorted({tuple(_sets(r["config"])) for r in results})
    cmd = (f"nws-bench run --benchmark {','.join(benches)} --methods {','.join(methods)} "
           f"--seeds {','.join(map(str, seeds))}" + "".join(f" --set {s}" for s in (sets[0] if len(sets) == 1 else ())))
    by = {(r["method"], r["seed"]): r["average_accuracy"] for r in results}
    lines = [f"Average final accuracy (%) of `{cmd}` ({environment_line(results)}):", "",
             "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for m in methods:
        lines.append(f"| `{m}` | " + " | ".join(f"{by[(m, s)]:.2f}" if (m, s) in by else "" for s in seeds) + " |")
    return "\n".join(lines)


def read_block(text: str, name: str) -> str | None:
    start, end = _markers(name)
    m = re.search(re.escape(start) + r"\n(.*?)\n?" + re.escape(end), text, re.S)
    return None if m is None else m.group(1).strip("\n")


def replace_block(text: str, name: str, content: str) -> str:
    start, end = _markers(name)
    if read_block(text, name) is None:
        raise NWSError(f"the README has no {start} ... {end} block; add the two markers where the table goes")
    return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: f"{start}\n{content}\n{end}", text,
                  count=1, flags=re.S)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.readme", description=__doc__.splitlines()[0])
    p.add_argument("results", help="the --out folder of the runs the block quotes")
    p.add_argument("--name", required=True, help="the block's name (<!-- generated:NAME -->)")
    p.add_argument("--readme", default="README.md")
    p.add_argument("--check", action="store_true", help="exit 1 if the README's block differs; write nothing")
    a = p.parse_args(argv)
    try:
        readme = Path(a.readme)
        text = readme.read_text()
        content = block(load_results([a.results]))
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


if __name__ == "__main__":
    raise SystemExit(main())
