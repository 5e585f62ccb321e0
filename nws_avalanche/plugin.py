"""``NWSPlugin``: gives Neural Weight Search to any Avalanche ``SupervisedTemplate``.

- before training: converts the model's convs (and head) to NWS layers if it has none yet;
- at each new task (from the second on): initialises the temporary kernels (``previous``: the
  previous task's rebuilt kernels and BN; ``pretrained``: the pretrained network's; ``random``:
  fresh kaiming kernels (fan-out), the head's too, while BatchNorm stays the previous task's, as
  the authors' ``initial_conv`` does: the appendix's NWS-random; a task with another class count
  gets ``random_head``, drawn over its own C) and restarts the searches;
- before backward: adds ``beta * sum_l commitment_l`` to the loss;
- after each task: a final search fixes the indices that the task stores.
Pools are buffers and never reach the optimiser.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from avalanche.core import SupervisedPlugin

from .layers import commitment_loss, nws_layers
from .nwsify import nwsify

INITS = ("previous", "pretrained", "random")


class NWSPlugin(SupervisedPlugin):
    def __init__(self, pools: dict[str, torch.Tensor] | None = None, beta: float = 0.5, init: str = "previous",
                 pretrained_state: dict[str, torch.Tensor] | None = None, include_head: bool = True,
                 search_factory=None, seed: int = 0):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if init == "pretrained" and pretrained_state is None:
            raise ValueError("init='pretrained' needs pretrained_state")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.pools, self.beta, self.init = pools, beta, init
        self.pretrained_state, self.include_head = pretrained_state, include_head
        self.search_factory, self.seed = search_factory, seed
        self.tasks_seen = 0

    def before_training(self, strategy, **kw):
        if not nws_layers(strategy.model):
            if self.pools is None:
                raise ValueError("the model has no NWS layers and the plugin was given no pools")
            nwsify(strategy.model, self.pools, self.include_head, search_factory=self.search_factory)

    def before_train_dataset_adaptation(self, strategy, **kw):
        # Runs before Avalanche's model adaptation and optimiser set-up for the task.
        if self.tasks_seen > 0:
            init_temporary_kernels(strategy.model, self.init, self.pretrained_state,
                                   seed=self.seed + self.tasks_seen)
        for _, m in nws_layers(strategy.model):
            m.reset_search()
            m.assign()

    def before_backward(self, strategy, **kw):
        if self.beta:
            strategy.loss = strategy.loss + self.beta * commitment_loss(strategy.model)

    def after_training_exp(self, strategy, **kw):
        for _, m in nws_layers(strategy.model):
            m.assign()
        self.tasks_seen += 1


@torch.no_grad()
def init_temporary_kernels(model: nn.Module, init: str, pretrained_state=None, seed: int = 0) -> None:
    layers = nws_layers(model)
    if init == "previous":
        for _, m in layers:
            m.load_rebuilt_into_weight()
    elif init == "pretrained":
        own = model.state_dict()
        state = {k: v for k, v in pretrained_state.items()
                 if k in own and own[k].shape == v.shape and not k.endswith((".pool", ".indices"))}
        model.load_state_dict(state, strict=False)
    elif init == "random":
        gen = torch.Generator().manual_seed(seed)
        for _, m in layers:
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
        # BatchNorm is left as the previous task trained it (the authors re-draw only the kernels)


def random_head(in_features: int, num_classes: int, seed: int) -> nn.Linear:
    """NWS-random's head for a task with another class count: the authors resize the previous head
    and then ``initial_conv`` re-draws all of it, kaiming-normal with fan-out = ``num_classes``."""
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(in_features, num_classes, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(num_classes, in_features, generator=gen) * (2.0 / num_classes) ** 0.5)
    return head
