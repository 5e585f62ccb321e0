"""PackNet (issues 4, 16): frozen old tasks, nested masks, capacity, CPG's BN chaining, decay scope and
retraining schedule, honest memory."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin

from baselines.packnet import BACKBONE_FILE
from nws_avalanche.common.errors import ConfigError
from nws_avalanche.storage.codecs import decode_ints
from nws_avalanche.storage.container import read_container
from benchmarks import to_avalanche
from tests.baseline_kit import assert_memory_is_files, cli_run, logits, tiny_bench, tiny_strategy

T = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three tasks with a large weight decay (0.1) so the optimiser's decay would show if it leaked."""
    art = tmp_path_factory.mktemp("packnet")
    bench = tiny_bench(T)
    strat, scenario = tiny_strategy("packnet", bench, "weight_decay=0.1", "packnet.retrain_epochs=1")
    history = {"logits": [], "rebuilt": [], "frozen": [], "summary": [], "bn_start": [], "bn_end": []}
    strat.plugins.append(_BNAtStart(history["bn_start"]))
    for t, exp in enumerate(scenario.train_stream):
        strat.train(exp)
        history["bn_end"].append(_bn(strat.model.state_dict()))
        strat.export_task(t, art)
        history["summary"].append(strat.task_summary(t))
        history["logits"].append([logits(strat.rebuild_task(j, art), bench, j) for j in range(t + 1)])
        history["rebuilt"].append({j: strat.rebuild_task(j, art).state_dict() for j in range(t + 1)})
        history["frozen"].append({n: (m.weight.detach().clone(), m.owner.clone()) for n, m in strat.owned_layers()})
    return strat, bench, art, history


def _bn(state):
    return {k: v.clone() for k, v in state.items() if ".bn" in k or k.startswith("bn") or "downsample.1" in k}


