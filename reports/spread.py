"""How far a run's average accuracy moves with the environment compared with the seed.

    python -m reports.spread LABEL=DIR [LABEL=DIR ...]

Each DIR is an ``nws-bench run --out`` folder of the same config run under one environment
setting (e.g. ``threads=1``, another CPU); LABEL names the setting. Prints one Markdown row per
(benchmark, method): the average accuracy per seed and setting, the largest move across
settings for one seed, and the seed-to-seed standard deviation within each setting.
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def collect(dirs: dict[str, Path]) -> dict:
    """{(benchmark, method): {seed: {label: average accuracy}}} from the results.json files."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for label, root in dirs.items():
        for path in sorted(Path(root).rglob("results.json")):
            r = json.loads(path.read_text())
            out[(r["benchmark"], r["method"])][r["seed"]][label] = r["average_accuracy"]
    return out


def table(dirs: dict[str, Path]) -> str:
    labels = list(dirs)
    rows = ["| benchmark | method | seed | " + " | ".join(labels) + " | move across settings |",
            "|---|---|---|" + "---|" * len(labels) + "---|"]
    summary = []
    for (bench, method), seeds in sorted(collect(dirs).items()):
        moves = []
        for seed, by in sorted(seeds.items()):
            vals = [by.get(lb) for lb in labels]
            got = [v for v in vals if v is not None]
            move = max(got) - min(got) if got else float("nan")
            moves.append(move)
            rows.append(f"| {bench} | {method} | {seed} | " + " | ".join("" if v is None else f"{v:.2f}" for v in vals)
                        + f" | {move:.2f} |")
        sds = [statistics.stdev(v) for lb in labels
               if len(v := [by[lb] for by in seeds.values() if lb in by]) > 1]
        summary.append(f"| {bench} | {method} | {max(moves):.2f} | {statistics.fmean(moves):.2f} | "
                       + (f"{min(sds):.2f} to {max(sds):.2f}" if sds else "") + " |")
    head = ["| benchmark | method | largest move across settings (one seed) | mean move | seed std (per setting) |",
            "|---|---|---|---|---|"]
    return "\n".join(rows) + "\n\n" + "\n".join(head + summary) + "\n"


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or any("=" not in a for a in args):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    # the last "=" separates them: a label may read "threads=1"
    print(table({a.rpartition("=")[0]: Path(a.rpartition("=")[2]) for a in args}), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
