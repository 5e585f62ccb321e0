"""``nws-bench selftest``: on the device under test (``pytest --device``; cpu by default) every
check of the quick selftest holds, the table and the JSON agree, and a check that does not hold
makes the exit code 1."""
from __future__ import annotations

import json

from nws_avalanche.cli import main


def test_quick_selftest_holds_on_the_device(device, tmp_path, capsys):
    out = tmp_path / "selftest.json"
    rc = main(["selftest", "--device", str(device), "--quick", "--json", str(out)])
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = report["rows"]
    bad = [r for r in rows if r["holds"] is False]
    assert rc == 0 and report["all_hold"] and not bad, bad
    checks = " | ".join(r["check"] for r in rows)
    for part in ("(d=49)", "(d=9)", "(d=1)", "gs=4", "Avalanche accuracy = accuracy rebuilt", "no forgetting",
                 f"search state on {device}", "step time", "peak memory", "bf16 autocast", "fp16 autocast",
                 "nccl"):
        assert part in checks, part
    for r in rows:  # the table shows every row with its verdict
        assert r["check"] in table and r["verdict"] in table
        if r["check"].startswith("search = float64"):
            assert r["data"]["mismatches_per_call"] == [0, 0, 0, 0] and r["data"]["exact_ties_last_call"] > 0
    if device.type == "cpu":  # no allocator peak, no fp16 autocast, no 2 GPUs here: said so, not faked
        skipped = {r["check"].split(",")[0]: r["verdict"] for r in rows if r["holds"] is None}
        assert any(k.startswith("NWS/plain peak memory") for k in skipped)
        assert "skipped: needs 2 GPUs" in skipped["2-process nccl pool pretraining: same pools on both ranks"]


def test_a_check_that_does_not_hold_fails_the_selftest(tmp_path, capsys, monkeypatch):
    from nws_avalanche.speed import selftest as st

    monkeypatch.setitem(st.CHECKS, "amp", lambda device, quick: [st.Row("planted", "1 mismatch", False)])
    out = tmp_path / "s.json"
    assert main(["selftest", "--only", "amp,nccl", "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "planted" in text and "does not hold" in text and "SOME CHECKS DO NOT HOLD" in text
    assert json.loads(out.read_text())["all_hold"] is False


def test_a_crashing_check_is_a_row_that_does_not_hold(tmp_path, capsys, monkeypatch):
    from nws_avalanche.speed import selftest as st

    def boom(device, quick):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setitem(st.CHECKS, "search", boom)
    assert main(["selftest", "--only", "search", "--json", str(tmp_path / "s.json")]) == 1
    assert "raised RuntimeError: CUDA error" in capsys.readouterr().out


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    assert main(["selftest", "--only", "bogus", "--json", str(tmp_path / "s.json")]) == 2
    assert "--only: unknown section(s) bogus" in capsys.readouterr().err
    assert main(["selftest", "--device", "tpu", "--json", str(tmp_path / "s.json")]) == 2
    assert not (tmp_path / "s.json").exists()
