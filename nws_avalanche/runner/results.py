"""The ``results.json`` format: every table and figure is derived from it."""
from __future__ import annotations

import os
import statistics
from pathlib import Path

from ..common.schema import AnyOf, Float, Int, List, Map, Name, Null, Obj, Str
from ..storage.record import MAX_TASKS

MIB = float(1 << 20)
RESULTS_FORMAT = 1
_ACC = AnyOf((Float(), Null()))
# what every reader of results.json relies on (the runner skipping a finished run, report, verify)
RESULTS_SCHEMA = Obj({
    "benchmark": Str(), "method": Str(), "seed": Int(0, None),
    "tasks": List(Str(), max_len=MAX_TASKS),
    "accuracy_matrix": List(List(_ACC, max_len=MAX_TASKS), max_len=MAX_TASKS),
    "final_accuracy": List(_ACC, max_len=MAX_TASKS), "average_accuracy": _ACC,
    "memory_mib": Obj({"per_task": List(Float(0), max_len=MAX_TASKS), "assist": Float(0), "total": Float(0),
                       "files": Obj({"per_task": List(List(Name()), max_len=MAX_TASKS)}, frozenset({"per_task"}))},
                      frozenset({"files"})),
    "artifact_sha256": Map(Str(max_len=64), key=Name()),
}, optional=frozenset({"artifact_sha256"}))


def check_results_shape(r: dict, source: str, fix: str, error) -> dict:
    """A results record's lists agree with its task count (the schema checked their types)."""
    T = len(r["tasks"])
    mat = r["accuracy_matrix"]
    sizes = {"accuracy_matrix": len(mat), "final_accuracy": len(r["final_accuracy"]),
             "memory_mib.per_task": len(r["memory_mib"]["per_task"])}
    sizes.update({f"accuracy_matrix[{i}]": len(row) for i, row in enumerate(mat)})
    bad = next((k for k, n in sizes.items() if n != T), None)
    if bad is not None:
        raise error(f"{source}: field {bad} has {sizes[bad]} entries for {T} tasks; {fix}")
    # a finished run has evaluated every task up to the current one, and its final row holds numbers
    missing = next((f"accuracy_matrix[{i}][{j}]" for i in range(T) for j in range(i + 1) if mat[i][j] is None),
                   None) or next((f"final_accuracy[{j}]" for j in range(T) if r["final_accuracy"][j] is None), None)
    if missing is None and r["average_accuracy"] is None:
        missing = "average_accuracy"
    if missing is not None:
        raise error(f"{source}: field {missing} is null in a finished run; {fix}")
    return r


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
