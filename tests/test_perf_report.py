"""Reports in seconds (issue 14, item 6): the selection-rate figure draws one artist per layer
holding every index's rate, and ``perf-report`` times a report per figure group (no timing
assertion: the figures are for the README)."""
from __future__ import annotations

import re

import numpy as np

from reports.bench import nws_layer_sizes, quickstart_like_runs
from reports.figures import selection_rate_figure, selection_rates
from reports.load import load_results


def test_selection_figure_is_one_step_artist_per_layer_with_the_rates(tmp_path):
    quickstart_like_runs(tmp_path, tasks=2, K=16, arch="resnet-tiny")
    r = next(r for r in load_results([tmp_path]) if r["method"] == "nws")
    sizes = nws_layer_sizes("resnet-tiny")
    df = selection_rates(r)
    fig = selection_rate_figure(df, 1, "t")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(sizes)
    for ax in panels:
        counts = np.asarray(r["per_task"][1]["selection_counts"][ax.get_title()])
        assert counts.sum() == sizes[ax.get_title()]
        assert len(ax.patches) == 1 and not ax.containers  # one artist, not one bar per index
        values, edges = ax.patches[0].get_data()[:2]
        np.testing.assert_allclose(values, counts / counts.sum())
        np.testing.assert_array_equal(edges, np.arange(17) - 0.5)  # unit-wide bins centred on the indices


def test_perf_report_prints_seconds_per_group(tmp_path, capsys):
    from nws_avalanche.cli import main

    quickstart_like_runs(tmp_path / "runs", tasks=1, K=8, arch="resnet-tiny")
    assert main(["perf-report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"split-digits nws: selection rates, 1 tasks +[\d.]+ s", out)
    assert re.search(r"report: [\d.]+ s wall, [\d.]+ s CPU", out)
    assert (tmp_path / "rep" / "report.md").is_file()
