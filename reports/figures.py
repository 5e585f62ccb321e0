"""Figures from results: NWS kernel-index selection rate per task and layer."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nws_avalanche.common.atomic import atomic_write  # noqa: E402


def save_figure(fig, path: Path, tight_bbox: bool = True) -> list[Path]:
    """PNG and PDF. ``tight_bbox=False`` for figures laid out by ``tight_layout`` already: the
    tight bounding box costs a second full draw per format."""
    out = []
    for ext in ("png", "pdf"):
        p = path.parent / f"{path.name}.{ext}"  # names may hold dots (sweep values such as lr=0.01)
        atomic_write(p, lambda fh: fig.savefig(fh, format=ext, dpi=120, bbox_inches="tight" if tight_bbox else None))
        out.append(p)
    plt.close(fig)
    return out


def selection_rates(result: dict) -> pd.DataFrame:
    """Long table: task, layer, index, count, rate = count / kernels in the layer (h_i / d_l)."""
    parts = []
    for t, summary in enumerate(result.get("per_task", [])):
        for layer, counts in (summary or {}).get("selection_counts", {}).items():
            c = np.asarray(counts, dtype=np.int64)
            parts.append(pd.DataFrame({"task": t, "layer": layer, "index": np.arange(len(c)), "count": c,
                                       "rate": c / c.sum()}))
    if not parts:
        return pd.DataFrame(columns=["task", "layer", "index", "count", "rate"])
    return pd.concat(parts, ignore_index=True)


def selection_rate_figure(df: pd.DataFrame, task: int, title: str):
    """One panel per layer: the selection rate of every pool index, drawn as one filled step
    outline per layer (a bar of width 1 per index, as one artist: K separate bars per panel made
    the report take minutes)."""
    sub = df[df.task == task]
    layers = list(dict.fromkeys(sub.layer))
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False)
    for ax, (layer, d) in zip(axes.flat, ((n, sub[sub.layer == n]) for n in layers)):
        index, rate = d["index"].to_numpy(), d["rate"].to_numpy()
        order = np.argsort(index, kind="stable")
        edges = np.append(index[order] - 0.5, index[order][-1] + 0.5)
        ax.stairs(rate[order], edges, fill=True, color="black", linewidth=0)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(bottom=0)
        ax.set_title(layer, fontsize=8)
        ax.tick_params(labelsize=6)
        # few ticks: drawing tick labels is most of the cost of a panel
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4, integer=True))
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(3))
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.supxlabel("pool index")
    fig.supylabel("selection rate")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# -- black-and-white friendly styles: every series differs by marker AND line style ----------
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1))]
GREYS = ["black", "0.35", "0.55", "0.2", "0.45", "0.65"]


def style(i: int) -> dict:
    return {"marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[i % len(LINESTYLES)],
            "color": GREYS[i % len(GREYS)], "markerfacecolor": "white" if i % 2 else GREYS[i % len(GREYS)]}


def group_label(r: dict) -> str:
    """``method`` or ``method (key=value, ...)`` for a run of a sweep."""
    sweep = r.get("sweep") or {}
    point = ", ".join(f"{k}={v}" for k, v in sweep.items())
    return f"{r['method']} ({point})" if point else r["method"]


def groups(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(benchmark, label) -> the seeds' results, in a stable order."""
    out: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(results, key=lambda r: (r["benchmark"], group_label(r), r["seed"])):
        out.setdefault((r["benchmark"], group_label(r)), []).append(r)
    return out


def slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text)
    return "_".join(filter(None, keep.split("_")))


def _plain_log_ticks(axis) -> None:
    # matplotlib's default minor labels (4x10^-2 ...) overlap on short log ranges
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def accuracy_memory_figure(results: list[dict], benchmark: str):
    """Average accuracy vs total memory (log scale), mean ± std over seeds, one marker per method."""
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for i, ((b, label), rs) in enumerate(g for g in groups(results).items() if g[0][0] == benchmark):
        acc = np.array([r["average_accuracy"] for r in rs])
        mem = np.array([r["memory_mib"]["total"] for r in rs])
        st = style(i)
        ax.errorbar(mem.mean(), acc.mean(), yerr=acc.std(ddof=1) if len(rs) > 1 else None,
                    xerr=mem.std(ddof=1) if len(rs) > 1 else None, marker=st["marker"], color=st["color"],
                    markerfacecolor=st["markerfacecolor"], markersize=8, capsize=3, linestyle="none", label=label)
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ax.set_xlim(lo / 1.5, hi * 1.5)  # room for the markers and at least two labelled ticks
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("total memory (MiB, log scale)")
    ax.set_ylabel("average accuracy (%)")
    ax.set_title(f"{benchmark}: accuracy vs memory", fontsize=10)
    ax.grid(True, which="both", linestyle=":", linewidth=0.5, color="0.7")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def memory_growth(r: dict) -> np.ndarray:
    """Total stored MiB after 1..T tasks: assist + the tasks stored so far."""
    return r["memory_mib"]["assist"] + np.cumsum(r["memory_mib"]["per_task"])


