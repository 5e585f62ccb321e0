"""Sweeps expand into one folder per grid point; submitit's local executor runs a 2 x 2 grid; the
Slurm path submits the same jobs as one array (checked through a stand-in sbatch); status lists runs."""
from __future__ import annotations

import os
import pickle
import stat

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

TINY = ["arch=resnet-tiny", "epochs=1", "pretrain_epochs=1", "pool_size=8", "benchmark_options.tasks=2",
        "batch_size=64"]


def grid(extra=(), sweeps=("lr=0.01,0.02",), seeds=(0, 1), methods=("finetune",)):
    from nws_avalanche.runner.sweep import expand_grid

    return expand_grid([], TINY + list(extra), list(methods), ["split-digits"], list(seeds), list(sweeps))


def test_sweep_expands_per_point_and_skips_other_methods_options(tmp_path):
    specs = grid(sweeps=["nws.init=previous,random", "lr=0.01,0.1"], seeds=[0, 3], methods=["nws", "finetune"])
    names = [s.name for s in specs]
    assert len(names) == len(set(names)) == 2 * 2 * 2 + 2 * 2  # finetune ignores nws.init
    nws = [s for s in specs if s.cfg.method == "nws"]
    assert {(s.cfg.options("nws")["init"], s.cfg.lr, s.cfg.seed) for s in nws} == {
        (i, lr, seed) for i in ("previous", "random") for lr in (0.01, 0.1) for seed in (0, 3)}
    s = next(s for s in nws if s.cfg.lr == 0.1 and s.cfg.options("nws")["init"] == "random" and s.cfg.seed == 3)
    assert s.sweep == {"nws.init": "random", "lr": 0.1}
    assert s.run_dir(tmp_path) == tmp_path / "split-digits" / "nws" / "nws.init=random,lr=0.1" / "seed3"
    ft = [s for s in specs if s.cfg.method == "finetune"]
    assert all(set(s.sweep) == {"lr"} for s in ft)


@pytest.mark.parametrize("bad,msg", [(["lr"], "key=v1,v2"), (["lr="], "at least one value"),
                                     (["lr=0.1", "lr=0.2"], "given twice"), (["lr=0.1,0.1"], "repeated value"),
                                     (["nope=1,2"], "neither a config key|unknown config key")])
def test_bad_sweeps_are_clear_errors(bad, msg):
    from nws_avalanche.common.errors import ConfigError

    with pytest.raises(ConfigError, match=msg):
        grid(sweeps=bad)


def test_local_executor_runs_a_2x2_grid_and_status_lists_it(tmp_path, capsys):
    from nws_avalanche.cli.status import collect
    from nws_avalanche.runner.launch import launch
    from reports.load import load_results
    from reports.tables import accuracy_stats

    # a random "pretrained" network: the 4 job processes skip pretraining (their imports cost enough)
    specs = grid(extra=["slurm.array_parallelism=2", "pretrained=random"])
    assert len(specs) == 4
    outcomes = launch("local", specs, tmp_path)
    assert [o.ok for o in outcomes] == [True] * 4, [o.error for o in outcomes]
    results = load_results([tmp_path])
    assert sorted((r["sweep"]["lr"], r["seed"]) for r in results) == [(0.01, 0), (0.01, 1), (0.02, 0), (0.02, 1)]
    assert all(r["config"]["lr"] == r["sweep"]["lr"] for r in results)
    st = accuracy_stats(results)
    assert list(st["lr"]) == ["0.01", "0.02"] and list(st["seeds"]) == [2, 2]  # the report groups by lr
    rows = collect(tmp_path)
    assert [r["state"] for r in rows] == ["finished"] * 4
    # a rerun of the same grid skips every finished run (no new job output)
    again = launch("inline", specs, tmp_path)
    assert [o.summary["average_accuracy"] for o in again] == [o.summary["average_accuracy"] for o in outcomes]


