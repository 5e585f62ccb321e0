"""``nws-bench perf-report [DIR...]``: how long ``report`` takes, per figure group and in total.

Without DIR: on five runs shaped like the quickstart's (``reports.bench.quickstart_like_runs``:
nws, finetune, packnet, ksm, aqd on a 5-task embedded stream, NWS with selection counts for all
21 layers of resnet18-narrow at K = 512), written to a temporary folder.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from . import command


def add_arguments(p):
    p.add_argument("dirs", nargs="*", help="run folders to report on (default: five generated quickstart-like runs)")
    p.add_argument("--out", default=None, help="report folder (default: a temporary folder, deleted afterwards)")


def main(args):
    from reports.bench import quickstart_like_runs, time_report

    with tempfile.TemporaryDirectory(prefix="nws-perf-report-") as tmp:
        roots = list(args.dirs)
        if not roots:
            quickstart_like_runs(Path(tmp) / "runs")
            roots = [Path(tmp) / "runs"]
            print("report of five generated quickstart-like runs (nws, finetune, packnet, ksm, aqd; 5 tasks; "
                  "NWS selection counts for 21 layers x 512 pool entries)")
        out = Path(args.out) if args.out else Path(tmp) / "report"
        cpu = time.process_time()
        times = time_report(roots, out)
        cpu = time.process_time() - cpu
    total = times.pop("total")
    for group, secs in times.items():
        print(f"  {group:<60} {secs:8.2f} s")
    print(f"report: {total:.2f} s wall, {cpu:.2f} s CPU")
    return 0


command("perf-report", "time `report` per figure group (default: on five generated quickstart-like runs)")(
    (add_arguments, main))