def memory_growth_figure(results: list[dict], benchmark: str):
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for i, ((b, label), rs) in enumerate(g for g in groups(results).items() if g[0][0] == benchmark):
        curve = np.mean([memory_growth(r) for r in rs], axis=0)
        ax.plot(np.arange(1, len(curve) + 1), curve, label=label, **style(i))
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("number of tasks")
    ax.set_ylabel("total memory (MiB, log scale)")
    ax.set_title(f"{benchmark}: memory growth", fontsize=10)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(True, which="both", linestyle=":", linewidth=0.5, color="0.7")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def mean_accuracy_matrix(rs: list[dict]) -> np.ndarray:
    return np.mean([[[np.nan if a is None else a for a in row] for row in r["accuracy_matrix"]] for r in rs], axis=0)


def accuracy_heatmap_figure(rs: list[dict], title: str):
    """Accuracy on task j (column) after training task i (row), mean over seeds, values printed."""
    m = mean_accuracy_matrix(rs)
    T = len(m)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * T, 0.8 + 0.6 * T))
    im = ax.imshow(np.ma.masked_invalid(m), cmap="Greys", vmin=0, vmax=100)
    for i in range(T):
        for j in range(T):
            if not np.isnan(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > 60 else "black")
    ax.set_xticks(range(T))
    ax.set_yticks(range(T))
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training task")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="accuracy (%)")
    fig.tight_layout()
    return fig


def pool_utilisation(r: dict) -> pd.DataFrame:
    """Long table: task, layer, used = fraction of the layer's pool entries selected at least once."""
    rows = []
    for t, summary in enumerate(r.get("per_task", [])):
        for layer, counts in (summary or {}).get("selection_counts", {}).items():
            c = np.asarray(counts)
            rows.append({"task": t, "layer": layer, "used": float((c > 0).sum() / len(c))})
    return pd.DataFrame(rows)


def pool_utilisation_figure(rs: list[dict], title: str):
    df = pd.concat([pool_utilisation(r) for r in rs]).groupby(["task", "layer"], sort=False)["used"].mean()
    df = df.reset_index()
    layers = list(dict.fromkeys(df.layer))
    fig, ax = plt.subplots(figsize=(max(4.8, 0.35 * len(layers) + 1.5), 3.4))
    for i, t in enumerate(sorted(df.task.unique())):
        d = df[df.task == t].set_index("layer").reindex(layers)
        ax.plot(range(len(layers)), d["used"], label=f"task {t}", **style(i))
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("pool entries used (fraction)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, linestyle=":", linewidth=0.5, color="0.7")
    ax.legend(fontsize=7, frameon=False, ncol=2)
    fig.tight_layout()
    return fig


def has_selection_counts(r: dict) -> bool:
    return any((s or {}).get("selection_counts") for s in r.get("per_task", []))


def run_figures(r: dict, out: Path) -> dict[str, Path]:
    """The figures of a single run (for wandb): name -> PNG path."""
    out = Path(out)
    title = f"{group_label(r)} {r['benchmark']} seed {r['seed']}"
    figs = {"accuracy_matrix": accuracy_heatmap_figure([r], title),
            "memory_growth": memory_growth_figure([r], r["benchmark"])}
    if has_selection_counts(r):
        figs["pool_utilisation"] = pool_utilisation_figure([r], title)
        df = selection_rates(r)
        last = int(df.task.max())
        figs[f"selection_rate_task{last}"] = selection_rate_figure(df, last, f"{title}: task {last}")
    return {name: save_figure(fig, out / name, tight_bbox=not name.startswith("selection"))[0]
            for name, fig in figs.items()}
