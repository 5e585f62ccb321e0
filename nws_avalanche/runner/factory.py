"""The runner's strategy factory: one place where a run config becomes a strategy.

``build_strategy(cfg, assets, task_classes, options=...)`` builds the pretrained network with task 0's
head, its optimiser, and calls the registered method's constructor with plain arguments (the
Avalanche way: ``Method(model=..., optimizer=..., criterion=..., train_mb_size=..., ..., options=...)``);
strategies never see the run config. ``options`` are the typed method options that
``runner.run.resolve_run`` built; without them (a library caller) they are built here from ``cfg``.
"""
from __future__ import annotations

import torch.nn as nn

from ..config.run_config import method_options
from ..strategies.methods import METHODS, load_all
from ..strategies.task_incremental import pretrained_with_head
from ..strategies.training import build_optimizer


_FROM_CFG = object()


def build_strategy(cfg, assets, task_classes: list[int], *, options=_FROM_CFG, progress: bool | None = None,
                   evaluator=None):
    load_all()
    cls = METHODS.get(cfg.method)
    if options is _FROM_CFG:
        options = method_options(cfg, cfg.method, cls.Options) if cls.Options is not None else None
    model = pretrained_with_head(assets, task_classes[0], cfg.seed, cfg.head_init)
    kw = dict(task_classes=list(task_classes), pretrained_state=assets.pretrained_state,
              in_channels=assets.in_channels, arch=cfg.arch, seed=cfg.seed, train_mb_size=cfg.batch_size,
              train_epochs=cfg.epochs, eval_mb_size=cfg.eval_batch_size, device=cfg.device,
              milestones=cfg.milestones, gamma=cfg.gamma, head_init=cfg.head_init,
              allow_nonfinite=cfg.allow_nonfinite, evaluator=evaluator, progress=progress, amp=cfg.amp)
    if options is not None:
        kw["options"] = options
    if cls.needs_pools:
        kw.update(pools=assets.pools, beta=cfg.beta)
    return cls(model=model, optimizer=build_optimizer(cfg, model.parameters()), criterion=nn.CrossEntropyLoss(), **kw)
