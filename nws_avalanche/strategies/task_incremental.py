"""``TaskIncrementalStrategy``: the Avalanche strategy template every method here derives from.

It is a real ``SupervisedTemplate``, built the Avalanche way (``Method(model=, optimizer=, criterion=,
task_classes=..., train_mb_size=..., ..., options=...)``; ``factory.build_strategy`` makes those
arguments from a run config, which strategies never see): Avalanche runs the training loop and
the plugins. What it adds is the task-incremental contract the runner relies on:

- ``prepare_task(t, num_classes)`` sets the model up for task ``t`` (called by Avalanche's model
  adaptation at each task boundary, training only; then a fresh optimiser is built);
- ``export_task(t, dir)`` writes what task ``t`` really stores and returns the file(s);
- ``rebuild_task(t, dir)`` rebuilds task ``t``'s model from those files alone;
- ``assist_files(dir)`` lists what all tasks share (counted once in memory);
- ``paper_bytes(t, dir)`` / ``paper_assist_bytes(dir)``: the same stored content counted the way
  the NWS paper counted it (``nws_avalanche.storage.paper_memory``), the second memory column;
- ``task_state()`` / ``load_task_extra(extra)``: what a task keeps in memory for evaluation
  (default: the state_dict minus ``shared_state_keys()``); ``self.task_eval``
  (``task_state.PerTaskEval``) swaps it in when Avalanche evaluates that task, or, after
  ``task_eval.use_artifacts(...)`` (the runner), the model rebuilt from the task's files;
- ``checkpoint_state(t)`` / ``restore_checkpoint_state(state)`` save and restore the state after
  task ``t`` so an interrupted run resumes exactly (see ``nws_avalanche.runner.checkpoint``). The default
  keeps the model's state_dict, the optimiser's, Avalanche's clock and the attributes named in
  ``checkpoint_attrs`` (dotted paths, e.g. ``"plugin.tasks_seen"``); a method with other state
  overrides ``extra_state()`` / ``load_extra_state()``. The state holds tensors and plain Python
  values only (the checkpoint is read with ``weights_only=True``);
- ``restore_from_files(t, dir)`` puts the strategy in its state after task ``t`` from the task
  files alone, so a run whose later files (or checkpoint) were deleted retrains from there.

Every strategy also gets ``FiniteGuard`` (a diverging task stops with the place it diverged,
``nws_avalanche.strategies.guard``), the per-task LR schedule and the progress bar.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from ..method.task_state import PerTaskEval, StrategyTaskState
from .guard import FiniteGuard
from .training import EpochLRSchedule, ProgressBar, build_optimizer


AMP_MODES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainSettings:
    """What a method reads when it rebuilds its optimiser or heads at each task (not the run
    config): the optimiser's kind and hyper-parameters, epochs per task, the seed of fresh heads,
    and the architecture name written into artifacts (to rebuild them)."""
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    epochs: int = 1
    seed: int = 0
    arch: str | None = None
    head_init: str = "pretrained"  # task heads: pretrained (the authors' rule) | fresh

    @classmethod
    def from_optimizer(cls, optimizer: torch.optim.Optimizer, **kw) -> "TrainSettings":
        kind = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam"}.get(type(optimizer))
        if kind is None:
            raise ValueError(f"{type(optimizer).__name__}: these strategies build a fresh optimiser of the same "
                             f"kind at every task and know SGD and Adam; pass one of those")
        d = optimizer.defaults
        return cls(optimizer=kind, lr=d["lr"], momentum=d.get("momentum", 0.0), nesterov=d.get("nesterov", False),
                   weight_decay=d.get("weight_decay", 0.0), **kw)


@dataclass
class StartingPoint:
    """What every task starts from: the pretrained weights (state_dict of the plain network),
    the input channels (to rebuild artifacts) and, for NWS, the kernel pools."""
    pretrained_state: dict
    in_channels: int = 3
    pools: object = None


def state_copy(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class TaskIncrementalStrategy(SupervisedTemplate):
    name = "base"
    Options = None  # a dataclass of method-specific options, or None
    needs_pools = False  # True: the runner prepares kernel pools (assets.pools) for this method
    checkpoint_attrs: tuple[str, ...] = ()  # dotted attribute paths resumed with the model

    def __init__(self, *, model: nn.Module, optimizer: torch.optim.Optimizer, criterion=None,
                 task_classes: list[int], pretrained_state: dict | None = None, in_channels: int = 3,
                 arch: str | None = None, seed: int = 0, train_mb_size: int = 32, train_epochs: int = 1,
                 eval_mb_size: int | None = None, device="cpu", milestones=(), gamma: float = 0.1, plugins=(),
                 evaluator=None, options=None, progress: bool | None = None, task_eval: PerTaskEval | None = None,
                 pools=None, head_init: str = "pretrained", allow_nonfinite: bool = False, amp: str = "off"):
        """``model``: the network for task 0, already converted by the method (its head sized
        ``task_classes[0]``); ``optimizer``: its kind and hyper-parameters are reused for the fresh
        optimiser each task gets; ``pretrained_state``: what each task starts from (default: the
        model's weights as given); ``milestones``/``gamma``: per-task MultiStep LR; ``head_init``:
        later tasks' heads (``task_head``); ``allow_nonfinite``: see ``guard.FiniteGuard``;
        ``amp``: mixed precision of the training forward (``AMP_MODES``; evaluation stays float32)."""
        if amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
        self.cfg = TrainSettings.from_optimizer(optimizer, epochs=train_epochs, seed=seed, arch=arch,
                                                head_init=head_init)
        self.assets = StartingPoint(pretrained_state if pretrained_state is not None else state_copy(model),
                                    in_channels, pools)
        self.task_classes, self.opts = list(task_classes), options
        self.task_eval = task_eval if task_eval is not None else StrategyTaskState()
        plugins = list(plugins or ())
        if self.task_eval not in plugins:
            plugins.append(self.task_eval)
        super().__init__(
            model=model, optimizer=optimizer, criterion=criterion or nn.CrossEntropyLoss(),
            train_mb_size=train_mb_size, train_epochs=train_epochs,
            eval_mb_size=eval_mb_size if eval_mb_size is not None else train_mb_size, device=device,
            plugins=[*plugins, FiniteGuard(allow_nonfinite), EpochLRSchedule(list(milestones), gamma),
                     ProgressBar(self.name, disable=None if progress is None else not progress)],
            evaluator=evaluator if evaluator is not None else accuracy_evaluator())
        self.amp = amp
        # fp16's narrow range needs loss scaling; bf16 has float32's exponent range
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == "fp16" else None

    def set_evaluator(self, evaluator: EvaluationPlugin) -> None:
        """Use ``evaluator`` (e.g. with loggers) in place of the one given at construction."""
        self.plugins[self.plugins.index(self.evaluator)] = evaluator
        self.evaluator = evaluator

    # -- Avalanche hooks --------------------------------------------------------------------
    def model_adaptation(self, model=None):
        # Avalanche also calls this before every eval experience; only a new training task
        # changes the model.
        if self.is_training and self.experience is not None:
            t = self.experience.current_experience
            self.prepare_task(t, self.task_classes[t])
            self.model.to(self.device)
        return self.model

    # -- mixed precision (``amp``): the training forward under autocast; the loss, the NWS search
    # and commitment, and the weights stay float32 (the search turns autocast off itself)
    def forward(self):
        if self.amp == "off" or not self.is_training:
            return super().forward()
        with torch.autocast(self.device.type, dtype=AMP_MODES[self.amp]):
            out = super().forward()
        return out.float()

    def backward(self):
        if self.scaler is None:
            return super().backward()
        self.scaler.scale(self.loss).backward()

    def optimizer_step(self):
        if self.scaler is None:
            return super().optimizer_step()
        self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
        self.scaler.update()

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

    def task_head(self, t: int, num_classes: int, previous: nn.Module | None = None) -> nn.Linear:
        """Task ``t``'s head (``t > 0``), the same rule for every method: ``previous`` (the head the
        method carries over) kept, truncated or extended to ``num_classes`` rows; ``previous=None``
        for a method that restarts from the pretrained network: its head restarts from the
        pretrained head, as at task 0. ``head_init: fresh`` draws a new head instead."""
        if self.cfg.head_init == "fresh":
            return fresh_head(self.model.feature_dim, num_classes, self.cfg.seed + t)
        if previous is None:
            from ..nets.models import head_name

            weight = self.assets.pretrained_state[f"{head_name(self.model)}.weight"]
        else:
            weight = previous.weight
        return resized_head(weight, num_classes, self.cfg.seed + t)
    # -- per-task state for Avalanche's evaluation (memory mode) ------------------------------
    def shared_state_keys(self) -> set[str]:
        """state_dict entries every task shares (not kept per task)."""
        return set()

    def task_state(self) -> dict:
        shared = self.shared_state_keys()
        return {"state": {k: v.detach().clone() for k, v in self.model.state_dict().items() if k not in shared},
                "extra": self.task_extra()}

    def task_extra(self):
        """Per-task values outside the state_dict (e.g. PackNet's owner view)."""
        return None

    def load_task_extra(self, extra) -> None:
        pass

    def paper_bytes(self, t: int, directory: Path) -> int | None:
        """Task ``t``'s stored content in the paper's accounting; None: the method does not say."""
        return None

    def paper_assist_bytes(self, directory: Path) -> int:
        return 0

    def task_summary(self, t: int) -> dict:
        """Method-specific per-task facts for results.json (e.g. NWS index counts)."""
        return {}

    # -- checkpoint hook (resume after an interruption) ------------------------------------------
    def checkpoint_state(self, t: int) -> dict:
        """Everything needed to continue after task ``t`` (tensors and plain Python values)."""
        return {"task": t, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "clock": {k: v for k, v in vars(self.clock).items() if isinstance(v, (int, float))},
                "extra": self.extra_state()}

    def restore_checkpoint_state(self, state: dict) -> None:
        t = state["task"]
        if t > 0:  # give the model task t's shape (e.g. its head size) before loading its tensors
            self.prepare_task(t, self.task_classes[t])
        self.model.load_state_dict(state["model"])
        self.model.to(self.device)
        self.make_optimizer()
        saved = state.get("optimizer", {}).get("param_groups", [])
        own = self.optimizer.state_dict()["param_groups"]
        # each task builds a fresh optimiser; restore it only when it has the same parameter layout
        if [len(g["params"]) for g in saved] == [len(g["params"]) for g in own]:
            self.optimizer.load_state_dict(state["optimizer"])
        for k, v in state.get("clock", {}).items():
            setattr(self.clock, k, v)
        self.load_extra_state(state.get("extra", {}))

    def restore_from_files(self, t: int, directory: Path) -> None:
        """The state after task ``t`` from the files in ``directory`` (``recovery.resume_point``).
        Nothing by default: right for methods whose ``prepare_task`` starts every task afresh from
        the pretrained network (Finetune, KSM, AQD); methods carrying state across tasks override it."""

    def extra_state(self) -> dict:
        return {path: copy.deepcopy(_get_path(self, path)) for path in self.checkpoint_attrs}

    def load_extra_state(self, extra: dict) -> None:
        for path, value in extra.items():
            head, _, last = path.rpartition(".")
            setattr(_get_path(self, head) if head else self, last, value)

    @staticmethod
    def task_file(directory: Path, t: int, suffix: str) -> Path:
        return Path(directory) / f"task{t:03d}.{suffix}"


def _get_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


HEAD_INITS = ("pretrained", "fresh")


def pretrained_with_head(assets, num_classes: int, seed: int, head_init: str = "pretrained") -> nn.Module:
    """The pretrained network with task 0's head (every method's start): ``head_init="pretrained"``
    (the authors' rule) keeps the pretrained head's first ``num_classes`` rows, new kaiming-normal
    rows beyond its size; ``"fresh"`` draws a new head."""
    from ..nets.models import get_head, set_head

    model = assets.pretrained_model()
    if head_init == "fresh":
        set_head(model, fresh_head(model.feature_dim, num_classes, seed))
    else:
        set_head(model, resized_head(get_head(model).weight, num_classes, seed))
    return model


def fresh_head(in_features: int, num_classes: int, seed: int) -> nn.Linear:
    """A new bias-free task head, initialised deterministically from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(in_features, num_classes, bias=False)
    bound = 1.0 / in_features ** 0.5
    with torch.no_grad():
        head.weight.copy_(torch.rand(num_classes, in_features, generator=gen) * 2 * bound - bound)
    return head


@torch.no_grad()
def resized_head(previous: torch.Tensor, num_classes: int, seed: int) -> nn.Linear:
    """The authors' head rule (``reset_last_layer`` in their ``models/NwsResNet.py``): the first
    ``num_classes`` rows of ``previous`` (``[C', in]`` or a 1x1 conv's ``[C', in, 1, 1]``), and
    when ``num_classes > C'`` new rows drawn kaiming-normal (fan-in, gain sqrt(2), as
    ``torch.nn.init.kaiming_normal_``'s defaults) from ``seed``."""
    prev = previous.detach().reshape(previous.shape[0], -1)
    have, in_features = prev.shape
    head = nn.Linear(in_features, num_classes, bias=False)
    keep = min(have, num_classes)
    head.weight[:keep] = prev[:keep].to(head.weight.dtype)
    if num_classes > have:
        gen = torch.Generator().manual_seed(seed)
        std = (2.0 / in_features) ** 0.5
        head.weight[have:] = torch.randn(num_classes - have, in_features, generator=gen) * std
    return head.to(prev.device)


def accuracy_evaluator(loggers=()):
    """Avalanche's per-experience and stream accuracy, reported to ``loggers`` (none: silent)."""
    import warnings

    from avalanche.evaluation.metrics import accuracy_metrics

    with warnings.catch_warnings():  # "no loggers" is what the runner wants unless it asks for some
        warnings.simplefilter("ignore")
        return EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=list(loggers))
