import torch
import torch.nn as nn

from nws_avalanche.method.layers import NWSConv2d, NWSLinear, commitment_loss
from nws_avalanche.method.nwsify import nwsify
from nws_avalanche.method.search import exact_rows
from nws_avalanche.nets.models import build_arch
from nws_avalanche.pools.pool_set import build_pools_kmeans


def _layer(gs=1, K=8):
    torch.manual_seed(0)
    pool = torch.randn(K, 9 * gs)
    return NWSConv2d(4, 6, 3, pool, padding=1, group_size=gs)


def test_forward_uses_nearest_pool_vectors_and_straight_through():
    layer = _layer()
    x = torch.randn(2, 4, 5, 5)
    y = layer(x)
    idx = exact_rows(layer.vectors().detach(), layer.pool)
    assert torch.equal(layer.indices, idx)
    q = layer.pool[idx].view_as(layer.weight)
    assert torch.allclose(y, nn.functional.conv2d(x, q, padding=1), atol=1e-6)
    (y.sum() + layer.commitment).backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert not layer.pool.requires_grad and layer.pool.grad is None
    assert "pool" not in dict(layer.named_parameters())


def test_commitment_is_mean_squared_distance_per_weight():
    layer = _layer()
    layer(torch.randn(1, 4, 5, 5))
    w = layer.vectors().detach()
    q = layer.pool[exact_rows(w, layer.pool)]
    # the authors' reduction: a mean over every weight, i.e. mean_j ||q_j - w_j||^2 / d
    assert torch.allclose(layer.commitment, (q - w).pow(2).mean())
    assert torch.allclose(layer.commitment, (q - w).pow(2).sum(1).mean() / layer.d)
    # the commitment gradient pulls w towards q: d/dw = 2 (w - q) / (number of weights)
    layer.weight.grad = None
    layer.commitment.backward()
    assert torch.allclose(layer.weight.grad.view(-1, 9), 2 * (w - q) / w.numel(), atol=1e-7)


def test_commitment_loss_hand_computed():
    """Two layers with kernel lengths 1 and 2; values exact in binary, so equality is exact."""
    a = NWSConv2d(1, 2, 1, torch.tensor([[0.0], [1.0]]))
    b = NWSConv2d(1, 1, (1, 2), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    with torch.no_grad():
        a.weight.copy_(torch.tensor([0.25, 0.75]).view(2, 1, 1, 1))  # -> 0 and 1: errors 0.25, 0.25
        b.weight.copy_(torch.tensor([0.5, 0.0]).view(1, 1, 1, 2))    # -> (0, 0): errors 0.5, 0
    model = nn.ModuleList([a, b])
    a(torch.ones(1, 1, 1, 1))
    b(torch.ones(1, 1, 1, 2))
    assert a.indices.tolist() == [0, 1] and b.indices.tolist() == [0]
    # a: (0.0625 + 0.0625) / 2 weights; b: (0.25 + 0) / 2 weights (per kernel it would be 0.25)
    assert commitment_loss(model).item() == 0.0625 + 0.125
    commitment_loss(model).backward()
    assert a.weight.grad.flatten().tolist() == [0.25, -0.25]   # 2 (w - q) / 2
    assert b.weight.grad.flatten().tolist() == [0.5, 0.0]


def test_group_size_joins_kernels():
    layer = _layer(gs=2)
    assert layer.d == 18 and layer.num_vectors == 6 * 4 // 2
    layer.eval()
    w = layer.rebuilt_weight()
    assert torch.equal(w.reshape(-1, 18), layer.pool[layer.indices])


def test_eval_is_plain_conv_with_rebuilt_weights():
    layer = _layer()
    layer.assign()
    layer.eval()
    x = torch.randn(3, 4, 6, 6)
    ref = nn.functional.conv2d(x, layer.pool[layer.indices].view_as(layer.weight), padding=1)
    assert torch.equal(layer(x), ref)


def test_nwsify_paper_resnet18_has_21_layers_and_paper_index_count():
    model = build_arch("resnet18", num_classes=5)
    pools = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            pools[name] = torch.randn(4, m.kernel_size[0] * m.kernel_size[1])
    pools["fc"] = torch.randn(4, 1)
    nwsify(model, pools, search_now=False)
    layers = [m for m in model.modules() if isinstance(m, NWSConv2d)]
    assert len(layers) == 21
    assert isinstance(model.fc, NWSLinear)
    C = 5
    assert sum(m.num_vectors for m in layers) == 1_392_832 + 512 * C
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_pools_unchanged_by_training():
    torch.manual_seed(0)
    model = build_arch("resnet-tiny", num_classes=3, in_channels=1)
    pools = build_pools_kmeans(model, "resnet-tiny", K=8, iters=3)
    nwsify(model, pools.tables)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(".pool")}
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        out = model(torch.randn(4, 1, 16, 16))
        loss = nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 0])) + commitment_loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = {k: v for k, v in model.state_dict().items() if k.endswith(".pool")}
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(id(p) not in {id(b) for b in model.buffers()} for p in opt.param_groups[0]["params"])
