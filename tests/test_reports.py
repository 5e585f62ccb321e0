"""Report tables equal hand-computed means/stds; every figure is written; sweeps group the tables."""
from __future__ import annotations

import statistics

import pytest

from nws_avalanche.common.atomic import atomic_write_json

MIB = float(1 << 20)


def fake_result(method, seed, final, per_task_bytes, assist_bytes, sweep=None, counts=None):
    """A results.json as the runner writes it (only the fields reports read are meaningful)."""
    T = len(final)
    acc = [[final[j] - (T - 1 - i) if j <= i else None for j in range(T)] for i in range(T)]
    acc[-1] = list(final)
    per_task = [{"selection_counts": counts(t)} if counts else {} for t in range(T)]
    r = {"format": 1, "benchmark": "split-digits", "method": method, "seed": seed, "tasks": [f"t{t}" for t in range(T)],
         "accuracy_matrix": acc, "final_accuracy": list(final), "average_accuracy": statistics.fmean(final),
         "memory_mib": {"per_task": [b / MIB for b in per_task_bytes], "assist": assist_bytes / MIB,
                        "total": (sum(per_task_bytes) + assist_bytes) / MIB,
                        "bytes": {"per_task": per_task_bytes, "assist": assist_bytes}},
         "train_seconds": [1.0] * T, "config": {"method": method, "seed": seed, "lr": 0.01, "pool_size": 8},
         "per_task": per_task}
    if sweep:
        r["sweep"] = sweep
    return r


def counts_for(t):
    return {"conv1": [3, 0, 1, 4][: 4 - t] + [0] * t, "fc": [1, 1, 0, 2]}


@pytest.fixture()
def results_dir(tmp_path):
    runs = [
        fake_result("finetune", 0, [90.0, 80.0], [1000, 1000], 0),
        fake_result("finetune", 1, [86.0, 70.0], [1000, 1000], 0),
        fake_result("finetune", 2, [88.0, 75.0], [1000, 1000], 0),
        fake_result("nws", 0, [70.0, 60.0], [100, 120], 50, {"nws.init": "previous"}, counts_for),
        fake_result("nws", 1, [74.0, 58.0], [110, 120], 50, {"nws.init": "previous"}, counts_for),
        fake_result("nws", 0, [50.0, 40.0], [100, 100], 50, {"nws.init": "random"}, counts_for),
    ]
    for r in runs:
        point = ",".join(f"{k}={v}" for k, v in (r.get("sweep") or {}).items())
        atomic_write_json(tmp_path / "runs" / r["method"] / point / f"seed{r['seed']}" / "results.json", r)
    return tmp_path / "runs", runs


def test_accuracy_and_memory_stats_equal_hand_computed(results_dir):
    from reports.load import load_results
    from reports.tables import accuracy_stats, memory_stats

    root, runs = results_dir
    results = load_results([root])
    acc = accuracy_stats(results).set_index(["method", "nws.init"])
    ft = [r for r in runs if r["method"] == "finetune"]
    row = acc.loc[("finetune", "-")]
    for j in range(2):
        vals = [r["final_accuracy"][j] for r in ft]
        assert row[f"acc_{j}"] == pytest.approx(statistics.fmean(vals))
        assert row[f"acc_{j}_std"] == pytest.approx(statistics.stdev(vals))
    avg = [statistics.fmean(r["final_accuracy"]) for r in ft]
    assert row["average_accuracy"] == pytest.approx(statistics.fmean(avg))
    assert row["average_accuracy_std"] == pytest.approx(statistics.stdev(avg))
    assert row["seeds"] == 3
    # sweep points are separate groups; a single seed has std 0
    prev = acc.loc[("nws", "previous")]
    assert prev["average_accuracy"] == pytest.approx(statistics.fmean([65.0, 66.0]))
    assert acc.loc[("nws", "random")]["seeds"] == 1 and acc.loc[("nws", "random")]["average_accuracy_std"] == 0
    mem = memory_stats(results).set_index(["method", "nws.init"])
    totals = [(100 + 120 + 50) / MIB, (110 + 120 + 50) / MIB]
    assert mem.loc[("nws", "previous")]["total_mib"] == pytest.approx(statistics.fmean(totals))
    assert mem.loc[("nws", "previous")]["total_mib_std"] == pytest.approx(statistics.stdev(totals))
    assert mem.loc[("nws", "previous")]["mib_per_task"] == pytest.approx(statistics.fmean([110 / MIB, 115 / MIB]))
    assert mem.loc[("nws", "previous")]["assist_mib"] == pytest.approx(50 / MIB)


