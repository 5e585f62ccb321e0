"""Fuzzing every untrusted file kind (``tests/fuzz_worker.py``): mutants of valid task artifacts, pool
files, cached pretrained networks, torch state_dicts, the authors' checkpoints, results/progress/status
JSON, YAML configs, CIFAR pickles and images must read correctly or fail with the project's one-line
error, in a child process under a memory cap (RLIMIT_AS: setup + 2 GiB) with a per-example time bound.

The normal suite runs a few examples per kind; the long mode runs many:
``NWS_FUZZ_EXAMPLES=3000 nice -n 10 python -m pytest -m fuzz tests/test_fuzz_inputs.py``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KINDS = ["task", "pools", "pretrained", "state_dict", "authors", "results", "progress", "status", "config", "cifar",
         "image"]


def run_worker(examples: int, seed: int, timeout: int) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz_worker", str(examples), str(seed), *KINDS], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout[-3000:] + proc.stderr[-6000:])
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["kind"] for r in rows] == KINDS and all(r["examples"] == examples for r in rows), rows
    return rows


def test_fuzz_every_kind_briefly():
    run_worker(examples=8, seed=0, timeout=600)


@pytest.mark.fuzz
@pytest.mark.skipif(not os.environ.get("NWS_FUZZ_EXAMPLES"), reason="long fuzzing: set NWS_FUZZ_EXAMPLES")
def test_fuzz_every_kind_long():
    n = int(os.environ["NWS_FUZZ_EXAMPLES"])
    rows = run_worker(examples=n, seed=int(os.environ.get("NWS_FUZZ_SEED", "1")), timeout=24 * 3600)
    print("\n" + "\n".join(json.dumps(r) for r in rows))
