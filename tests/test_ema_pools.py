"""EMA vector quantisation of the pools: the update formula, the commitment term, revival of dead
entries, float32 statistics, and a clean stop on a non-finite loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nws_avalanche.method.layers import NWSConv2d, commitment_loss
from nws_avalanche.pools.vq_ema import EMAConfig, PoolEMA


pytestmark = pytest.mark.usefixtures("one_thread")


def one_layer(pool, kernels):
    """A 1x1 NWS conv with d = 1: each scalar weight is one kernel vector."""
    layer = NWSConv2d(1, len(kernels), 1, torch.tensor(pool).reshape(-1, 1))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(kernels).reshape(-1, 1, 1, 1))
    return nn.Sequential(layer), layer


def test_update_matches_formula_by_hand():
    # pool {0, 10}; kernels 1, 2 -> entry 0, kernel 9 -> entry 1; n = 3 kernels, K = 2
    model, layer = one_layer([0.0, 10.0], [1.0, 2.0, 9.0])
    decay, eps = 0.9, 1e-5
    ema = PoolEMA(model, EMAConfig(decay=decay, eps=eps, revive_fraction=0.0))
    # start: N_k = n/K = 1.5, m_k = 1.5 * P_k
    used = ema.update()
    N0 = 0.9 * 1.5 + 0.1 * 2
    N1 = 0.9 * 1.5 + 0.1 * 1
    m0 = 0.9 * 1.5 * 0.0 + 0.1 * (1.0 + 2.0)
    m1 = 0.9 * 1.5 * 10.0 + 0.1 * 9.0
    n = N0 + N1
    P0 = m0 / ((N0 + eps) / (n + 2 * eps) * n)
    P1 = m1 / ((N1 + eps) / (n + 2 * eps) * n)
    assert used == {"0": 2}
    torch.testing.assert_close(ema.stats["0"].N, torch.tensor([N0, N1]))
    torch.testing.assert_close(layer.pool.flatten(), torch.tensor([P0, P1]))
    # the search follows the new pool (its cached norms were refreshed)
    assert layer.search(torch.tensor([[P1 - 0.01]])).item() == 1


def test_zero_prior_is_the_authors_initial_state_float64():
    """prior=zero restates Quantize.__init__/update: cluster_size 0, embed_avg = the pool, so the first
    update divides an entry nobody chose by ~eps (here entry 0 jumps ~1e5 x away)."""
    model, layer = one_layer([1.0, 10.0, 3.0], [2.5, 3.5, 9.0])
    decay, eps = 0.99, 1e-5
    ema = PoolEMA(model, EMAConfig(decay=decay, eps=eps, revive_fraction=0.0, prior="zero"))
    ema.update()  # kernels 2.5, 3.5 -> entry 2 (pool 3), kernel 9 -> entry 1 (pool 10), entry 0 unused
    f64 = dict(dtype=torch.float64)
    cluster = torch.zeros(3, **f64) * decay + (1 - decay) * torch.tensor([0.0, 1.0, 2.0], **f64)
    avg = torch.tensor([1.0, 10.0, 3.0], **f64) * decay + (1 - decay) * torch.tensor([0.0, 9.0, 6.0], **f64)
    n = cluster.sum()
    want = avg / ((cluster + eps) / (n + 3 * eps) * n)
    torch.testing.assert_close(layer.pool.flatten().double(), want, rtol=1e-5, atol=0)
    assert float(layer.pool.flatten()[0]) > 1e4  # 0.99 * 1 / (~1e-5): the authors' jump
    with pytest.raises(ValueError, match="prior"):
        EMAConfig(prior="none")


@pytest.mark.parametrize("stats", ["forward", "post_step"])
def test_statistics_come_from_the_forward_pass_or_after_the_step(stats):
    """forward (the authors'): the kernels and assignment of the forward pass, accumulated over the
    passes since the last update; post_step: the kernels after the step, searched again."""
    model, layer = one_layer([0.0, 10.0], [1.0, 2.0, 9.0])
    decay, eps = 0.9, 1e-5
    ema = PoolEMA(model, EMAConfig(decay=decay, eps=eps, revive_fraction=0.0, stats=stats))
    model.train()
    model(torch.ones(1, 1, 1, 1))  # assigns 1, 2 -> entry 0 and 9 -> entry 1
    model(torch.ones(1, 1, 1, 1))  # a second pass before the update: counted twice, as theirs
    with torch.no_grad():  # the optimiser step moves kernel 1 to 6, now nearer entry 1
        layer.weight.view(-1)[0] = 6.0
    ema.update()
    if stats == "forward":
        counts, sums = [4.0, 2.0], [2 * (1.0 + 2.0), 2 * 9.0]
    else:
        counts, sums = [1.0, 2.0], [2.0, 6.0 + 9.0]
    N = torch.tensor([decay * 1.5 + (1 - decay) * c for c in counts])
    m = torch.tensor([decay * 1.5 * p + (1 - decay) * s for p, s in zip([0.0, 10.0], sums)])
    n = N.sum()
    torch.testing.assert_close(ema.stats["0"].N, N)
    torch.testing.assert_close(layer.pool.flatten(), m / ((N + eps) / (n + 2 * eps) * n))
    model.eval()
    model(torch.ones(1, 1, 1, 1))  # eval passes are not statistics
    assert ema.stats["0"].acc_n is None


def test_pretraining_lr_drops_once_at_100_of_160_epochs():
    """The authors' pretrain_KP.py (SGD): MILESTONES = [100] when epochs == 160, else int(0.5 E), int(0.8 E)."""
    from nws_avalanche.pools.pretrain import PretrainConfig, lr_milestones, lr_schedule

    assert lr_milestones(160) == [100] and lr_milestones(16) == [8, 12] and lr_milestones(100) == [50, 80]
    assert lr_milestones(7) == [3, 5] and lr_milestones(1) == []
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = lr_schedule(PretrainConfig(epochs=160), opt)
    lrs = []
    for _ in range(160):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:100] == [0.01] * 100 and all(abs(x - 0.001) < 1e-12 for x in lrs[100:])
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    assert isinstance(lr_schedule(PretrainConfig(epochs=10, schedule="cosine"), opt2),
                      torch.optim.lr_scheduler.CosineAnnealingLR)


