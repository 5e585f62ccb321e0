"""Accuracy and memory tables (pandas), mean +- std over seeds, grouped by benchmark, method and the
swept keys (``results.json["sweep"]``). Numeric frames (``*_stats``) go to CSV; formatted frames
(``mean ± std``) go to Markdown and LaTeX.
"""
from __future__ import annotations

import pandas as pd

BASE_KEYS = ["benchmark", "method"]


def sweep_keys(results: list[dict]) -> list[str]:
    """Every swept key in first-seen order (each becomes a grouping column)."""
    keys: dict[str, None] = {}
    for r in results:
        keys.update(dict.fromkeys(r.get("sweep") or {}))
    return list(keys)


def group_keys(results: list[dict]) -> list[str]:
    return BASE_KEYS + sweep_keys(results)


def forgetting(acc: list[list]) -> float:
    """Mean over tasks j < T-1 of (accuracy on j right after learning it) - (final accuracy on j):
    points lost to later tasks (0 for a method that cannot forget; negative: it improved)."""
    T = len(acc)
    drops = [acc[j][j] - acc[T - 1][j] for j in range(T - 1)]
    return sum(drops) / len(drops) if drops else 0.0


def runs_frame(results: list[dict]) -> pd.DataFrame:
    keys = sweep_keys(results)
    rows = []
    for r in results:
        mem = r["memory_mib"]
        paper = mem.get("paper") or {}
        sweep = r.get("sweep") or {}
        rows.append({"benchmark": r["benchmark"], "method": r["method"],
                     **{k: str(sweep[k]) if k in sweep else "-" for k in keys}, "seed": r["seed"],
                     "average_accuracy": r["average_accuracy"], "forgetting": forgetting(r["accuracy_matrix"]),
                     **{f"acc_{i}": a for i, a in enumerate(r["final_accuracy"])},
                     "mib_per_task": sum(mem["per_task"]) / len(mem["per_task"]),
                     "assist_mib": mem["assist"], "total_mib": mem["total"],
                     "paper_mib_per_task": (sum(paper["per_task"]) / len(paper["per_task"]) if paper else float("nan")),
                     "paper_total_mib": paper.get("total", float("nan"))})
    return pd.DataFrame(rows)


def stats(df: pd.DataFrame, keys: list[str], cols: list[str]) -> pd.DataFrame:
    """Per group: ``<col>`` = mean, ``<col>_std`` = sample std (ddof 1; 0 for one seed), ``seeds``."""
    g = df.groupby(keys, sort=True)[cols]
    mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
    out = mean.copy()
    for c in cols:
        out[f"{c}_std"] = std[c]
    out["seeds"] = g.size()
    return out[[x for c in cols for x in (c, f"{c}_std")] + ["seeds"]].reset_index()


def _format(st: pd.DataFrame, keys: list[str], cols: list[str], digits: int, names: dict[str, str]) -> pd.DataFrame:
    out = st[keys].copy()
    for c in cols:
        out[names.get(c, c)] = ["-" if pd.isna(m) else f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}"
                                for m, s, n in zip(st[c], st[f"{c}_std"], st["seeds"])]
    out["seeds"] = st["seeds"]
    return out


def _task_cols(df: pd.DataFrame) -> list[str]:
    return sorted([c for c in df.columns if c.startswith("acc_")], key=lambda c: int(c[4:]))


def accuracy_stats(results: list[dict]) -> pd.DataFrame:
    df, keys = runs_frame(results), group_keys(results)
    return stats(df, keys, _task_cols(df) + ["average_accuracy", "forgetting"])


MEMORY_COLS = ["mib_per_task", "assist_mib", "total_mib", "paper_mib_per_task", "paper_total_mib"]
MEMORY_NAMES = {"mib_per_task": "per task (MiB)", "assist_mib": "assist (MiB)", "total_mib": "total (MiB)",
                "paper_mib_per_task": "paper per task (MiB)", "paper_total_mib": "paper total (MiB)"}


def memory_stats(results: list[dict]) -> pd.DataFrame:
    """Our files' sizes, and the same content in the NWS paper's accounting (``paper_*``; NaN for runs
    written before it was recorded)."""
    return stats(runs_frame(results), group_keys(results), MEMORY_COLS)


def accuracy_table(results: list[dict]) -> pd.DataFrame:
    """Final accuracy (%) on every task, their average and the forgetting, mean ± std over seeds."""
    df, keys = runs_frame(results), group_keys(results)
    cols = _task_cols(df) + ["average_accuracy", "forgetting"]
    names = {c: f"task {c[4:]}" for c in _task_cols(df)} | {"average_accuracy": "average"}
    return _format(stats(df, keys, cols), keys, cols, 2, names)


def memory_table(results: list[dict]) -> pd.DataFrame:
    """Stored memory (MiB): mean per task, the shared assist files, total, and the paper's accounting of
    the same content (per task, total); mean ± std over seeds."""
    return _format(memory_stats(results), group_keys(results), MEMORY_COLS, 4, MEMORY_NAMES)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_cell(value) -> str:
    text = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(value))
    return text.replace("±", r"$\pm$")


def to_latex(df: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs ``table`` (no jinja2 needed): text columns left, others right aligned."""
    def numeric(col) -> bool:
        return pd.api.types.is_numeric_dtype(df[col]) or any("±" in str(v) for v in df[col])
    align = "".join("r" if numeric(c) else "l" for c in df.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(_latex_cell(c) for c in df.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_cell(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{_latex_cell(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
