"""A run's numbers depend on its config alone: the thread counts are the run's (``threads``), not
the shell's ``OMP_NUM_THREADS``, nor affected by a busy neighbour; and they are recorded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env.update(env_extra, PYTHONPATH=str(ROOT), WANDB_MODE="disabled")
    args = [sys.executable, "-m", "nws_avalanche", "run", "--methods", "nws", "--out", str(out), "--no-report"]
    for item in TINY + ["pretrain_epochs=1", "epochs=1"]:  # one epoch already changes bytes with the threads
        args += ["--set", item]
    done = subprocess.run(args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((out / "split-digits" / "nws" / "seed0" / "results.json").read_text())
    # the cached pretrained network and pools, byte for byte
    assist = {p.name: p.read_bytes() for p in sorted((out / "split-digits" / "_assist").iterdir())
              if p.suffix in (".nwsw", ".nwsp")}
    return {"acc": res["accuracy_matrix"], "sha": res["artifact_sha256"], "assist": assist,
            "env": res["environment"]}


def _busy() -> subprocess.Popen:
    """A neighbour that keeps a CPU busy while the run works."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def test_same_bytes_whatever_the_shell_says(tmp_path):
    plain = _run(tmp_path / "plain", {})
    one = _run(tmp_path / "omp1", {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    busy = _busy()
    try:
        loaded = _run(tmp_path / "busy", {"OMP_NUM_THREADS": "1"})
    finally:
        busy.kill()
        busy.wait()
    assert plain["assist"] and plain["sha"]
    for other in (one, loaded):
        assert other["acc"] == plain["acc"]
        assert other["sha"] == plain["sha"]
        assert other["assist"] == plain["assist"]
    # what ran is recorded: the run's setting, not the shell's
    assert plain["env"]["threads"]["torch_intra_op"] == one["env"]["threads"]["torch_intra_op"] == 2
    assert one["env"]["env"]["OMP_NUM_THREADS"] == "1"
    assert plain["env"]["cpu"]["torch_capability"] and plain["env"]["versions"]["torch"]


def test_run_threads_applied_and_restored():
    # in a fresh interpreter: thread pools other tests of the suite started must not decide it
    script = """
import torch
from threadpoolctl import threadpool_info
from nws_avalanche.runner.threads import run_threads
before = torch.get_num_threads()
target = 1 if before != 1 else 2
with run_threads(target):
    assert torch.get_num_threads() == target
    assert all(p["num_threads"] == target for p in threadpool_info()), threadpool_info()
assert torch.get_num_threads() == before
print("ok")
"""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_threads_is_a_checked_setting():
    from nws_avalanche.common.errors import ConfigError
    from nws_avalanche.config.run_config import build_config

    assert build_config([], []).threads == 2
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        build_config([], ["threads=0"]).validate()
