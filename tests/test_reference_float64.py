"""Our NWS layers against an independent float64 statement of the authors' formulas.

The reference below is written from the formulas of the authors' code
(JianJiangKCL/NeuralWeightSearch, ``models/quantizer.py`` and ``models/NWS.py``), not from ours:
each kernel (a row of ``weight`` cut into vectors of length ``k*k``) is replaced by its nearest
pool vector in L2 (first index on ties), the forward pass uses ``w + sg(q - w)``, and the loss is
``CE + beta * sum_l mean((sg(q_l) - w_l)^2)`` with the mean over every weight of the layer.
Ten SGD steps of both must pick the same indices at every step and keep the same weights.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nws_avalanche.method.layers import NWSConv2d, NWSLinear, commitment_loss
from nws_avalanche.method.search import SEARCHES

BETA, LR, STEPS = 0.5, 0.2, 10


# -- the reference (float64, plain tensors) ------------------------------------------------------
def ref_quantise(w: torch.Tensor, pool: torch.Tensor):
    d = pool.shape[1]
    flat = w.reshape(-1, d)
    dist = (flat.detach()[:, None, :] - pool[None, :, :]).pow(2).sum(-1)
    idx = dist.argmin(1)  # torch.argmin: the first minimum on ties
    q = pool[idx].view_as(w)
    return w + (q - w).detach(), (q.detach() - w).pow(2).mean(), idx


def ref_forward(params: dict, pools: dict, x: torch.Tensor):
    w1, c1, i1 = ref_quantise(params["conv1"], pools["conv1"])
    h = F.relu(F.conv2d(x, w1, padding=1))
    w2, c2, i2 = ref_quantise(params["conv2"], pools["conv2"])
    h = F.relu(F.conv2d(h, w2))
    h = h.mean((2, 3))
    w3, c3, i3 = ref_quantise(params["fc"], pools["fc"])
    return F.linear(h, w3.view(w3.shape[0], -1)), c1 + c2 + c3, [i1, i2, i3]


# -- the same net from this project's layers ---------------------------------------------------------
class Net(nn.Module):
    def __init__(self, pools, search):
        super().__init__()
        f = SEARCHES.get(search)
        self.conv1 = NWSConv2d(2, 6, 3, pools["conv1"], padding=1, search_factory=f)
        self.conv2 = NWSConv2d(6, 8, 1, pools["conv2"], search_factory=f)
        self.fc = NWSLinear(8, 3, pools["fc"], search_factory=f)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("search", ["exact", "incremental"])
def test_ten_sgd_steps_match_the_float64_reference(search):
    g = torch.Generator().manual_seed(7)
    pools = {"conv1": torch.randn(32, 9, generator=g) * 0.3, "conv2": torch.randn(16, 1, generator=g) * 0.4,
             "fc": torch.randn(16, 1, generator=g) * 0.4}
    net = Net(pools, search).double()
    with torch.no_grad():
        for m in (net.conv1, net.conv2, net.fc):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64) * 0.35)
    ref = {k: getattr(net, k).weight.detach().clone().requires_grad_() for k in pools}
    ref_pools = {k: getattr(net, k).pool.detach().clone() for k in pools}
    assert all(p.dtype == torch.float64 for p in ref_pools.values())
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    ref_opt = torch.optim.SGD(list(ref.values()), lr=LR, momentum=0.9)
    batches = [(torch.randn(8, 2, 5, 5, generator=g, dtype=torch.float64), torch.randint(3, (8,), generator=g))
               for _ in range(STEPS)]
    changed = 0
    prev = None
    for x, y in batches:
        logits = net(x)
        loss = F.cross_entropy(logits, y) + BETA * commitment_loss(net)
        ref_logits, ref_commit, ref_idx = ref_forward(ref, ref_pools, x)
        ref_loss = F.cross_entropy(ref_logits, y) + BETA * ref_commit
        ours = [net.conv1.indices, net.conv2.indices, net.fc.indices]
        assert all(torch.equal(a, b) for a, b in zip(ours, ref_idx))
        assert torch.allclose(commitment_loss(net), ref_commit, rtol=1e-13, atol=0)
        assert torch.allclose(logits, ref_logits, rtol=1e-12, atol=1e-15)
        if prev is not None:
            changed += sum(int((a != b).sum()) for a, b in zip(ref_idx, prev))
        prev = [i.clone() for i in ref_idx]
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
        for k, w in ref.items():
            assert torch.allclose(getattr(net, k).weight, w, rtol=1e-12, atol=1e-15), k
    assert changed > 0  # the indices moved during the run: the comparison covered re-searches

