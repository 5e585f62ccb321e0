"""``write_report``: tables (Markdown, CSV, LaTeX), figures (PNG + PDF) and ``report.md`` from
results.json files alone (no retraining, any mix of methods, benchmarks, seeds and sweep points).

Files in the report folder:
- ``accuracy.{md,csv,tex}``, ``memory.{md,csv,tex}`` (CSV: numeric mean and std columns);
- ``accuracy_vs_memory_<benchmark>``, ``memory_growth_<benchmark>``: one point/curve per method;
- ``accuracy_matrix_<benchmark>_<method>``: the accuracy matrix heat map (mean over seeds);
- NWS-style runs (with ``selection_counts``): ``pool_utilisation_<...>`` and
  ``selection_<...>_task<t>`` (kernel-index selection rate per task and layer, first seed);
- ``report.md`` putting them together with the run configuration.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from nws_avalanche.common.atomic import atomic_write_text, output_error
from nws_avalanche.common.errors import NWSError, OutputError

from .figures import (accuracy_heatmap_figure, accuracy_memory_figure, groups, has_selection_counts,
                      memory_growth_figure, pool_utilisation, pool_utilisation_figure, save_figure,
                      selection_rate_figure, selection_rates, slug)
from .load import load_results
from .tables import accuracy_stats, accuracy_table, memory_stats, memory_table, sweep_keys, to_latex

# per-run keys that differ by design and are shown elsewhere
RUN_KEYS = ("benchmark", "method", "seed")


def configuration(results: list[dict]) -> tuple[dict, dict]:
    """(keys shared by every run, key -> sorted distinct values for keys that differ)."""
    configs = [{k: v for k, v in r.get("config", {}).items() if k not in RUN_KEYS} for r in results]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    shared, varying = {}, {}
    for k in keys:
        values = {yaml.safe_dump(c.get(k), default_flow_style=True).strip() for c in configs}
        if len(values) == 1:
            shared[k] = configs[0].get(k)
        else:
            varying[k] = sorted(values)
    return shared, varying


def _fig(out: Path, stem: str, fig, lines: list[str], caption: str) -> list[Path]:
    paths = save_figure(fig, out / stem)
    lines += [f"![{caption}]({paths[0].name})", "", f"*{caption}* ([PDF]({paths[1].name}))", ""]
    return paths


def line_progress():
    """Off a terminal (log file, Slurm): a callback printing one line per figure group; else None."""
    import time

    from nws_avalanche.common.feedback import on_terminal, say

    if on_terminal():
        return None
    last = [time.perf_counter()]

    def progress(group: str) -> None:
        now = time.perf_counter()
        say(f"report: {group} ({now - last[0]:.1f} s)")
        last[0] = now
    return progress


def check_same_tasks(results: list[dict]) -> None:
    """Every seed of a (benchmark, method) group must have the same tasks: means over seeds of
    different task sequences mean nothing (refused, naming two runs that differ)."""
    for (b, label), rs in groups(results).items():
        first = rs[0]
        for r in rs[1:]:
            if r["tasks"] != first["tasks"]:
                raise NWSError(f"{label} on {b}: runs with different tasks ({len(first['tasks'])} in "
                               f"{first['_path']}, {len(r['tasks'])} in {r['_path']}); report them separately "
                               f"(one report command per task setting)")


def write_report(roots, out: Path, progress=None) -> Path:
    """``progress(group)``, if given, is called after the tables and after each figure group."""
    done = progress or (lambda group: None)
    results = load_results(roots)
    check_same_tasks(results)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"report --out {out} is a file, not a folder; give a folder for the report (or remove "
                          f"that file)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(out, e) from None
    acc, mem = accuracy_table(results), memory_table(results)
    atomic_write_text(out / "accuracy.csv", accuracy_stats(results).to_csv(index=False))
    atomic_write_text(out / "memory.csv", memory_stats(results).to_csv(index=False))
    atomic_write_text(out / "accuracy.md", acc.to_markdown(index=False) + "\n")
    atomic_write_text(out / "memory.md", mem.to_markdown(index=False) + "\n")
    atomic_write_text(out / "accuracy.tex", to_latex(acc, "Final accuracy (%) per task, average and "
                                                          "forgetting, mean ± std over seeds", "tab:accuracy"))
    atomic_write_text(out / "memory.tex", to_latex(mem, "Memory (MiB): per task, assist, total; the same content "
                                                        "in the NWS paper's accounting (paper columns); "
                                                        "mean ± std over seeds", "tab:memory"))
    done("tables")
    benchmarks = sorted({r["benchmark"] for r in results})
    seeds = sorted({r["seed"] for r in results})
    swept = sweep_keys(results)
    lines = ["# Report", "",
             f"{len(results)} runs: benchmarks {', '.join(benchmarks)}; seeds {', '.join(map(str, seeds))}"
             + (f"; swept keys {', '.join(swept)}" if swept else "") + ".", "",
             "## Accuracy (%)", "",
             "Final accuracy on every task after the last task, and their average; forgetting: the mean drop "
             "from each task's accuracy right after learning it to its final accuracy (all but the last task); "
             "mean ± std (sample std) over seeds. Files: accuracy.md, accuracy.csv, accuracy.tex.", "",
             acc.to_markdown(index=False), "",
             "## Memory (MiB)", "",
             "Size on disk of what each task stores (mean per task), of the files all tasks share (assist), "
             "and in total. The paper columns count the same content as the NWS paper's code did "
             "(int16 + LZMA codes, uint8 masks, pickled BatchNorm modules, pools with their EMA buffers; "
             "see docs/fidelity.md). Files: memory.md, memory.csv, memory.tex.", "",
             mem.to_markdown(index=False), "", "## Figures", ""]
    for b in benchmarks:
        lines += [f"### {b}", ""]
        _fig(out, f"accuracy_vs_memory_{slug(b)}", accuracy_memory_figure(results, b), lines,
             f"{b}: average accuracy vs total memory per method (mean ± std over seeds)")
        _fig(out, f"memory_growth_{slug(b)}", memory_growth_figure(results, b), lines,
             f"{b}: total memory after each task per method")
        done(f"{b}: accuracy vs memory, memory growth")
        for (gb, label), rs in groups(results).items():
            if gb != b:
                continue
            stem = slug(f"{b}_{label}")
            n = f"{len(rs)} seed{'s' if len(rs) > 1 else ''}"
            _fig(out, f"accuracy_matrix_{stem}", accuracy_heatmap_figure(rs, f"{label}, {b} ({n})"), lines,
                 f"{label}: accuracy on task j (column) after training task i (row), mean over {n}")
            done(f"{b} {label}: accuracy matrix")
            if not has_selection_counts(rs[0]):
                continue
            util = pool_utilisation(rs[0])
            atomic_write_text(out / f"pool_utilisation_{stem}.csv", util.to_csv(index=False))
            _fig(out, f"pool_utilisation_{stem}", pool_utilisation_figure(rs, f"{label}, {b} ({n})"), lines,
                 f"{label}: fraction of each layer's pool entries selected per task, mean over {n}")
            done(f"{b} {label}: pool utilisation")
            r = rs[0]
            df = selection_rates(r)
            atomic_write_text(out / f"selection_{stem}_seed{r['seed']}.csv", df.to_csv(index=False))
            lines += [f"Kernel-index selection rate per layer ({label}, seed {r['seed']}):", ""]
            for t in sorted(df.task.unique()):
                fig = selection_rate_figure(df, t, f"{label} {b} seed {r['seed']}: task {t}")
                png, _ = save_figure(fig, out / f"selection_{stem}_seed{r['seed']}_task{t:02d}", tight_bbox=False)
                lines.append(f"![task {t}]({png.name})")
            lines.append("")
            done(f"{b} {label}: selection rates, {df.task.nunique()} tasks")
    shared, varying = configuration(results)
    lines += ["## Run configuration", ""]
    if varying:
        lines += ["Keys that differ between runs:", ""]
        lines += [f"- `{k}`: {', '.join(f'`{v}`' for v in vs)}" for k, vs in varying.items()]
        lines.append("")
    lines += ["Shared by every run:", "", "```yaml", yaml.safe_dump(shared, sort_keys=False).rstrip(), "```", "",
              "Runs:", ""]
    lines += [f"- `{Path(r['_path']).parent}`" for r in results]
    return atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
