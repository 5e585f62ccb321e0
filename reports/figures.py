"""Figures from results: NWS kernel-index selection rate per task and layer."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nws_avalanche.atomic import atomic_write  # noqa: E402


def save_figure(fig, path: Path) -> list[Path]:
    out = []
    for ext in ("png", "pdf"):
        p = path.with_suffix(f".{ext}")
        atomic_write(p, lambda fh: fig.savefig(fh, format=ext, dpi=120, bbox_inches="tight"))
        out.append(p)
    plt.close(fig)
    return out


def selection_rates(result: dict) -> pd.DataFrame:
    """Long table: task, layer, index, count, rate = count / kernels in the layer (h_i / d_l)."""
    rows = []
    for t, summary in enumerate(result.get("per_task", [])):
        for layer, counts in (summary or {}).get("selection_counts", {}).items():
            c = np.asarray(counts, dtype=float)
            total = c.sum()
            rows += [{"task": t, "layer": layer, "index": i, "count": int(v), "rate": v / total}
                     for i, v in enumerate(c)]
    return pd.DataFrame(rows)


def selection_rate_figure(df: pd.DataFrame, task: int, title: str):
    sub = df[df.task == task]
    layers = list(dict.fromkeys(sub.layer))
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False)
    for ax, layer in zip(axes.flat, layers):
        d = sub[sub.layer == layer]
        ax.bar(d["index"], d["rate"], width=1.0, color="black")
        ax.set_title(layer, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.supxlabel("pool index")
    fig.supylabel("selection rate")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
