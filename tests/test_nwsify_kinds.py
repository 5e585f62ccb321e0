"""``nwsify`` on layer kinds beyond the paper's ResNet: faithful conversion or a refusal by name."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from nws_avalanche import build_pools_kmeans, nws_layers, nwsify
from nws_avalanche.common.errors import ConfigError


def _same_as_dense(model: nn.Module, x: torch.Tensor) -> None:
    """Converted (eval: weights = pool[indices]) == the dense model given those same weights."""
    pools = build_pools_kmeans(model, K=8, seed=0, iters=2)
    dense = copy.deepcopy(model)
    nws = nwsify(model, pools).eval()
    with torch.no_grad():
        for name, m in nws_layers(nws):
            dense.get_submodule(name).weight.copy_(m.rebuilt_weight().view_as(dense.get_submodule(name).weight))
    assert torch.allclose(nws(x), dense.eval()(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["reflect", "circular", "replicate", "zeros"])
def test_padding_modes_are_kept(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=(2, 1),
                          padding_mode=mode))
    _same_as_dense(model, torch.randn(2, 3, 7, 6))


def test_hidden_linears_and_any_head_name_are_converted():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
            self.logits = nn.Linear(6, 3)

        def forward(self, x):
            return self.logits(self.mlp(self.conv(x).mean((2, 3))))

    model = Net()
    _same_as_dense(model, torch.randn(2, 3, 6, 6))
    assert [n for n, _ in nws_layers(model)] == ["conv", "mlp.0", "logits"]
    # include_head=False keeps the head (here the last Linear, whatever its name) dense
    plain = Net()
    nwsify(plain, build_pools_kmeans(plain, K=4, iters=1, include_head=False), include_head=False)
    assert [n for n, _ in nws_layers(plain)] == ["conv", "mlp.0"]


def test_linear_on_sequences_keeps_linear_semantics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    _same_as_dense(model, torch.randn(3, 4, 5))  # [N, L, C] input


@pytest.mark.parametrize("layer,why", [(nn.Conv1d(3, 4, 3), "Conv1d"), (nn.ConvTranspose2d(3, 4, 3), "transposed"),
                                       (nn.Conv3d(3, 4, 3), "Conv3d")])
def test_unconvertible_layers_are_refused_by_name(layer, why):
    model = nn.Sequential(nn.Conv2d(3, 3, 1), layer)
    with pytest.raises(ConfigError, match=rf"layer '1' .*{why}"):
        nwsify(model, {"0": torch.randn(4, 1), "1": torch.randn(4, 3)})


def test_moving_a_layer_moves_its_search():
    from nws_avalanche.method.layers import NWSConv2d

    m = NWSConv2d(2, 3, 3, torch.randn(8, 9))
    m.to(torch.float64)  # like .to("cuda"): new pool tensor; the searcher must follow it
    assert m.search.pool is m.pool
    w = torch.randn(6, 9, dtype=torch.float64)
    assert torch.equal(m.search(w), torch.cdist(w, m.pool).argmin(1))
