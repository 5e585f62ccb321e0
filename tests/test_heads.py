"""Task heads follow the authors' rule for every method (``reset_last_layer`` in their
``models/NwsResNet.py``): task 0 starts from the pretrained head's first C rows; later tasks keep,
truncate or extend (kaiming-normal rows) the head they carry over; methods that restart from the
pretrained network restart their head from it. ``head_init=fresh`` restores a fresh head."""
from __future__ import annotations

import pytest
import torch

from nws_avalanche.common.errors import ConfigError
from nws_avalanche.config.run_config import build_config
from nws_avalanche.nets.models import build_arch, get_head
from nws_avalanche.pools.pool_set import build_pools_kmeans
from nws_avalanche.pools.pretrained import Assets
from nws_avalanche.runner.factory import build_strategy
from nws_avalanche.strategies.methods import METHODS, load_all
from nws_avalanche.strategies.task_incremental import fresh_head, resized_head

from .baseline_kit import ARCH

PRE_CLASSES = 4
CARRIED = ("nws", "packnet")              # the head of task t-1 goes on
RESTART = ("finetune", "aqd", "ksm", "frozen")  # the pretrained network (and its head) again


def _strategy(method: str, task_classes, *sets: str):
    load_all()
    cfg = build_config([], [f"arch={ARCH}", "epochs=1", "pool_size=8", *sets], method=method)
    torch.manual_seed(0)
    pre = build_arch(ARCH, PRE_CLASSES, 1)
    pools = build_pools_kmeans(pre, ARCH, K=8, iters=2) if method == "nws" else None
    assets = Assets(ARCH, 1, {k: v.clone() for k, v in pre.state_dict().items()}, PRE_CLASSES, pools, None)
    return build_strategy(cfg, assets, list(task_classes), progress=False), pre


def _rows(head) -> torch.Tensor:
    return head.weight.detach().reshape(head.weight.shape[0], -1)


def test_resized_head_keeps_truncates_and_extends():
    prev = torch.randn(6, 256)
    assert torch.equal(_rows(resized_head(prev, 6, 0)), prev)
    assert torch.equal(_rows(resized_head(prev, 2, 0)), prev[:2])
    grown = _rows(resized_head(prev.view(6, 256, 1, 1), 40, 3))  # a 1x1 NWS conv's weight works too
    assert torch.equal(grown[:6], prev)
    new = grown[6:]
    # kaiming-normal (fan-in, gain sqrt 2): std sqrt(2 / 256) = 0.088; 34 x 256 draws
    assert abs(float(new.std()) - (2 / 256) ** 0.5) < 0.005 and abs(float(new.mean())) < 0.005
    assert torch.equal(_rows(resized_head(prev, 40, 3)), grown)       # seeded
    assert not torch.equal(_rows(resized_head(prev, 40, 4))[6:], new)


@pytest.mark.parametrize("method", CARRIED + RESTART)
def test_task0_head_is_the_pretrained_heads_first_rows(method):
    strategy, pre = _strategy(method, [3, 2])
    assert torch.equal(_rows(get_head(strategy.model)), pre.fc.weight.detach()[:3])


@pytest.mark.parametrize("method", CARRIED + RESTART)
@pytest.mark.parametrize("classes", [2, 3, 6])
def test_later_heads_keep_truncate_or_extend(method, classes):
    strategy, pre = _strategy(method, [3, classes])
    with torch.no_grad():  # stands for task 0's training
        get_head(strategy.model).weight.add_(1.0)
    trained = _rows(get_head(strategy.model)).clone()
    strategy.prepare_task(1, classes)
    head = _rows(get_head(strategy.model))
    assert head.shape == (classes, trained.shape[1])
    start = trained if method in CARRIED else pre.fc.weight.detach()
    keep = min(classes, start.shape[0])
    assert torch.equal(head[:keep], start[:keep])
    if classes > keep:
        assert torch.equal(head[keep:], resized_head(start, classes, strategy.cfg.seed + 1).weight[keep:])


@pytest.mark.parametrize("method", CARRIED + RESTART)
def test_head_init_fresh_draws_new_heads(method):
    strategy, pre = _strategy(method, [3, 3], "head_init=fresh")
    dim = strategy.model.feature_dim
    assert torch.equal(_rows(get_head(strategy.model)), fresh_head(dim, 3, strategy.cfg.seed).weight)
    if method != "nws":  # NWS with init=previous keeps its head when C is unchanged (as before)
        strategy.prepare_task(1, 3)
        assert torch.equal(_rows(get_head(strategy.model)), fresh_head(dim, 3, strategy.cfg.seed + 1).weight)


@pytest.mark.parametrize("classes", [3, 2, 60])
def test_nws_random_head_is_redrawn_kaiming_fan_out_over_the_new_class_count(classes):
    """The authors' NWS-random: reset_last_layer (resize), then initial_conv re-draws every NWS layer,
    the head too, kaiming-normal fan-out: std sqrt(2 / C) with the new C, no row kept."""
    from nws_avalanche.method.plugin import init_temporary_kernels, random_head

    strategy, pre = _strategy("nws", [3, classes], "nws.init=random")
    init_temporary_kernels(strategy.model, "random", seed=7)  # what the plugin does before prepare_task
    drawn = _rows(get_head(strategy.model)).clone()
    strategy.prepare_task(1, classes)
    head = _rows(get_head(strategy.model))
    assert head.shape == (classes, drawn.shape[1])
    if classes == 3:  # same count: the plugin's draw (fan-out 3) stands
        assert torch.equal(head, drawn)
    else:
        assert torch.equal(head, random_head(drawn.shape[1], classes, strategy.cfg.seed + 1).weight)
    if classes == 60:  # 60 x 32 draws
        assert abs(float(head.std()) / (2 / classes) ** 0.5 - 1) < 0.1


def test_nws_pretrained_init_restarts_its_head_from_the_pretrained_one():
    strategy, pre = _strategy("nws", [3, 3], "nws.init=pretrained")
    with torch.no_grad():
        get_head(strategy.model).weight.add_(1.0)
    strategy.prepare_task(1, 3)
    assert torch.equal(_rows(get_head(strategy.model)), pre.fc.weight.detach()[:3])


def test_head_init_is_checked():
    with pytest.raises(ConfigError, match="head_init"):
        build_config([], ["head_init=zero"]).validate()
