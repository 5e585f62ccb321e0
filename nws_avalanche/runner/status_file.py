"""``status.json`` in every run folder: running / finished / failed / interrupted, with the failure's
last lines (or, interrupted, the command that resumes). A damaged file reads as no status.

Written atomically by the runner at start, after every task, at the end and on failure, so
``nws-bench status DIR`` can list runs without importing torch or asking the scheduler.
"""
from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path

from ..common.atomic import atomic_write_json
from ..common.errors import NWSError
from ..common.schema import AnyOf, Float, Int, Null, Obj, Str, check
from ..common.untrusted import read_json

STATUS_NAME = "status.json"
TAIL_LINES = 15
_OPTIONAL = AnyOf((Str(max_len=1 << 20), Null()))
STATUS_SCHEMA = Obj({"state": Str(), "next_task": Int(0, None), "num_tasks": Int(0, None), "started": Float(),
                     "updated": Float(), "host": Str(), "pid": Int(1, None), "job_id": _OPTIONAL, "error": _OPTIONAL},
                    optional=frozenset({"started", "updated", "host", "pid", "job_id", "error"}))


def _job_id() -> str | None:
    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "SUBMITIT_LOCAL_JOB_ID"):
        if os.environ.get(var):
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            return f"{os.environ[var]}_{task}" if task and var == "SLURM_ARRAY_JOB_ID" else os.environ[var]
    return None


def write_status(run_dir: Path, state: str, next_task: int, num_tasks: int, error: str | None = None) -> None:
    path = Path(run_dir) / STATUS_NAME
    old = read_status(run_dir) or {}
    now = time.time()
    atomic_write_json(path, {
        "state": state, "next_task": next_task, "num_tasks": num_tasks,
        "started": old.get("started", now) if state != "running" or old.get("state") == "running" else now,
        "updated": now, "host": socket.gethostname(), "pid": os.getpid(), "job_id": _job_id(),
        "error": error,
    })


def read_status(run_dir: Path) -> dict | None:
    """The run's status, or None when there is none or it is unreadable (any damage: the runner rewrites
    it, ``nws-bench status`` shows the run as unknown)."""
    path = Path(run_dir) / STATUS_NAME
    try:
        data = read_json(path, "status file", "it is rewritten by the next run", limit=1 << 20)
    except NWSError:
        return None
    try:
        return check(data, STATUS_SCHEMA, str(path), "")
    except NWSError:
        return None


def error_tail(exc: BaseException, lines: int = TAIL_LINES) -> str:
    if isinstance(exc, NWSError):  # a user-facing error: its message says it all
        return f"error: {exc}"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip().splitlines()
    return "\n".join(text[-lines:])