def test_ema_converges_to_cluster_means():
    model, layer = one_layer([0.0, 10.0], [1.0, 2.0, 9.0])
    ema = PoolEMA(model, EMAConfig(decay=0.5, revive_fraction=0.0))
    for _ in range(60):
        ema.update()
    torch.testing.assert_close(layer.pool.flatten(), torch.tensor([1.5, 9.0]), rtol=1e-4, atol=1e-4)


def test_commitment_term_is_present_and_trains_the_kernels():
    torch.manual_seed(0)
    layer = NWSConv2d(4, 6, 3, torch.randn(8, 9), padding=1)
    model = nn.Sequential(layer)
    model.train()
    model(torch.randn(2, 4, 5, 5))
    c = commitment_loss(model)
    q = layer.pool[layer.search(layer.vectors().detach())]
    expected = (q - layer.vectors()).pow(2).mean()  # per weight, as the authors' layer
    assert float(c.detach()) > 0
    torch.testing.assert_close(c, expected)
    c.backward()
    # d/dw mean (q - w)^2 = 2 (w - q) / (number of weights): the commitment pulls kernels to their pool vectors
    torch.testing.assert_close(layer.weight.grad.reshape(-1, 9), 2 * (layer.vectors() - q).detach() / layer.weight.numel())


def test_pretraining_loss_includes_commitment(tmp_path, monkeypatch):
    """The loss pretraining backpropagates is CE + beta * commitment (beta=0 vs beta>0 differ)."""
    from tests.test_distributed_pools import make_folder, tiny_cfg
    from nws_avalanche.pools.pretrain import pretrain

    data = make_folder(tmp_path / "imgs", per_class=4)
    # three steps: the statistics of a step come from its forward pass, so the first update sees
    # the same (initial) kernels in both runs; the later ones see kernels the commitment moved
    a = pretrain(tiny_cfg(data, tmp_path / "a", epochs=1, beta=0.0, batch_size=4))
    b = pretrain(tiny_cfg(data, tmp_path / "b", epochs=1, beta=5.0, batch_size=4))
    assert b["history"][0]["commitment"] > 0
    assert any(not torch.equal(a["pools"][k], b["pools"][k]) for k in a["pools"])


def test_revival_prevents_dead_entries():
    torch.manual_seed(0)
    kernels = torch.randn(400)
    # entries 2..7 sit far from every kernel: without revival they never get a kernel
    pool = [-0.5, 0.5, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]

    def run(revive):
        model, layer = one_layer(pool, kernels.tolist())
        ema = PoolEMA(model, EMAConfig(decay=0.9, revive_fraction=revive))
        for _ in range(80):
            used = ema.update()
        return used["0"], ema

    used_without, _ = run(0.0)
    used_with, ema = run(0.03)
    assert used_without == 2
    assert used_with == 8  # every entry holds kernels again
    assert ema.revived["0"] >= 6
    assert (ema.stats["0"].N >= 0.03 * 400 / 8).all()


def test_statistics_stay_float32_under_autocast():
    torch.manual_seed(0)
    layer = NWSConv2d(3, 4, 3, torch.randn(16, 9))
    ema = PoolEMA(nn.Sequential(layer), EMAConfig())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ema.update()
    assert layer.pool.dtype == torch.float32
    assert ema.stats["0"].N.dtype == torch.float32 and ema.stats["0"].m.dtype == torch.float32


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from tests.test_distributed_pools import make_folder, tiny_cfg
    from nws_avalanche.pools import pretrain as P

    data = make_folder(tmp_path / "imgs", per_class=4)
    P.pretrain(tiny_cfg(data, tmp_path / "o", epochs=3, stop_after=1))
    ckpt = tmp_path / "o" / "checkpoint.pt"
    before = ckpt.read_bytes()
    real = P.F.cross_entropy
    monkeypatch.setattr(P.F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(P.TrainingDiverged, match="non-finite loss at epoch 2.*checkpoint.pt.*intact"):
        P.pretrain(tiny_cfg(data, tmp_path / "o", epochs=3))
    assert ckpt.read_bytes() == before
    assert not (tmp_path / "o" / "pools.nwsp").exists()


def test_mixed_precision_pretraining_keeps_float32_pools(tmp_path):
    from tests.test_distributed_pools import make_folder, tiny_cfg
    from nws_avalanche.pools.pretrain import pretrain

    data = make_folder(tmp_path / "imgs", per_class=4)
    out = pretrain(tiny_cfg(data, tmp_path / "o", epochs=1, amp="bf16"))
    assert out["finished"]
    for name, pool in out["pools"].items():
        assert pool.dtype == torch.float32 and torch.isfinite(pool).all(), name
