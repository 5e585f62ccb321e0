"""The paper's claims, checked on a benchmark over seeds (``nws-bench claims``).

Runs (or reuses, from ``--out``) five variants per seed, all with the benchmark's common settings:
NWS, NWS with random temporary kernels (``nws.init=random``, the appendix's NWS-random), Finetune,
Finetune from a random network (``pretrained=random``: what pretraining buys) and the frozen
backbone (per-task BatchNorm and head only: a method that learns no features). Then prints, per
claim, the measured figures and whether it holds:

- NWS within 1.5 points of Finetune (mean over seeds) at <= 1/10 of its per-task memory (bytes on disk);
- NWS above NWS-random by >= 2 points;
- Finetune above the frozen backbone by >= 5 points;
- Finetune from the pretrained network above Finetune from a random one by >= 10 points;
- NWS never forgets: in Avalanche's accuracy matrix, no task's final accuracy is below its accuracy
  right after it was learnt, for any seed.

A check reports what it measured; nothing here is tuned to make a claim hold.
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path

# variant -> (method, sweep point as recorded in results.json)
VARIANTS = {
    "nws": ("nws", {}),
    "nws-random": ("nws", {"nws.init": "random"}),
    "finetune": ("finetune", {}),
    "finetune-scratch": ("finetune", {"pretrained": "random"}),
    "frozen": ("frozen", {}),
}
MARK_BEGIN, MARK_END = "<!-- generated:claims -->", "<!-- /generated:claims -->"


@dataclass
class Claim:
    text: str
    figures: str
    holds: bool


def pick(results: list[dict], benchmark: str, seeds: list[int]) -> dict[str, list[dict]]:
    """results.json dicts of each variant (one per seed), ordered by seed."""
    out: dict[str, list[dict]] = {}
    for name, (method, point) in VARIANTS.items():
        rows = [r for r in results if r["benchmark"] == benchmark and r["method"] == method
                and r["seed"] in seeds and {k: str(v) for k, v in (r.get("sweep") or {}).items()}
                == {k: str(v) for k, v in point.items()}]
        have = sorted(r["seed"] for r in rows)
        if have != sorted(seeds):
            from nws_avalanche.common.errors import NWSError

            raise NWSError(f"claims: {name} has results for seeds {have}, not {sorted(seeds)}; "
                           f"run `nws-bench claims` without --no-run to make them")
        out[name] = sorted(rows, key=lambda r: r["seed"])
    return out


def _mean(xs):
    return statistics.fmean(xs)


def _fmt(xs):
    return f"{_mean(xs):.2f} ({' / '.join(f'{x:.1f}' for x in xs)})"


def per_task_mib(r: dict) -> float:
    per = r["memory_mib"]["per_task"]
    return sum(per) / len(per)


def max_forgetting(acc: list[list[float]]) -> float:
    """Largest drop of a task's accuracy from right after learning it to the end (0: none forgotten)."""
    T = len(acc)
    return max((acc[j][j] - acc[T - 1][j] for j in range(T - 1)), default=0.0)


def check(v: dict[str, list[dict]]) -> list[Claim]:
    acc = {k: [r["average_accuracy"] for r in rs] for k, rs in v.items()}
    m = {k: _mean(a) for k, a in acc.items()}
    mem_nws = _mean([per_task_mib(r) for r in v["nws"]])
    mem_ft = _mean([per_task_mib(r) for r in v["finetune"]])
    forget = [max_forgetting(r["accuracy_matrix"]) for r in v["nws"]]
    return [
        Claim("NWS within 1.5 points of Finetune at <= 1/10 of its per-task memory",
              f"NWS {_fmt(acc['nws'])} vs Finetune {_fmt(acc['finetune'])}: gap {m['finetune'] - m['nws']:+.2f}; "
              f"per task {mem_nws:.4f} vs {mem_ft:.4f} MiB (ratio {mem_nws / mem_ft:.3f})",
              m["finetune"] - m["nws"] <= 1.5 and mem_nws <= mem_ft / 10),
        Claim("NWS above NWS-random by >= 2 points",
              f"NWS {m['nws']:.2f} vs NWS-random {_fmt(acc['nws-random'])}: {m['nws'] - m['nws-random']:+.2f}",
              m["nws"] - m["nws-random"] >= 2),
        Claim("Finetune above the frozen backbone by >= 5 points",
              f"Finetune {m['finetune']:.2f} vs frozen {_fmt(acc['frozen'])}: {m['finetune'] - m['frozen']:+.2f}",
              m["finetune"] - m["frozen"] >= 5),
        Claim("Finetune from the pretrained network above from a random one by >= 10 points",
              f"pretrained {m['finetune']:.2f} vs random {_fmt(acc['finetune-scratch'])}: "
              f"{m['finetune'] - m['finetune-scratch']:+.2f}",
              m["finetune"] - m["finetune-scratch"] >= 10),
        Claim("NWS never forgets (Avalanche's accuracy matrix)",
              f"largest drop of a task's accuracy after it was learnt, per seed: "
              f"{' / '.join(f'{f:.2f}' for f in forget)} points",
              max(forget) <= 0.0),
    ]


def render(claims: list[Claim], benchmark: str, seeds: list[int], settings: str) -> str:
    lines = [f"Claims on `{benchmark}`, seeds {', '.join(map(str, seeds))} ({settings}); accuracy: average final "
             f"accuracy over tasks, %, mean over seeds (per seed in brackets)", ""]
    held = sum(c.holds for c in claims)
    for c in claims:
        lines.append(f"- [{'holds' if c.holds else 'DOES NOT HOLD'}] {c.text}: {c.figures}")
    lines += ["", f"{held} of {len(claims)} claims hold"]
    return "\n".join(lines)


def settings_text(r: dict) -> str:
    c = r["config"]
    return (f"{c['arch']}, lr {c['lr']}, {c['epochs']} epochs, batch {c['batch_size']}, {c['optimizer']}, "
            f"K = {c['pool_size']}, beta {c['beta']}, pools {c.get('pools', 'kmeans')}")


def write_readme(path: Path, block: str, command: str) -> Path:
    """Replace the text between the claims markers of ``path`` (markers must be there, once each)."""
    from nws_avalanche.common.atomic import atomic_write_text
    from nws_avalanche.common.errors import ConfigError

    text = Path(path).read_text()
    if text.count(MARK_BEGIN) != 1 or text.count(MARK_END) != 1 or text.index(MARK_BEGIN) > text.index(MARK_END):
        raise ConfigError(f"{path}: needs one {MARK_BEGIN} line and, after it, one {MARK_END} line")
    body = f"{MARK_BEGIN}\n<!-- written by `{command}`; do not edit by hand -->\n```\n{block}\n```\n{MARK_END}"
    new = re.sub(re.escape(MARK_BEGIN) + r".*?" + re.escape(MARK_END), lambda _: body, text, count=1, flags=re.S)
    return atomic_write_text(Path(path), new)
