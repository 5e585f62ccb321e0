"""``write_report``: tables (Markdown, CSV) and NWS selection-rate figures from results.json files."""
from __future__ import annotations

from pathlib import Path

from nws_avalanche.atomic import atomic_write_text

from .figures import save_figure, selection_rate_figure, selection_rates
from .load import load_results
from .tables import accuracy_table, memory_table


def write_report(roots, out: Path) -> Path:
    results = load_results(roots)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    acc, mem = accuracy_table(results), memory_table(results)
    atomic_write_text(out / "accuracy.csv", acc.to_csv(index=False))
    atomic_write_text(out / "memory.csv", mem.to_csv(index=False))
    atomic_write_text(out / "accuracy.md", acc.to_markdown(index=False) + "\n")
    atomic_write_text(out / "memory.md", mem.to_markdown(index=False) + "\n")
    lines = ["# Report", "", "## Accuracy (%)", "", acc.to_markdown(index=False), "",
             "## Memory (MiB)", "", mem.to_markdown(index=False), ""]
    for r in results:
        df = selection_rates(r)
        if df.empty:
            continue
        stem = f"selection_{r['benchmark']}_{r['method']}_seed{r['seed']}"
        atomic_write_text(out / f"{stem}.csv", df.to_csv(index=False))
        lines += [f"## Kernel-index selection rate: {r['benchmark']} / {r['method']} / seed {r['seed']}", ""]
        for t in sorted(df.task.unique()):
            fig = selection_rate_figure(df, t, f"{r['method']} {r['benchmark']} seed {r['seed']}: task {t}")
            png, _ = save_figure(fig, out / f"{stem}_task{t:02d}")
            lines.append(f"![task {t}]({png.name})")
        lines.append("")
    return atomic_write_text(out / "report.md", "\n".join(lines))