class _BNAtStart(SupervisedPlugin):
    """Records the BatchNorm state when a task's first (not the retraining) pass starts."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def before_training_epoch(self, strategy, **kw):
        if strategy.phase == "train" and strategy.clock.train_exp_epochs == 0:
            self.out.append(_bn(strategy.model.state_dict()))


def test_batchnorm_chained_from_the_previous_task(trained):
    strat, _, _, h = trained
    assert len(h["bn_start"]) == T and h["bn_start"][0]
    pre = _bn(strat.assets.pretrained_state)
    assert all(torch.equal(h["bn_start"][0][k], pre[k]) for k in pre)
    for t in range(1, T):
        start, prev = h["bn_start"][t], h["bn_end"][t - 1]
        assert all(torch.equal(start[k], prev[k]) for k in prev), f"task {t} did not start from task {t - 1}'s BN"
        assert any(not torch.equal(start[k], pre[k]) for k in pre if k.endswith("running_mean"))


def test_hand_weight_decay_on_current_conv_weights_only():
    strat, _ = tiny_strategy("packnet", tiny_bench(2), "weight_decay=0.5", "momentum=0", "lr=0.1")
    strat.prepare_task(0, 2)
    with torch.no_grad():  # task 0 owns half of every layer, task 1 (current) the rest
        for _, m in strat.owned_layers():
            m.owner.view(-1)[::2] = 1
            m.owner.view(-1)[1::2] = 2
    strat.current = 2
    strat.make_optimizer()
    before = {k: v.detach().clone() for k, v in strat.model.named_parameters()}
    for p in strat.model.parameters():
        p.grad = torch.zeros_like(p)
    strat.optimizer_step()
    convs = {f"{n}.weight": m for n, m in strat.owned_layers()}
    for k, p in strat.model.named_parameters():
        if k in convs:
            mine = convs[k].owner == 2
            torch.testing.assert_close(p.detach()[mine], before[k][mine] * (1 - 0.1 * 0.5), rtol=1e-6, atol=0)
            assert torch.equal(p.detach()[~mine], before[k][~mine]), f"{k}: task 0's weights decayed"
        else:
            assert torch.equal(p.detach(), before[k]), f"{k} (BatchNorm or head) was decayed"


class _LR(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.lrs = {"train": [], "retrain": []}

    def before_training_epoch(self, strategy, **kw):
        self.lrs[strategy.phase].append(strategy.optimizer.param_groups[0]["lr"])


def test_pruning_removes_every_weight_tied_at_the_cutoff():
    """CPG's _pruning_mask: all current weights with |w| <= the round(0.6 n)-th smallest go, ties included
    (here 70 % exact zeros: all of them go, not 60 %); older tasks' weights are never touched."""
    strat, _ = tiny_strategy("packnet", tiny_bench(2))
    strat.prepare_task(0, 2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, m in strat.owned_layers():
            w = torch.randn(m.weight.shape, generator=gen)
            w.view(-1)[torch.randperm(w.numel(), generator=gen)[: int(0.7 * w.numel())]] = 0.0
            m.weight.copy_(w)
            m.owner.view(-1)[::5] = 7  # another task's weights, some of them zero too
    before = {n: (m.weight.detach().clone(), m.owner.clone()) for n, m in strat.owned_layers()}
    strat.prune_current()
    for name, m in strat.owned_layers():
        w, owner = before[name]
        mine = owner == strat.current
        mags = sorted(float(v) for v in w[mine].abs())
        cutoff = mags[round(0.6 * len(mags)) - 1]  # brute force of the reference rule
        expected = mine & (w.abs() <= cutoff)
        assert torch.equal(m.owner == 0, expected), name
        assert int(expected.sum()) > round(0.6 * int(mine.sum()))  # the ties went too
        assert torch.equal(m.owner[owner == 7], owner[owner == 7])


@pytest.mark.parametrize("retrain, drop_after", [(6, 5), (30, 25), (2, 2), (1, 1)])
def test_retraining_lr_drops_at_25_of_30_scaled(retrain, drop_after):
    strat, _ = tiny_strategy("packnet", tiny_bench(1), "lr=0.1", "epochs=2", "milestones=[1]",
                             f"packnet.retrain_epochs={retrain}")
    assert strat.retrain_milestones() == ([drop_after] if drop_after < retrain else [])
    if retrain != 6:
        return  # training runs only for the first case: the milestone arithmetic is the rest
    rec = _LR()
    strat.plugins.append(rec)
    strat.train(to_avalanche(tiny_bench(1)).train_stream[0])
    assert rec.lrs["train"] == pytest.approx([0.1, 0.01])  # the run's own schedule is untouched
    assert rec.lrs["retrain"] == pytest.approx([0.01] * 5 + [0.001])


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


def test_owner_ids_entropy_coded_round_trip(trained):
    strat, _, art, h = trained
    header, blobs = read_container(art / BACKBONE_FILE)
    assert header["codec"] == "rans16"
    layers = dict(strat.owned_layers())
    for layer in header["layers"]:
        n = math.prod(layer["shape"])
        own = decode_ints(blobs[f"own/{layer['name']}"], n, T + 1, header["codec"])
        assert np.array_equal(own, layers[layer["name"]].owner.numpy().reshape(-1))
        # never more than the old bit-packing plus the codec's one mode byte
        assert len(blobs[f"own/{layer['name']}"]) <= math.ceil(n * math.ceil(math.log2(T + 1)) / 8) + 1
        assert len(blobs[f"w/{layer['name']}"]) == 4 * n
    for t, summary in enumerate(h["summary"]):
        for name, free in summary["free_fraction"].items():
            assert abs(free - 0.6 ** (t + 1)) <= (t + 1) / layers[name].weight.numel() + 1e-9


def test_bad_prune_ratio_is_a_config_error():
    with pytest.raises(ConfigError, match="prune_ratio"):
        tiny_strategy("packnet", tiny_bench(1), "packnet.prune_ratio=1.5")


def test_cli_run_memory_equals_files(tmp_path):
    res = cli_run("packnet", tmp_path)
    assert_memory_is_files(res, tmp_path, "packnet")
    assert res["memory_mib"]["files"]["assist"] == [BACKBONE_FILE]
