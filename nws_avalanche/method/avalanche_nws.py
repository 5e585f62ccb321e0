"""``NWS``: the NWS strategy for plain Avalanche code, built the Avalanche way.

    strategy = NWS(model=model, optimizer=optimizer, criterion=criterion, pools=build_pools_kmeans(model, K=512), beta=0.5,
                   train_mb_size=32, train_epochs=10, eval_mb_size=256, device="cuda",
                   plugins=[...], evaluator=EvaluationPlugin(...))

It is Avalanche's ``SupervisedTemplate`` (the ``Naive`` loop) with ``NWSPlugin``; the model is
converted before the template moves it to ``device``, so pools and searches live there. Every
evaluation runs each task on what it stores (see ``NWSPlugin``). The optimiser may be built on
the dense model's parameters: Avalanche re-targets it to the NWS layers' parameters at the first
experience. The benchmark runner uses its own ``nws`` method (``nws_avalanche.strategies.nws``), which
adds artifact export and resume on top of the same plugin.
"""
from __future__ import annotations

import torch.nn as nn
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate

from .layers import nws_layers
from .nwsify import nwsify
from .plugin import NWSPlugin
from .search import SEARCHES


class NWS(SupervisedTemplate):
    """Neural Weight Search as an Avalanche strategy.

    ``pools``: a ``PoolSet`` or ``{layer: [K, d] table}``; ``beta``: commitment weight; ``init``:
    ``previous`` | ``pretrained`` (the model as given is the pretrained network) | ``random``;
    ``include_head``: index the head(s) too; ``search``: a registered search name (default: the
    incremental exact search). Other arguments are ``SupervisedTemplate``'s.
    """

    def __init__(self, *, model: nn.Module, optimizer, criterion=None, pools=None, beta: float = 0.5,
                 init: str = "previous", include_head: bool = True, search: str | None = None, seed: int = 0,
                 train_mb_size: int = 1, train_epochs: int = 1, eval_mb_size: int | None = None,
                 device=None, plugins=None, evaluator=default_evaluator, eval_every: int = -1, **kwargs):
        factory = SEARCHES.get(search) if search else None
        pretrained = ({k: v.detach().clone() for k, v in model.state_dict().items()}
                      if init == "pretrained" else None)
        self.nws = NWSPlugin(pools=pools, beta=beta, init=init, pretrained_state=pretrained,
                             include_head=include_head, search_factory=factory, seed=seed)
        if not nws_layers(model):
            if pools is None:
                raise ValueError("NWS needs pools=... (a PoolSet or dict of tables) for a model without NWS layers")
            nwsify(model, pools, include_head, search_factory=factory)
        super().__init__(model=model, optimizer=optimizer, criterion=criterion or nn.CrossEntropyLoss(),
                         train_mb_size=train_mb_size, train_epochs=train_epochs, eval_mb_size=eval_mb_size,
                         device=device, plugins=[self.nws, *(plugins or [])], evaluator=evaluator,
                         eval_every=eval_every, **kwargs)
        self.model.to(self.device)
