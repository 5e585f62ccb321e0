"""KSM (issue 4): frozen backbone, binary masks in the forward pass, mask gradients, memory."""
from __future__ import annotations

import math

import pytest
import torch

from baselines.ksm import BACKBONE_FILE, softmax_trick
from tests.baseline_kit import assert_memory_is_files, cli_run, logits, tiny_bench, tiny_strategy
from nws_avalanche.artifact import load_state_artifact

T = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    art = tmp_path_factory.mktemp("ksm")
    bench = tiny_bench(T)
    strat, scenario = tiny_strategy("ksm", bench)
    seen = {"train_binary": [], "backbone_bytes": [], "weights": [], "logits": []}

    def hook(module, inputs, output):
        if module.training:
            seen["train_binary"].append(module.binary().detach())

    for _, m in strat.mask_layers():
        m.register_forward_hook(hook)
    for t, exp in enumerate(scenario.train_stream):
        strat.train(exp)
        strat.export_task(t, art)
        seen["backbone_bytes"].append((art / BACKBONE_FILE).read_bytes())
        seen["weights"].append({n: m.weight.detach().clone() for n, m in strat.mask_layers()})
        seen["logits"].append(logits(strat.model, bench, t))
    return strat, bench, art, seen


def test_backbone_unchanged_after_every_task(trained):
    strat, _, _, seen = trained
    pre = strat.assets.pretrained_state
    for weights in seen["weights"]:
        for name, w in weights.items():
            assert torch.equal(w, pre[f"{name}.weight"]), f"{name} moved"
    assert all(b == seen["backbone_bytes"][0] for b in seen["backbone_bytes"])


def test_masks_binary_in_forward_pass(trained):
    strat, _, _, seen = trained
    assert seen["train_binary"], "no training forward was seen"
    for b in seen["train_binary"]:
        assert float(torch.minimum(b, 1 - b).max()) < 1e-3  # hard up to exp(-|m|/tau)
    strat.model.eval()
    for _, m in strat.mask_layers():
        assert set(m.binary().unique().tolist()) <= {0.0, 1.0}


def test_gradients_reach_real_valued_masks(trained):
    strat, bench, _, _ = trained
    model = strat.model.train()
    x = torch.stack([bench.tasks[0].train[i][0] for i in range(8)])
    y = torch.stack([bench.tasks[0].train[i][1] for i in range(8)])
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for name, m in strat.mask_layers():
        assert m.mask_real.grad is not None and float(m.mask_real.grad.abs().sum()) > 0, name
        assert m.mask_scale.grad is not None and float(m.mask_scale.grad.abs().sum()) > 0, name
        assert m.weight.grad is None  # the backbone is frozen
    model.zero_grad()
    # the softmax trick is differentiable on its own too (no straight-through)
    m = torch.tensor([0.002, -0.001], requires_grad=True)
    softmax_trick(m, 1e-3).sum().backward()
    assert float(m.grad.abs().min()) > 0


def test_masks_trained_and_stored_as_bits_and_floats(trained):
    strat, bench, art, seen = trained
    moved = any(not torch.equal(m.mask_real.detach(), torch.full_like(m.mask_real, 1e-2))
                for _, m in strat.mask_layers())
    assert moved
    header, state, blobs = load_state_artifact(art / f"task{T - 1:03d}.ksm", "ksm-task")
    for layer in header["layers"]:
        n = math.prod(layer["shape"])
        assert len(blobs[f"bin/{layer['name']}"]) == math.ceil(n / 8)
        assert state[f"{layer['name']}.mask_scale"].dtype == torch.float32
        assert f"{layer['name']}.weight" not in state
    rebuilt = strat.rebuild_task(T - 1, art)
    assert torch.equal(logits(rebuilt, bench, T - 1), seen["logits"][-1])


def test_cli_run_memory_equals_files(tmp_path):
    res = cli_run("ksm", tmp_path)
    assert_memory_is_files(res, tmp_path, "ksm")
    assert res["memory_mib"]["files"]["assist"] == [BACKBONE_FILE]
