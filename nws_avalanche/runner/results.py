"""The ``results.json`` format: every table and figure is derived from it."""
from __future__ import annotations

import os
import statistics
from pathlib import Path

from ..storage.run_files import RESULTS_SCHEMA, check_results_shape  # noqa: F401 - the runner's names for them

MIB = float(1 << 20)
RESULTS_FORMAT = 1


def memory_mib(task_files: list[list[Path]], assist_files: list[Path]) -> dict:
    """Sizes of the files really written, in MiB (and bytes)."""
    per_task_bytes = [sum(os.path.getsize(p) for p in files) for files in task_files]
    assist_bytes = sum(os.path.getsize(p) for p in assist_files)
    return {"per_task": [b / MIB for b in per_task_bytes], "assist": assist_bytes / MIB,
            "total": (sum(per_task_bytes) + assist_bytes) / MIB,
            "bytes": {"per_task": per_task_bytes, "assist": assist_bytes},
            "files": {"per_task": [[Path(p).name for p in f] for f in task_files],
                      "assist": [Path(p).name for p in assist_files]}}


def paper_memory(per_task_bytes: list[int | None], assist_bytes: int) -> dict | None:
    """The paper's accounting of the same content (``TaskIncrementalStrategy.paper_bytes``), or None."""
    if not per_task_bytes or any(b is None for b in per_task_bytes):
        return None
    return {"per_task": [b / MIB for b in per_task_bytes], "assist": assist_bytes / MIB,
            "total": (sum(per_task_bytes) + assist_bytes) / MIB,
            "bytes": {"per_task": list(per_task_bytes), "assist": assist_bytes}}


def build_results(cfg, task_names, acc, memory, summaries, train_seconds) -> dict:
    final = list(acc[-1])
    return {
        "format": RESULTS_FORMAT,
        "benchmark": cfg.benchmark, "method": cfg.method, "seed": cfg.seed,
        "tasks": list(task_names),
        "accuracy_matrix": acc,
        "final_accuracy": final,
        "average_accuracy": statistics.fmean(final),
        "memory_mib": memory,
        "train_seconds": train_seconds,
        "config": cfg.to_dict(),
        "per_task": summaries,
    }
