"""Accuracy and memory tables (pandas), mean +- std over seeds."""
from __future__ import annotations

import pandas as pd


def runs_frame(results: list[dict]) -> pd.DataFrame:
    rows = []
    for r in results:
        mem = r["memory_mib"]
        rows.append({"benchmark": r["benchmark"], "method": r["method"], "seed": r["seed"],
                     "average_accuracy": r["average_accuracy"],
                     **{f"acc_{i}": a for i, a in enumerate(r["final_accuracy"])},
                     "mib_per_task": sum(mem["per_task"]) / len(mem["per_task"]),
                     "assist_mib": mem["assist"], "total_mib": mem["total"]})
    return pd.DataFrame(rows)


def _mean_std(df: pd.DataFrame, cols: list[str], digits: int) -> pd.DataFrame:
    g = df.groupby(["benchmark", "method"], sort=True)[cols]
    mean, std, n = g.mean(), g.std(ddof=1).fillna(0.0), g.size()
    out = mean.copy().astype(object)
    for c in cols:
        out[c] = [f"{m:.{digits}f} ± {s:.{digits}f}" if k > 1 else f"{m:.{digits}f}"
                  for m, s, k in zip(mean[c], std[c], n)]
    out["seeds"] = n
    return out.reset_index()


def accuracy_table(results: list[dict]) -> pd.DataFrame:
    df = runs_frame(results)
    task_cols = sorted([c for c in df.columns if c.startswith("acc_")], key=lambda c: int(c[4:]))
    return _mean_std(df, task_cols + ["average_accuracy"], 2).rename(
        columns={c: f"task {c[4:]}" for c in task_cols} | {"average_accuracy": "average"})


def memory_table(results: list[dict]) -> pd.DataFrame:
    df = runs_frame(results)
    return _mean_std(df, ["mib_per_task", "assist_mib", "total_mib"], 4).rename(
        columns={"mib_per_task": "per task (MiB)", "assist_mib": "assist (MiB)", "total_mib": "total (MiB)"})
