"""The paper's pipeline on an embedded benchmark (issue 19): ``pretrain-pools --benchmark NAME`` trains on
that benchmark's own pretraining split (1 channel, its size and normalisation) and writes a network and
pools that a run of the benchmark accepts; ``pools: pretrain`` does the same inside a run, cached under
``_assist/``."""
from __future__ import annotations

import json

import pytest

from nws_avalanche.cli import main as cli
from nws_avalanche.pools.pool_set import PoolSet

OPTS = {"pretrain_classes": "ABCD", "task_classes": "abcdef", "classes_per_task": 3, "tasks": 1,
        "image_size": 12, "pretrain_renders": 1, "train_renders": 1, "test_renders": 1, "train_fonts": 2,
        "fonts": ["DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr10", "cmtt10"]}
RUN = ["--set", "arch=resnet-tiny", "--set", "pool_size=8", "--set", "epochs=1", "--set", "pretrain_epochs=1",
       *[a for k, v in OPTS.items() for a in ("--set", f"benchmark_options.{k}={json.dumps(v)}")]]


def test_pretrain_pools_benchmark_output_is_accepted_by_a_run(tmp_path, capsys):
    pools = tmp_path / "pools"
    assert cli(["pretrain-pools", "--benchmark", "font-glyphs", "--set", f"benchmark_options={json.dumps(OPTS)}",
                "--arch", "resnet-tiny", "--epochs", "1", "--batch-size", "16", "--pool-size", "8",
                "--workers", "0", "--no-progress", "--out", str(pools)]) == 0
    ps = PoolSet.load(pools / "pools.nwsp")
    assert ps.arch == "resnet-tiny"
    out = tmp_path / "runs"
    assert cli(["run", "--benchmark", "font-glyphs", "--methods", "nws", "--out", str(out), "--no-report", *RUN,
                "--set", f"pretrained={pools / 'pretrained.pt'}", "--set", f"pool_file={pools / 'pools.nwsp'}"]) == 0
    r = json.loads(next(out.rglob("results.json")).read_text())
    assert r["config"]["pool_file"] == str(pools / "pools.nwsp") and len(r["final_accuracy"]) == 1


def test_pretrain_pools_needs_exactly_one_source(tmp_path, capsys):
    assert cli(["pretrain-pools", "--out", str(tmp_path / "x")]) == 2
    assert "--data DIR" in capsys.readouterr().err
    assert cli(["pretrain-pools", "--benchmark", "cub-to-sketches", "--data", str(tmp_path),
                "--out", str(tmp_path / "x")]) == 2
    assert "not both" in capsys.readouterr().err


def test_run_pools_pretrain_is_cached_under_assist(tmp_path):
    out = tmp_path / "runs"
    args = ["run", "--benchmark", "font-glyphs", "--out", str(out), "--no-report", *RUN, "--set", "pools=pretrain"]
    assert cli([*args, "--methods", "nws"]) == 0
    made = list((out / "font-glyphs" / "_assist").glob("pretrain-pools-*/pools.nwsp"))
    assert len(made) == 1
    stamp = made[0].stat().st_mtime_ns
    assert cli([*args, "--methods", "nws", "--sweep", "nws.init=random"]) == 0  # another run reuses it
    assert made[0].stat().st_mtime_ns == stamp
    results = [json.loads(p.read_text()) for p in out.rglob("results.json")]
    assert len(results) == 2 and all(r["config"]["pools"] == "pretrain" for r in results)


def test_pools_pretrain_refuses_a_given_network(tmp_path, capsys):
    assert cli(["run", "--benchmark", "font-glyphs", "--methods", "nws", "--out", str(tmp_path), *RUN,
                "--set", "pools=pretrain", "--set", f"pretrained={tmp_path / 'x.pt'}"]) == 2
    err = capsys.readouterr().err
    assert "pools=" in err or "not found" in err


@pytest.mark.parametrize("bad", ["pools=ema", "pools=1"])
def test_pools_setting_is_checked(tmp_path, capsys, bad):
    assert cli(["run", "--benchmark", "font-glyphs", "--methods", "nws", "--out", str(tmp_path), "--set", bad]) == 2
    assert "pools must be kmeans or pretrain" in capsys.readouterr().err
