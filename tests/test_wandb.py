"""wandb offline: one run per (method, benchmark, seed) holding per-task metrics, tables and images."""
from __future__ import annotations

import json
import os
import time
import warnings

import pytest
import torch

os.environ["WANDB_SILENT"] = "true"
torch.set_num_threads(1)

TINY = ["arch=resnet-tiny", "epochs=1", "pretrain_epochs=1", "pool_size=8", "benchmark_options.tasks=2",
        "batch_size=64"]


def tiny(*sets, **fixed):
    from nws_avalanche.config.run_config import build_config

    return build_config([], TINY + list(sets), **fixed)


def test_mode_resolution(monkeypatch):
    from nws_avalanche.common.errors import ConfigError
    from nws_avalanche.runner.wandb_log import wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode(tiny()) == "disabled"  # default: nothing configured
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode(tiny()) == "offline"
    assert wandb_mode(tiny("wandb.mode=disabled")) == "disabled"  # config wins over the environment
    with pytest.raises(ConfigError, match="wandb mode"):
        wandb_mode(tiny("wandb.mode=sometimes"))
    with pytest.raises(ConfigError, match="unknown wandb option"):
        wandb_mode(tiny("wandb.projet=x"))


def test_offline_run_holds_metrics_tables_images(tmp_path, monkeypatch):
    from nws_avalanche.runner.launch import RunJob
    from nws_avalanche.runner.sweep import RunSpec
    from nws_avalanche.runner.wandb_log import read_wandb_records

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = tiny(f"wandb.dir={tmp_path / 'wb'}", "wandb.mode=offline", "wandb.project=test", method="nws")
    spec = RunSpec(cfg, {})
    RunJob(spec, tmp_path / "out")()
    logs = list((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    records = _complete_records(logs[0], read_wandb_records)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.run_group, run.job_type, run.display_name) == ("split-digits", "nws", "split-digits-nws-seed0")
    assert run.run_id == (spec.run_dir(tmp_path / "out") / "wandb_id.txt").read_text().strip()
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["pool_size"] == 8 and config["arch"] == "resnet-tiny" and config["method"] == "nws"
    history = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    results = json.loads((spec.run_dir(tmp_path / "out") / "results.json").read_text())
    per_task = [h for h in history if "acc/average" in h]
    assert [h["task"] for h in per_task] == [0, 1]
    assert per_task[1]["acc/task0"] == results["accuracy_matrix"][1][0]
    assert per_task[1]["acc/task1"] == results["accuracy_matrix"][1][1]
    assert per_task[1]["memory/total_mib"] == pytest.approx(results["memory_mib"]["total"])
    assert per_task[0]["memory/task_mib"] == pytest.approx(results["memory_mib"]["per_task"][0])
    # media are logged as flattened leaves: "<key>/_type", "<key>/path", ...
    final = next(h for h in history if "tables/accuracy_matrix/_type" in h)
    assert final["tables/accuracy_matrix/_type"] == "table-file"
    images = {k.removesuffix("/_type") for k, v in final.items() if k.endswith("/_type") and v == "image-file"}
    assert {"figures/accuracy_matrix", "figures/memory_growth", "figures/pool_utilisation"} <= images
    files = logs[0].parent / "files"
    for k in images | {"tables/accuracy_matrix", "tables/memory_per_task"}:
        assert (files / final[f"{k}/path"]).stat().st_size > 0
    table = json.loads((files / final["tables/accuracy_matrix/path"]).read_text())
    assert table["data"][1][1:] == results["accuracy_matrix"][1]


def _complete_records(path, read):
    # wandb's writer may still be flushing when finish() returns: wait for the exit record
    for _ in range(60):
        records = list(read(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        time.sleep(0.5)
    return records


def test_unreachable_wandb_warns_and_run_continues(tmp_path, monkeypatch):
    import wandb

    from nws_avalanche.runner.run import run_dir, run_single
    from nws_avalanche.runner.wandb_log import wandb_callbacks

    def refuse(*a, **k):
        raise wandb.errors.CommError("could not reach api.wandb.ai")

    monkeypatch.setattr(wandb, "init", refuse)
    cfg = tiny("wandb.mode=online", method="finetune")
    cbs = wandb_callbacks(cfg, run_dir(tmp_path, cfg))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run_single(cfg, tmp_path, progress=False, callbacks=cbs)
        cbs[0].finish(r)
    assert any("wandb could not start" in str(w.message) for w in caught)
    assert (run_dir(tmp_path, cfg) / "results.json").is_file()
