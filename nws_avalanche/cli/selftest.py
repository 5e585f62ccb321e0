"""``nws-bench selftest``: the checks to run on a machine before trusting a long run there.

Each check is a row (check, figure, holds / does not hold / skipped); the rows also go to a JSON
file. Exit 0 only when every row that ran holds (1 otherwise). Ratios are measured and printed,
never judged. The checks: ``nws_avalanche.speed.selftest`` and ``nws_avalanche.runner.selftest_task``.
"""
from __future__ import annotations

import sys
import time

from . import command

SECTIONS = ("search", "task", "step", "amp", "nccl")


def add_arguments(p):
    p.add_argument("--device", default="cpu", help="device under test: cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--quick", action="store_true", help="smaller layers and model, fewer steps, no 224x224 step")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    p.add_argument("--json", default="selftest.json", help="JSON output file (default: selftest.json)")


def _sections(text: str) -> list[str]:
    from ..common.errors import ConfigError

    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad or not names:
        raise ConfigError(f"--only: unknown section(s) {', '.join(bad) or '(none given)'}; "
                          f"choose from {','.join(SECTIONS)}")
    return names


def table(rows) -> str:
    w = max(len(r.check) for r in rows)
    fw = max(len(r.figure) for r in rows)
    lines = [f"{'check':<{w}}  {'figure':<{fw}}  verdict", "-" * (w + fw + 18)]
    lines += [f"{r.check:<{w}}  {r.figure:<{fw}}  {r.verdict}" for r in rows]
    return "\n".join(lines)


def main(args):
    from ..config.run_config import check_device

    sections = _sections(args.only)
    check_device(args.device)
    import torch

    from ..common.atomic import atomic_write_json
    from ..speed import selftest as st

    dev = torch.device(args.device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    rows, seconds, cpu = [], {}, {}
    for name in sections:
        start, cstart = time.perf_counter(), time.process_time()
        try:
            if name == "task":
                from ..runner.selftest_task import run_task_check

                got = [st.Row(c, f, h, data=d) for c, f, h, d in run_task_check(args.device, args.quick)]
            elif name == "nccl":
                got = st.check_nccl(dev)
            else:
                got = st.CHECKS[name](dev, args.quick)
        except Exception as e:  # noqa: BLE001 - a check that crashes is a row that does not hold
            got = [st.failed_row(f"{name}", e)]
        seconds[name], cpu[name] = time.perf_counter() - start, time.process_time() - cstart
        rows += got
        for r in got:
            print(f"[{name}] {r.check}: {r.figure} -> {r.verdict}", file=sys.stderr, flush=True)
    print(table(rows))
    ok = all(r.holds is not False for r in rows)
    atomic_write_json(args.json, {
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "quick": bool(args.quick), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "all_hold": ok, "seconds": seconds, "cpu_seconds": cpu, "rows": [r.to_dict() for r in rows]})
    print(f"selftest: {'all checks hold' if ok else 'SOME CHECKS DO NOT HOLD'}; {args.json}")
    return 0 if ok else 1


command("selftest", "check this machine before a long run: exact search, a short NWS task, "
                    "NWS/plain step cost, mixed precision, nccl pools")((add_arguments, main))