def test_status_shows_failures_last_lines(tmp_path, capsys):
    from nws_avalanche.cli import main
    from nws_avalanche.common.atomic import atomic_write_text
    from nws_avalanche.runner.status_file import write_status

    ok, bad = tmp_path / "b" / "m" / "seed0", tmp_path / "b" / "m" / "seed1"
    for d in (ok, bad):
        atomic_write_text(d / "config.yaml", "seed: 0\n")
    atomic_write_text(ok / "results.json", "{}")
    write_status(bad, "failed", 1, 2, "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory")
    assert main(["status", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "b/m/seed0" in out and "finished" in out and "failed" in out and "1/2" in out
    assert "RuntimeError: CUDA out of memory" in out


def test_status_marks_a_killed_run_as_died(tmp_path, monkeypatch):
    import subprocess

    from nws_avalanche.cli import status
    from nws_avalanche.common.atomic import atomic_write_text
    from nws_avalanche.runner.status_file import write_status

    gone = subprocess.Popen(["true"])
    gone.wait()
    run = tmp_path / "b" / "m" / "seed0"
    atomic_write_text(run / "config.yaml", "seed: 0\n")
    monkeypatch.setattr("os.getpid", lambda: gone.pid)  # as if that process had written "running" and been killed
    write_status(run, "running", 3, 5)
    monkeypatch.undo()
    (row,) = status.collect(tmp_path)
    assert (row["state"], row["tasks"]) == ("died", "3/5")


def _fake_sbatch(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sbatch = bindir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho Submitted batch job 4242\n")
    srun = bindir / "srun"  # submitit checks that srun exists before it builds a Slurm executor
    srun.write_text("#!/bin/sh\necho slurm 23.02\n")
    for f in (sbatch, srun):
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")


def test_slurm_submits_the_same_jobs_as_one_array(tmp_path, monkeypatch):
    from nws_avalanche.runner.launch import RunJob, SlurmOptions, launch, sbatch_script

    _fake_sbatch(tmp_path, monkeypatch)
    specs = grid(extra=["slurm.partition=gpu", "slurm.time_min=90", "slurm.gpus_per_node=1",
                        "slurm.cpus_per_task=6", "slurm.array_parallelism=2"])
    outcomes = launch("slurm", specs, tmp_path / "out")
    assert [o.summary["job_id"] for o in outcomes] == [f"4242_{i}" for i in range(4)]
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --partition=gpu", "#SBATCH --time=90",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=6"):
        assert line in script, line
    assert script == sbatch_script(specs, tmp_path / "out", SlurmOptions.from_config(specs[0].cfg.slurm))
    # the array's pickled jobs are exactly the grid's runs, requeued as resuming jobs
    pickles = sorted((tmp_path / "out" / "_submitit").rglob("4242_*_submitted.pkl"))
    assert len(pickles) == 4
    jobs = []
    for p in pickles:
        with open(p, "rb") as fh:
            jobs.append(pickle.load(fh).function)
    assert all(isinstance(j, RunJob) for j in jobs)
    assert sorted(j.spec.name for j in jobs) == sorted(s.name for s in specs)
    requeued = jobs[0].checkpoint().function
    assert requeued.spec.name == jobs[0].spec.name and requeued.overwrite is False


def test_slurm_without_sbatch_is_a_clear_error_but_dry_run_works(tmp_path, monkeypatch, capsys):
    from nws_avalanche.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no srun/sbatch here
    args = ["run", "--methods", "finetune", "--seeds", "0,1", "--out", str(tmp_path / "o"), "--launcher", "slurm",
            "--set", "slurm.array_parallelism=1", "--set", "slurm.partition=cpu"]
    assert main(args) == 2
    assert "needs Slurm's sbatch and srun" in capsys.readouterr().err
    assert main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --array=0-1%1" in out and "#SBATCH --partition=cpu" in out
    assert "split-digits/finetune/seed1" in out


def test_unknown_slurm_option_is_refused():
    from nws_avalanche.common.errors import ConfigError
    from nws_avalanche.runner.launch import SlurmOptions

    with pytest.raises(ConfigError, match="unknown slurm option.*partiton"):
        SlurmOptions.from_config({"partiton": "gpu"})
