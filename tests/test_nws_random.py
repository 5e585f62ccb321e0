"""NWS-random (``nws.init=random``): the temporary kernels are re-drawn at each new task, the
previous task's BatchNorm stays (as the authors' ``initial_conv`` in ``models/NwsResNet.py``)."""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn

from nws_avalanche.method.layers import nws_layers
from nws_avalanche.method.nwsify import nwsify
from nws_avalanche.method.plugin import NWSPlugin
from nws_avalanche.nets.models import build_arch
from nws_avalanche.pools.pool_set import build_pools_kmeans


def _trained_model():
    torch.manual_seed(0)
    model = build_arch("resnet-tiny", 3, in_channels=1)
    nwsify(model, build_pools_kmeans(model, "resnet-tiny", K=8, iters=2).tables)
    model.train()
    with torch.no_grad():  # stands for task 0's training: BN parameters and statistics moved
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
        model(torch.randn(8, 1, 12, 12))
    return model


def _bn_state(model) -> dict:
    state = {f"{n}.{k}": v.clone() for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
             for k, v in m.state_dict().items()}
    assert len(state) >= 5 * 10  # weight, bias, running mean/var, count of ten BN layers
    return state


def test_random_init_redraws_kernels_and_keeps_batchnorm():
    model = _trained_model()
    bn_before = _bn_state(model)
    w_before = {n: m.weight.detach().clone() for n, m in nws_layers(model)}
    plugin = NWSPlugin(init="random", seed=5)
    plugin.tasks_seen = 1  # a second task begins
    plugin.before_train_dataset_adaptation(SimpleNamespace(model=model))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in bn_before.items())
    for n, m in nws_layers(model):
        assert not torch.equal(m.weight, w_before[n]), n
        fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        if m.weight.numel() >= 2000:  # kaiming-normal, fan-out
            assert abs(float(m.weight.detach().std()) / (2 / fan_out) ** 0.5 - 1) < 0.1, n
        assert torch.equal(m.indices, m.search(m.vectors().detach()))  # searched again


def test_previous_init_also_keeps_batchnorm_and_loads_rebuilt_kernels():
    model = _trained_model()
    bn_before = _bn_state(model)
    plugin = NWSPlugin(init="previous")
    plugin.tasks_seen = 1
    plugin.before_train_dataset_adaptation(SimpleNamespace(model=model))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in bn_before.items())
    for _, m in nws_layers(model):
        assert torch.equal(m.weight.reshape(-1, m.d), m.pool[m.indices])
