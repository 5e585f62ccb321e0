"""The schema of ``results.json``, shared by its readers: the runner (a finished run is skipped or
verified from it) and ``reports`` (every table and figure is derived from it)."""
from __future__ import annotations

from ..common.schema import MAX_TASKS, AnyOf, Float, Int, List, Map, Name, Null, Obj, Str

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
