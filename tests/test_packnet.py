"""PackNet (issue 4): frozen old tasks, nested masks, capacity, decay, honest memory."""
from __future__ import annotations

import math

import pytest
import torch

from baselines.packnet import BACKBONE_FILE
from nws_avalanche.container import read_container
from nws_avalanche.errors import ConfigError
from tests.baseline_kit import assert_memory_is_files, cli_run, logits, tiny_bench, tiny_strategy

T = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three tasks with a large weight decay (0.1) so the optimiser's decay would show if it leaked."""
    art = tmp_path_factory.mktemp("packnet")
    bench = tiny_bench(T)
    strat, scenario = tiny_strategy("packnet", bench, "weight_decay=0.1", "packnet.retrain_epochs=1")
    history = {"logits": [], "rebuilt": [], "frozen": [], "summary": []}
    for t, exp in enumerate(scenario.train_stream):
        strat.train(exp)
        strat.export_task(t, art)
        history["summary"].append(strat.task_summary(t))
        history["logits"].append([logits(strat.rebuild_task(j, art), bench, j) for j in range(t + 1)])
        history["rebuilt"].append({j: strat.rebuild_task(j, art).state_dict() for j in range(t + 1)})
        history["frozen"].append({n: (m.weight.detach().clone(), m.owner.clone()) for n, m in strat.owned_layers()})
    return strat, bench, art, history


def test_old_tasks_logits_bit_identical_after_later_tasks(trained):
    _, _, _, h = trained
    for t in range(1, T):
        for j in range(t):
            assert torch.equal(h["logits"][t][j], h["logits"][j][j]), f"task {j} changed after task {t}"


def test_rebuilt_matches_the_trained_model(trained):
    strat, bench, art, _ = trained
    ref = logits(strat.model, bench, T - 1)
    assert torch.equal(ref, logits(strat.rebuild_task(T - 1, art), bench, T - 1))


def test_masks_nested(trained):
    strat, _, _, h = trained
    final = h["rebuilt"][-1]
    for name, _ in strat.owned_layers():
        for j in range(T - 1):
            wj, wn = final[j][f"{name}.weight"], final[j + 1][f"{name}.weight"]
            used = wj != 0
            assert torch.equal(wn[used], wj[used]), f"{name}: task {j}'s weights are not inside task {j + 1}'s"
            assert int((wn != 0).sum()) > int(used.sum())


def test_frozen_weights_untouched_by_weight_decay(trained):
    strat, _, _, h = trained
    for t in range(T - 1):
        for name, (w_then, own_then) in h["frozen"][t].items():
            w_now, own_now = h["frozen"][-1][name]
            done = (own_then > 0) & (own_then <= t + 1)
            assert torch.equal(own_now[done], own_then[done])
            assert torch.equal(w_now[done], w_then[done]), f"{name}: weights of tasks <= {t} moved"
    assert all(g["weight_decay"] == 0 for g in strat.optimizer.param_groups)


def test_capacity_follows_geometric_law(trained):
    strat, _, _, h = trained
    sizes = {n: m.weight.numel() for n, m in strat.owned_layers()}
    for t, summary in enumerate(h["summary"]):
        for name, frac in summary["owned_fraction"].items():
            expected = 0.4 * 0.6 ** t
            assert abs(frac - expected) <= (t + 1) / sizes[name] + 1e-9, (name, t, frac, expected)
    # what is still free is 0.6^T of each layer, and free weights are zero
    for name, m in strat.owned_layers():
        free = m.owner == 0
        assert abs(float(free.float().mean()) - 0.6 ** T) <= T / sizes[name] + 1e-9
        assert float(m.weight.detach()[free].abs().sum()) == 0.0


def test_owner_masks_packed_at_log2_tasks_plus_one_bits(trained):
    _, _, art, _ = trained
    header, blobs = read_container(art / BACKBONE_FILE)
    bits = math.ceil(math.log2(T + 1))
    assert header["owner_bits"] == bits
    for layer in header["layers"]:
        n = math.prod(layer["shape"])
        assert len(blobs[f"own/{layer['name']}"]) == math.ceil(n * bits / 8)
        assert len(blobs[f"w/{layer['name']}"]) == 4 * n


def test_bad_prune_ratio_is_a_config_error():
    with pytest.raises(ConfigError, match="prune_ratio"):
        tiny_strategy("packnet", tiny_bench(1), "packnet.prune_ratio=1.5")


def test_cli_run_memory_equals_files(tmp_path):
    res = cli_run("packnet", tmp_path)
    assert_memory_is_files(res, tmp_path, "packnet")
    assert res["memory_mib"]["files"]["assist"] == [BACKBONE_FILE]
