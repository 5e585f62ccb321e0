"""README tables written from runs, so that they cannot drift from the code.

    python -m nws_avalanche.cli.readme RESULTS_DIR --name NAME [--readme README.md] [--check]

Replaces the text between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in the
README with the table of average final accuracy (%) per method and seed of the runs under
RESULTS_DIR, preceded by the command that reruns them and the environment they ran in (thread
setting, CPU instruction set, torch version: the bytes are guaranteed only for the same ones).
``--check`` writes nothing and exits 1 when the README's block differs from the runs.
Any block name works; each block is regenerated from its own results folder.
"""
from __future__ import annotations

import re

from nws_avalanche.common.errors import NWSError



def _markers(name: str) -> tuple[str, str]:
    return f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"


def environment_line(results: list[dict]) -> str:
    envs = {(r.get("environment", {}).get("threads", {}).get("setting"),
             r.get("environment", {}).get("cpu", {}).get("torch_capability"),
             r.get("environment", {}).get("versions", {}).get("torch")) for r in results}
    return "; ".join(f"threads {t}, CPU capability {c}, torch {v}" for t, c, v in sorted(envs, key=str))


def block(results: list[dict], sets_of) -> str:
    """The generated Markdown: the command, the environment, the table (2 decimals throughout).
    ``sets_of(config)``: the ``--set`` items that turn the benchmark's preset into a run's config."""
    benches = sorted({r["benchmark"] for r in results})
    methods = sorted({r["method"] for r in results})
    seeds = sorted({r["seed"] for r in results})
    sets = sorted({tuple(sets_of(r["config"])) for r in results})
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
