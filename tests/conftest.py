"""Shared fixtures: tiny configs and one tiny finished run reused by several tests."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY = ["arch=resnet-tiny", "epochs=2", "pretrain_epochs=3", "pool_size=16", "benchmark_options.tasks=2",
        "batch_size=32"]


def tiny_config(**fixed):
    from nws_avalanche.config import build_config

    return build_config([], TINY, **fixed)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """One finished tiny NWS run and one Finetune run on split-digits (2 tasks)."""
    from nws_avalanche.runner import run_single

    out = tmp_path_factory.mktemp("runs")
    res = {m: run_single(tiny_config(method=m), out, progress=False) for m in ("nws", "finetune")}
    return out, res
