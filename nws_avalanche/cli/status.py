"""``nws-bench status DIR``: finished, running and failed runs under DIR, with each failure's last lines."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from . import command
from ..common.errors import NWSError


def add_arguments(p):
    p.add_argument("dir", help="output folder of nws-bench run")
    p.add_argument("--lines", type=int, default=8, help="last lines of each failure to show (default 8)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect(root: Path) -> list[dict]:
    """One row per run folder (a folder with config.yaml): state, progress, error."""
    from ..runner.status_file import read_status

    rows = []
    for cfg_path in sorted(Path(root).rglob("config.yaml")):
        rdir = cfg_path.parent
        if rdir.parent.name == "report" or "_submitit" in rdir.parts:
            continue
        st = read_status(rdir) or {}
        state = "finished" if (rdir / "results.json").is_file() else st.get("state", "pending")
        if state == "running" and st.get("host") == socket.gethostname() and not _pid_alive(st.get("pid", -1)):
            state = "died"  # its process is gone without writing failed (killed): rerun to resume
        rows.append({"run": rdir.relative_to(root).as_posix(), "state": state,
                     "tasks": f"{st.get('next_task', '?')}/{st.get('num_tasks', '?')}",
                     "job": st.get("job_id") or "", "updated": st.get("updated"), "error": st.get("error")})
    return rows


def main(args):
    root = Path(args.dir)
    if not root.is_dir():
        raise NWSError(f"{root}: no such folder; give the --out folder of nws-bench run")
    rows = collect(root)
    if not rows:
        raise NWSError(f"no run folders (config.yaml) under {root}")
    width = max(len(r["run"]) for r in rows)
    print(f"{'run':<{width}}  {'state':<9} {'tasks':>6}  {'job':<14} updated")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["updated"])) if r["updated"] else ""
        print(f"{r['run']:<{width}}  {r['state']:<9} {r['tasks']:>6}  {r['job']:<14} {when}")
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print("\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for r in rows:
        if r["state"] in ("failed", "died", "interrupted") and r["error"]:
            tail = r["error"].splitlines()[-args.lines:]
            print(f"\n--- {r['run']} ({r['state']}):\n" + "\n".join("    " + line for line in tail))
    return 1 if any(r["state"] in ("failed", "died") for r in rows) else 0


command("status", "list finished, running and failed runs under an output folder")((add_arguments, main))
