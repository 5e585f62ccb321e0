"""``nws-bench report DIR...``: tables and figures from results.json files alone."""
from pathlib import Path

from . import command


def add_arguments(p):
    p.add_argument("dirs", nargs="+", help="run folders (searched for results.json)")
    p.add_argument("--out", default=None, help="report folder (default: <first DIR>/report)")
    p.add_argument("--no-verify", action="store_true",
                   help="do not check each run's artifacts against the sha256 digests in its results.json")


def main(args):
    from reports.report import line_progress, write_report

    if not args.no_verify:
        verify_runs(args.dirs)
    out = Path(args.out) if args.out else Path(args.dirs[0]) / "report"
    print(f"report: {write_report(args.dirs, out, progress=line_progress())}")
    return 0


command("report", "write accuracy/memory tables and figures from results.json files")((add_arguments, main))


def verify_runs(dirs) -> int:
    """Check every run's artifacts against its results.json (exit 2 naming the first bad file)."""
    from reports.load import find_results

    from ..common.untrusted import read_json
    from ..runner.recovery import verify_results
    from ..storage.run_files import RESULTS_SCHEMA

    paths = find_results(dirs)
    for p in paths:
        verify_results(p, read_json(p, "results file", "rerun that run (the same command rebuilds it) or delete "
                                                       "the file", RESULTS_SCHEMA))
    return len(paths)
