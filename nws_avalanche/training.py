"""Pieces every strategy shares: optimiser factory, LR schedule, progress bar, evaluation."""
from __future__ import annotations

import torch
import torch.nn as nn
from avalanche.core import SupervisedPlugin
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


class EpochLRSchedule(SupervisedPlugin):
    """MultiStep LR per task: lr *= gamma at each epoch in ``milestones``; restarts every task."""

    def __init__(self, milestones, gamma):
        super().__init__()
        self.milestones, self.gamma = list(milestones), gamma
        self.sched = None

    def before_training_exp(self, strategy, **kw):
        self.sched = torch.optim.lr_scheduler.MultiStepLR(strategy.optimizer, self.milestones, self.gamma)

    def after_training_epoch(self, strategy, **kw):
        self.sched.step()


class ProgressBar(SupervisedPlugin):
    """One tqdm bar per task over all its iterations, with the running loss."""

    def __init__(self, desc: str = "", disable: bool | None = None):
        super().__init__()
        self.desc, self.disable, self.bar = desc, disable, None

    def before_training_exp(self, strategy, **kw):
        total = len(strategy.dataloader) * strategy.train_epochs
        self.bar = tqdm(total=total, desc=f"{self.desc} task {strategy.experience.current_experience}",
                        leave=False, disable=self.disable, dynamic_ncols=True)

    def after_training_iteration(self, strategy, **kw):
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{float(strategy.loss.detach()):.3f}", refresh=False)

    def after_training_exp(self, strategy, **kw):
        self.bar.close()


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int = 256, device: str = "cpu",
             num_workers: int = 0) -> float:
    """Top-1 accuracy (%) of ``model`` in eval mode on ``dataset``."""
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    correct = total = 0
    for x, y, *_ in loader:
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)