def test_forgetting_is_the_mean_drop_from_just_learned_to_final():
    from reports.tables import accuracy_stats, forgetting

    acc = [[80.0, None, None], [70.0, 90.0, None], [60.0, 85.0, 95.0]]
    assert forgetting(acc) == pytest.approx(((80 - 60) + (90 - 85)) / 2)
    assert forgetting([[77.0]]) == 0.0
    runs = [fake_result("ewc", s, [60.0 + s, 85.0, 95.0], [10, 10, 10], 0) for s in (0, 1)]
    for r, first in zip(runs, (80.0, 84.0)):
        r["accuracy_matrix"][0][0] = first
    row = accuracy_stats(runs).set_index("method").loc["ewc"]
    drops = [((80 - 60) - 1) / 2, ((84 - 61) - 1) / 2]  # task 1: 84 just learned (fake_result), 85 final
    assert row["forgetting"] == pytest.approx(statistics.fmean(drops))
    assert row["forgetting_std"] == pytest.approx(statistics.stdev(drops))


def test_report_writes_tables_and_every_figure(results_dir, tmp_path):
    from reports.report import write_report

    root, runs = results_dir
    out = tmp_path / "report"
    md = write_report([root], out).read_text()
    for name in ("accuracy", "memory"):
        for ext in ("md", "csv", "tex"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    tex = (out / "accuracy.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and "nws.init" in tex
    ft_avg = [statistics.fmean(r["final_accuracy"]) for r in runs if r["method"] == "finetune"]
    cell = f"{statistics.fmean(ft_avg):.2f} ± {statistics.stdev(ft_avg):.2f}"
    assert cell in (out / "accuracy.md").read_text() and cell in md
    expected = ["accuracy_vs_memory_split-digits", "memory_growth_split-digits",
                "accuracy_matrix_split-digits_finetune", "accuracy_matrix_split-digits_nws_nws.init=previous",
                "accuracy_matrix_split-digits_nws_nws.init=random",
                "pool_utilisation_split-digits_nws_nws.init=previous",
                "selection_split-digits_nws_nws.init=previous_seed0_task00",
                "selection_split-digits_nws_nws.init=previous_seed0_task01"]
    for stem in expected:
        for ext in ("png", "pdf"):
            f = out / f"{stem}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f
        assert f"{stem}.png" in md
    assert "## Run configuration" in md and "pool_size: 8" in md
    assert not (out / "pool_utilisation_split-digits_finetune.png").exists()  # no selection counts


def test_pool_utilisation_is_fraction_of_used_entries(results_dir):
    from reports.figures import memory_growth, pool_utilisation

    _, runs = results_dir
    nws = runs[3]
    util = pool_utilisation(nws).set_index(["task", "layer"])["used"]
    assert util[(0, "conv1")] == 3 / 4 and util[(1, "conv1")] == 2 / 4 and util[(0, "fc")] == 3 / 4
    assert memory_growth(nws).tolist() == pytest.approx([(50 + 100) / MIB, (50 + 220) / MIB])


def test_report_without_results_is_a_clear_error(tmp_path):
    from nws_avalanche.common.errors import NWSError
    from reports.report import write_report

    (tmp_path / "empty").mkdir()
    with pytest.raises(NWSError, match="no results.json"):
        write_report([tmp_path / "empty"], tmp_path / "r")


def test_report_cli(results_dir, tmp_path):
    from nws_avalanche.cli import main

    root, _ = results_dir
    assert main(["report", str(root), "--out", str(tmp_path / "rep")]) == 0
    assert "| finetune" in (tmp_path / "rep" / "report.md").read_text()
    assert main(["report", str(tmp_path / "missing")]) == 2  # a clear error, non-zero exit
