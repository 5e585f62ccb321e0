"""Pieces every strategy shares: optimiser factory, LR schedule, progress bar, evaluation."""
from __future__ import annotations

import time

import torch
import torch.nn as nn
from avalanche.core import SupervisedPlugin
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..common.feedback import on_terminal, say


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
    """On a terminal one tqdm bar per task over all its iterations, with the running loss; off a
    terminal (a log file, a Slurm job) one line per epoch and one per task instead.

    ``disable``: ``None`` = decide by the terminal, ``True`` = silent, ``False`` = a bar always.
    """

    def __init__(self, desc: str = "", disable: bool | None = None):
        super().__init__()
        self.desc, self.disable, self.bar = desc, disable, None
        self.lines = False

    def before_training_exp(self, strategy, **kw):
        self.task = strategy.experience.current_experience
        self.lines = self.disable is None and not on_terminal()
        self.epoch, self.loss_sum, self.steps = 0, 0.0, 0
        self.start = self.epoch_start = time.perf_counter()
        if self.lines or self.disable:
            return
        total = len(strategy.dataloader) * strategy.train_epochs
        self.bar = tqdm(total=total, desc=f"{self.desc} task {self.task}", leave=False, dynamic_ncols=True)

    def after_training_iteration(self, strategy, **kw):
        if self.bar is None and not self.lines:
            return  # silent: no device sync for a loss nobody reads
        loss = float(strategy.loss.detach())
        self.loss_sum, self.steps = self.loss_sum + loss, self.steps + 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def after_training_epoch(self, strategy, **kw):
        self.epoch += 1
        if self.lines:
            now = time.perf_counter()
            say(f"{self.desc} task {self.task} epoch {self.epoch}/{strategy.train_epochs}: "
                f"loss {self.loss_sum / max(self.steps, 1):.4f} ({now - self.epoch_start:.1f} s)")
            self.epoch_start = now
        self.loss_sum, self.steps = 0.0, 0

    def after_training_exp(self, strategy, **kw):
        if self.lines:
            say(f"{self.desc} task {self.task}: trained {self.epoch} epochs in {time.perf_counter() - self.start:.1f} s")
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int = 256, device: str = "cpu",
             num_workers: int = 0) -> float:
    """Top-1 accuracy (%) of ``model`` in eval mode on ``dataset``."""
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda")
    correct = total = 0
    for x, y, *_ in loader:
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)
