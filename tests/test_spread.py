"""reports.spread: the move across environment settings and the seed spread, restated by hand."""
from __future__ import annotations

import json
import statistics

from reports.spread import collect, table


def _write(root, method, seed, avg):
    d = root / "b" / method / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"benchmark": "b", "method": method, "seed": seed,
                                                "average_accuracy": avg}))


def test_spread_table(tmp_path):
    vals = {"t1": {0: 80.0, 1: 84.0, 2: 90.0}, "t2": {0: 80.5, 1: 84.0, 2: 89.0}}
    for label, by_seed in vals.items():
        for seed, v in by_seed.items():
            _write(tmp_path / label, "nws", seed, v)
    dirs = {lb: tmp_path / lb for lb in vals}
    assert collect(dirs)[("b", "nws")][2] == {"t1": 90.0, "t2": 89.0}
    out = table(dirs)
    assert "| b | nws | 0 | 80.00 | 80.50 | 0.50 |" in out
    sds = sorted(statistics.stdev(v.values()) for v in vals.values())
    mean_move = (0.5 + 0.0 + 1.0) / 3
    assert f"| b | nws | 1.00 | {mean_move:.2f} | {sds[0]:.2f} to {sds[1]:.2f} |" in out
