"""``nws-bench perf`` end to end on a tiny configuration (no timing assertions)."""
import json

import torch

from nws_avalanche.cli import main


def test_perf_writes_all_figures(tmp_path, capsys):
    old = torch.get_num_threads()
    out = tmp_path / "perf.json"
    try:
        rc = main(["perf", "--arch", "resnet-tiny", "--image-size", "16", "--batch-size", "4", "--pool-size", "8",
                   "--steps", "2", "--warmup", "1", "--check-steps", "3", "--threads", "1", "--no-gpu",
                   "--out", str(out)])
    finally:
        torch.set_num_threads(old)
    assert rc == 0
    doc = json.loads(out.read_text())
    r = doc["results"][0]
    for key in ("plain_step_s", "nws_step_s", "step_ratio", "search_share", "exactness", "eval_images_per_s",
                "task_switch_s", "storage", "artifact_bytes"):
        assert key in r, key
    assert set(r["step_ratio"]) == {"wall", "cpu", "wall_paired"}
    assert 0 <= r["searched_per_step"] <= r["vectors_per_step"]
    b = r["breakdown_cpu_s"]
    for side in ("plain", "nws"):  # the parts add up to the timed steps' CPU time
        parts = [b[side][k] for k in ("search", "quantise", "straight_through", "bookkeeping", "optimiser",
                                      "plain_work")]
        assert abs(sum(parts) - b[side]["total"]) <= 1e-9 * max(1.0, b[side]["total"])
        assert all(v >= 0 for v in parts[:5])
    assert b["plain"]["search"] == b["plain"]["straight_through"] == 0.0  # a plain net has no NWS parts
    assert b["nws"]["search"] > 0 and b["nws"]["straight_through"] > 0
    assert r["exactness"]["mismatches"] == 0
    assert r["exactness"]["index_changes"] > 0
    assert r["task_switch_s"]["bit_identical"] is True
    assert r["task_switch_resident_s"]["bit_identical"] is True
    split = r["artifact_bytes"]
    assert split["codes"] + split["bn"] + split["head"] + split["other_state"] + split["header"] == split["total"]
    assert split["codes"] == sum(row["bytes"] for row in r["storage"]["layers"])
    printed = capsys.readouterr().out
    assert "mismatches vs brute force = 0" in printed
    assert "straight_through" in printed and "plain_work" in printed


def test_perf_rejects_unknown_search(tmp_path, capsys):
    rc = main(["perf", "--search", "nope", "--out", str(tmp_path / "p.json")])
    assert rc == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()
