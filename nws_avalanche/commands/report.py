"""``nws-bench report DIR...``: tables and figures from results.json files alone."""
from pathlib import Path

from ..cli import command


def add_arguments(p):
    p.add_argument("dirs", nargs="+", help="run folders (searched for results.json)")
    p.add_argument("--out", default=None, help="report folder (default: <first DIR>/report)")


def main(args):
    from reports.report import write_report

    out = Path(args.out) if args.out else Path(args.dirs[0]) / "report"
    print(f"report: {write_report(args.dirs, out)}")
    return 0


command("report", "write accuracy/memory tables and figures from results.json files")((add_arguments, main))
