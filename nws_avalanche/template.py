"""``TaskIncrementalStrategy``: the Avalanche strategy template every method here derives from.

It is a real ``SupervisedTemplate``: Avalanche runs the training loop and the plugins. What it adds
is the task-incremental contract the runner relies on:

- ``prepare_task(t, num_classes)`` sets the model up for task ``t`` (called by Avalanche's model
  adaptation at each task boundary, training only; then a fresh optimiser is built);
- ``export_task(t, dir)`` writes what task ``t`` really stores and returns the file(s);
- ``rebuild_task(t, dir)`` rebuilds task ``t``'s model from those files alone;
- ``assist_files(dir)`` lists what all tasks share (counted once in memory).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from .training import EpochLRSchedule, ProgressBar, build_optimizer


class EmptyOptions:
    pass


class TaskIncrementalStrategy(SupervisedTemplate):
    name = "base"
    Options = None  # a dataclass of method-specific options, or None

    def __init__(self, *, cfg, assets, task_classes: list[int], model: nn.Module, plugins=(), options=None,
                 progress: bool | None = None):
        self.cfg, self.assets, self.task_classes, self.opts = cfg, assets, list(task_classes), options
        super().__init__(
            model=model, optimizer=build_optimizer(cfg, model.parameters()),
            criterion=nn.CrossEntropyLoss(), train_mb_size=cfg.batch_size, train_epochs=cfg.epochs,
            eval_mb_size=cfg.eval_batch_size, device=cfg.device,
            plugins=[*plugins, EpochLRSchedule(cfg.milestones, cfg.gamma),
                     ProgressBar(self.name, disable=None if progress is None else not progress)],
            evaluator=_quiet_evaluator())

    # -- Avalanche hooks --------------------------------------------------------------------
    def model_adaptation(self, model=None):
        # Avalanche also calls this before every eval experience; only a new training task
        # changes the model.
        if self.is_training and self.experience is not None:
            t = self.experience.current_experience
            self.prepare_task(t, self.task_classes[t])
            self.model.to(self.device)
        return self.model

    def make_optimizer(self, **kwargs):
        self.optimizer = build_optimizer(self.cfg, self.trainable_parameters())
        self.optimized_param_id = {}

    def trainable_parameters(self):
        return self.model.parameters()

    # -- the task-incremental contract --------------------------------------------------------
    def prepare_task(self, t: int, num_classes: int) -> None:
        raise NotImplementedError

    def export_task(self, t: int, directory: Path) -> list[Path]:
        raise NotImplementedError

    def rebuild_task(self, t: int, directory: Path) -> nn.Module:
        raise NotImplementedError

    def assist_files(self, directory: Path) -> list[Path]:
        return []

    def task_summary(self, t: int) -> dict:
        """Method-specific per-task facts for results.json (e.g. NWS index counts)."""
        return {}

    @staticmethod
    def task_file(directory: Path, t: int, suffix: str) -> Path:
        return Path(directory) / f"task{t:03d}.{suffix}"


def fresh_head(in_features: int, num_classes: int, seed: int) -> nn.Linear:
    """A new bias-free task head, initialised deterministically from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(in_features, num_classes, bias=False)
    bound = 1.0 / in_features ** 0.5
    with torch.no_grad():
        head.weight.copy_(torch.rand(num_classes, in_features, generator=gen) * 2 * bound - bound)
    return head


def _quiet_evaluator():
    import warnings

    with warnings.catch_warnings():  # "no loggers": metrics here come from rebuilt models, not Avalanche's
        warnings.simplefilter("ignore")
        return EvaluationPlugin(loggers=[])
