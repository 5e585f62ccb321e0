"""``status.json`` in every run folder: running / finished / failed, with the failure's last lines.

Written atomically by the runner at start, after every task, at the end and on failure, so
``nws-bench status DIR`` can list runs without importing torch or asking the scheduler.
"""
from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path

from ..common.atomic import atomic_write_json

STATUS_NAME = "status.json"
TAIL_LINES = 15


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
    path = Path(run_dir) / STATUS_NAME
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def error_tail(exc: BaseException, lines: int = TAIL_LINES) -> str:
    from ..common.errors import NWSError

    if isinstance(exc, NWSError):  # a user-facing error: its message says it all
        return f"error: {exc}"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip().splitlines()
    return "\n".join(text[-lines:])
