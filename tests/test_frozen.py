"""Frozen control (issue 16): backbone never moves, only BatchNorm and head train, memory = files,
rebuilt models equal the trained ones; on digits-transfer, Finetune beats it by a clear margin."""
from __future__ import annotations

import pytest
import torch

from baselines.frozen import BACKBONE_FILE
from tests.baseline_kit import assert_memory_is_files, cli_run, logits, tiny_bench, tiny_strategy

T = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    art = tmp_path_factory.mktemp("frozen")
    bench = tiny_bench(T)
    strat, scenario = tiny_strategy("frozen", bench)
    seen = {"state": [], "logits": [], "backbone": []}
    for t, exp in enumerate(scenario.train_stream):
        strat.train(exp)
        strat.export_task(t, art)
        seen["state"].append({k: v.detach().clone() for k, v in strat.model.state_dict().items()})
        seen["logits"].append(logits(strat.model, bench, t))
        seen["backbone"].append((art / BACKBONE_FILE).read_bytes())
    return strat, bench, art, seen


def test_only_batchnorm_and_head_train(trained):
    strat, _, _, seen = trained
    pre = strat.assets.pretrained_state
    for state in seen["state"]:
        convs = [k for k in state if k.endswith(".weight") and state[k].dim() == 4]
        assert convs
        for k in convs:
            assert torch.equal(state[k], pre[k]), f"{k} moved"
        bn = [k for k in state if k.endswith("running_mean")]
        assert any(not torch.equal(state[k], pre[k]) for k in bn), "BatchNorm statistics never moved"
        assert any(not torch.equal(state[k.replace("running_mean", "weight")], pre[k.replace("running_mean", "weight")])
                   for k in bn), "BatchNorm parameters never trained"
    assert seen["backbone"][0] == seen["backbone"][1]


def test_each_task_starts_from_the_pretrained_batchnorm(trained):
    strat, _, _, _ = trained
    strat.prepare_task(1, 2)
    state = strat.model.state_dict()
    for k, v in strat.assets.pretrained_state.items():
        if k.startswith("bn1.") or ".bn" in k:
            assert torch.equal(state[k], v), k


def test_rebuilt_models_give_the_trained_logits(trained):
    strat, bench, art, seen = trained
    for t in range(T):
        assert torch.equal(logits(strat.rebuild_task(t, art), bench, t), seen["logits"][t])


def test_memory_is_the_files_written(tmp_path):
    res = cli_run("frozen", tmp_path)
    assert_memory_is_files(res, tmp_path, "frozen")
    assert res["memory_mib"]["files"]["assist"] == [BACKBONE_FILE]
    # a task stores BatchNorm and head only: far less than the shared backbone
    assert max(res["memory_mib"]["bytes"]["per_task"]) < res["memory_mib"]["bytes"]["assist"] / 5
    assert res["memory_mib"]["paper"]["total"] > 0  # the paper's accounting of the same files
