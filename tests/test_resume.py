"""Interrupt a run after a task, rerun it, and compare with an uninterrupted run."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)

TINY = ["arch=resnet-tiny", "epochs=1", "pretrain_epochs=1", "pool_size=8", "benchmark_options.tasks=2",
        "batch_size=64"]
TIMING = ("train_seconds",)


def tiny(**fixed):
    from nws_avalanche.config.run_config import build_config

    return build_config([], TINY, **fixed)


class Stop(Exception):
    pass


def stop_after(k):
    def cb(t, acc, strategy):
        if t == k:
            raise Stop(f"simulated loss of the node after task {k}")
    return cb


def without_timing(r):
    return {k: v for k, v in r.items() if k not in TIMING}


def files(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted((run / "artifacts").iterdir())}


@pytest.fixture(scope="module")
def assist(tmp_path_factory):
    """Pretrained network and pools, built once and shared by the runs below (copied per out dir)."""
    from nws_avalanche.runner.run import run_single

    out = tmp_path_factory.mktemp("ref")
    ref = {m: run_single(tiny(method=m), out, progress=False) for m in ("nws", "finetune")}
    return out, ref


def _copy_assist(src, dst):
    import shutil

    shutil.copytree(src / "split-digits" / "_assist", dst / "split-digits" / "_assist")


@pytest.mark.parametrize("method,sets", [("nws", []), ("nws", ["nws.init=random"]), ("finetune", []),
                                         ("packnet", []), ("ksm", []), ("aqd", []), ("ewc", []),
                                         ("ewc", ["ewc.mode=online", "ewc.decay_factor=0.9"]), ("si", []),
                                         ("mas", []), ("lwf", []), ("replay", ["replay.mem_size=50"]),
                                         ("gem", ["gem.patterns_per_experience=16"]),
                                         ("agem", ["agem.patterns_per_experience=16", "agem.sample_size=8"])])
def test_interrupted_then_resumed_equals_uninterrupted(assist, tmp_path, method, sets):
    from nws_avalanche.common.errors import ArtifactError
    from nws_avalanche.config.run_config import build_config
    from nws_avalanche.runner.run import run_dir, run_single
    from nws_avalanche.runner.status_file import read_status

    ref_out, ref = assist
    cfg = build_config([], TINY + sets, method=method)
    full = ref_out
    if sets:  # not among the reference runs
        full = tmp_path / "full"
        _copy_assist(ref_out, full)
    expected = run_single(cfg, full, progress=False)
    out = tmp_path / "cut"
    _copy_assist(ref_out, out)
    with pytest.raises(Stop):
        run_single(cfg, out, progress=False, callbacks=[stop_after(0)])
    rdir = run_dir(out, cfg)
    assert (rdir / "checkpoint.pt").is_file() and not (rdir / "results.json").exists()
    st = read_status(rdir)
    assert st["state"] == "failed" and st["next_task"] == 1 and "simulated loss" in st["error"]
    seen = []
    resumed = run_single(cfg, out, progress=False, callbacks=[lambda t, acc, s: seen.append(t)])
    assert seen == [1]  # task 0 was not trained again
    assert without_timing(resumed) == without_timing(expected)
    assert files(rdir) == files(run_dir(full, cfg))
    assert json.loads((rdir / "results.json").read_text())["accuracy_matrix"] == expected["accuracy_matrix"]
    assert read_status(rdir)["state"] == "finished" and not (rdir / "checkpoint.pt").exists()

    if not resumed["memory_mib"]["files"]["per_task"][1]:
        # one shared network serves every task (Avalanche's strategies): no earlier state to go back to
        (rdir / "artifacts" / "network.dense").unlink()
        with pytest.raises(ArtifactError, match="--overwrite"):
            run_single(cfg, out, progress=False)
        return
    # recovery: the last task's file of the finished run deleted (as the corruption message advises)
    # -> the rerun retrains that task alone, from task 0's files, and ends exactly as the full run
    last = rdir / "artifacts" / resumed["memory_mib"]["files"]["per_task"][1][0]
    last.unlink()
    seen.clear()
    rebuilt = run_single(cfg, out, progress=False, callbacks=[lambda t, acc, s: seen.append(t)])
    assert seen == [1]
    assert without_timing(rebuilt) == without_timing(expected)
    assert files(rdir) == files(run_dir(full, cfg))


def test_finished_run_is_skipped(assist, tmp_path):
    from nws_avalanche.runner.run import run_single

    ref_out, ref = assist
    calls = []
    again = run_single(tiny(method="finetune"), ref_out, progress=False, callbacks=[lambda *a: calls.append(a)])
    assert calls == [] and again == ref["finetune"]


def test_other_config_is_refused_unless_overwrite(assist, tmp_path):
    from nws_avalanche.common.errors import ConfigError
    from nws_avalanche.runner.run import run_dir, run_single

    ref_out, _ = assist
    out = tmp_path / "o"
    _copy_assist(ref_out, out)
    cfg = tiny(method="finetune")
    with pytest.raises(Stop):
        run_single(cfg, out, progress=False, callbacks=[stop_after(0)])
    other = tiny(method="finetune", lr=0.05)
    with pytest.raises(ConfigError, match="different config.*lr.*--overwrite"):
        run_single(other, out, progress=False)
    assert (run_dir(out, cfg) / "checkpoint.pt").is_file()  # nothing lost
    r = run_single(other, out, progress=False, overwrite=True)
    assert r["config"]["lr"] == 0.05
    # wandb/slurm settings do not make a different run: the finished run is reused
    relaunched = replace(other, wandb={"mode": "disabled"}, slurm={"partition": "gpu"})
    assert run_single(relaunched, out, progress=False) == r
