"""NWS's per-task facts in results.json: index changes against the previous task, per layer,
equal to comparing the stored indices of consecutive tasks (and task 0 with the pretrained
network's own assignment)."""
from __future__ import annotations

import numpy as np

from nws_avalanche.method.task_artifact import read_nws_task


def test_index_changes_match_the_stored_indices(tiny_runs):
    out, res = tiny_runs
    art = out / "split-digits" / "nws" / "seed0" / "artifacts"
    per_task = res["nws"]["per_task"]
    first = per_task[0]["index_changes"]
    assert first["against"] == "pretrained" and first["changed"] > 0  # task 0 moved off the pretrained kernels
    _, idx0, _ = read_nws_task(art / "task000.nwst")
    _, idx1, _ = read_nws_task(art / "task001.nwst")
    facts = per_task[1]["index_changes"]
    assert facts["against"] == "task 0"
    assert set(facts["layers"]) == set(idx0)  # every layer (both tasks have the same head size)
    total = 0
    for name, row in facts["layers"].items():
        changed = int(np.sum(np.asarray(idx0[name]) != np.asarray(idx1[name])))
        assert row["changed"] == changed
        assert abs(row["share"] - changed / np.asarray(idx1[name]).size) < 1e-12
        total += changed
    assert facts["changed"] == total > 0
