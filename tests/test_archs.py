"""ResNet-34, MobileNet-V2 and VGG-16: load torchvision-format weights, convert with ``nwsify``,
train a step, store the task artifact and rebuild it bit-identically."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nws_avalanche.method.grouping import group_sizes_for
from nws_avalanche.method.layers import NWSConv2d, commitment_loss, nws_layers
from nws_avalanche.method.nwsify import convertible_layers, nwsify
from nws_avalanche.method.task_artifact import load_nws_task, save_nws_task
from nws_avalanche.nets.models import build_arch, head_name
from nws_avalanche.pools.pool_set import PoolSet, layer_specs
from nws_avalanche.pools.pretrained import load_torchvision_state

ARCH_CASES = [("resnet34", 1), ("mobilenet_v2", 4), ("vgg16", 1)]


pytestmark = pytest.mark.usefixtures("one_thread")


def random_pools(model, gs, K=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    specs = layer_specs(model, True, gs)
    return PoolSet("x", specs, {s["name"]: torch.randn(K, s["d"], generator=gen) * 0.1 for s in specs})


def torchvision_state(arch):
    """A state_dict with torchvision's names (VGG: its three FC layers, small stand-ins)."""
    import torchvision

    if arch == "resnet34":
        return torchvision.models.resnet34().state_dict()
    if arch == "mobilenet_v2":
        return torchvision.models.mobilenet_v2().state_dict()
    state = build_arch(arch, 10).state_dict()
    state.pop("fc.weight")
    for i in (0, 3, 6):  # torchvision's classifier.{0,3,6}: dropped on load (replaced by one fc)
        state[f"classifier.{i}.weight"], state[f"classifier.{i}.bias"] = torch.zeros(4, 4), torch.zeros(4)
    return state


@pytest.mark.parametrize("arch,group_size", ARCH_CASES)
def test_arch_loads_converts_trains_stores_rebuilds(arch, group_size, tmp_path):
    torch.manual_seed(0)
    ref = torchvision_state(arch)
    path = tmp_path / "tv.pt"
    torch.save(ref, path)
    state, classes = load_torchvision_state(str(path), build_arch(arch, 1))
    model = build_arch(arch, classes)
    model.load_state_dict(state)
    assert head_name(model) == "fc" and model.fc.bias is None
    for k, v in model.state_dict().items():  # every tensor but the head comes from the file
        if k != "fc.weight" and k in ref:
            assert torch.equal(v, ref[k]), k
    # 5 classes, small images
    model.fc = nn.Linear(model.feature_dim, 5, bias=False)
    gs = group_sizes_for(model, group_size)
    pools = random_pools(model, gs)
    n_conv = len(convertible_layers(model))
    nwsify(model, pools.tables, group_sizes=gs)
    layers = nws_layers(model)
    assert len(layers) == n_conv and all(isinstance(m, NWSConv2d) for _, m in layers)
    if arch == "mobilenet_v2":
        dw = model.get_submodule("features.2.conv.1.0")
        assert dw.groups == dw.in_channels and dw.d == 9  # depthwise: single-channel 3x3 kernels
        assert model.get_submodule("features.2.conv.0.0").group_size == 4
    # one training step with CE + beta * commitment
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    loss = F.cross_entropy(model(x), y) + 0.5 * commitment_loss(model)
    loss.backward()
    opt.step()
    for _, m in layers:
        m.assign()
    model.eval()
    out = model(x)
    # store and rebuild
    art = tmp_path / "task000.nwst"
    save_nws_task(art, model, task=0, arch=arch, num_classes=5, pool_fingerprint=pools.fingerprint,
                  pool_digest=pools.digest)

    def skeleton(num_classes):
        m = build_arch(arch, num_classes)
        return nwsify(m, pools.tables, group_sizes=pools.group_sizes, search_now=False)

    rebuilt = load_nws_task(art, skeleton, pools.fingerprint, pools.digest)
    for (name, a), (_, b) in zip(layers, nws_layers(rebuilt)):
        assert torch.equal(a.indices, b.indices), name
        assert torch.equal(a.rebuilt_weight(), b.rebuilt_weight()), name
    nws_keys = {f"{n}.{leaf}" for n, _ in layers for leaf in ("weight", "pool", "indices")}
    rs = rebuilt.state_dict()
    for k, v in model.state_dict().items():  # BatchNorm, biases: stored as they are
        if k not in nws_keys:
            assert torch.equal(v, rs[k]), k
    assert torch.equal(rebuilt(x), out)


def test_vgg16_bn_converts():
    model = build_arch("vgg16-bn", 5, 1)
    pools = random_pools(model, {})
    nwsify(model, pools.tables, search_now=False)
    assert len(nws_layers(model)) == 14  # 13 convs + the single fc
    pools.check_model(model)


def test_group_size_must_divide_pointwise_inputs():
    from nws_avalanche.common.errors import ConfigError

    with pytest.raises(ConfigError, match="group_size=7 does not divide"):
        group_sizes_for(build_arch("mobilenet_v2", 5), 7)
