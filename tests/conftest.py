"""Shared fixtures: tiny configs and one tiny finished run reused by several tests."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="device of the device-parametrised tests (the `device` fixture): cpu, cuda or cuda:N")


def pytest_configure(config):
    dev = config.getoption("--device")
    if dev != "cpu":
        import torch

        try:
            d = torch.device(dev)
        except (RuntimeError, ValueError):
            raise pytest.UsageError(f"--device {dev!r} is not a torch device; use cpu, cuda or cuda:N") from None
        if d.type == "cuda" and not torch.cuda.is_available():
            raise pytest.UsageError(f"--device {dev}: this machine has no usable CUDA GPU")


@pytest.fixture(scope="session")
def device(request):
    """The device under test (``pytest --device cuda``; default cpu): tests taking this fixture
    check that the plugin, the task state, the searches and the strategies compute the same on it."""
    import torch

    return torch.device(request.config.getoption("--device"))


TINY = ["arch=resnet-tiny", "epochs=2", "pretrain_epochs=3", "pool_size=16", "benchmark_options.tasks=2",
        "batch_size=32"]


def tiny_config(**fixed):
    from nws_avalanche.config.run_config import build_config

    return build_config([], TINY, **fixed)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """The quickstart path through the CLI (run + report) on a reduced config: NWS and Finetune
    on split-digits with 2 tasks."""
    import json

    from nws_avalanche.cli import main

    out = tmp_path_factory.mktemp("runs")
    args = ["run", "--methods", "nws,finetune", "--out", str(out)]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    assert (out / "report" / "report.md").is_file()
    res = {m: json.loads((out / "split-digits" / m / "seed0" / "results.json").read_text())
           for m in ("nws", "finetune")}
    return out, res


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for tests of many tiny ops (and their subprocesses' sharing of the cores)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
