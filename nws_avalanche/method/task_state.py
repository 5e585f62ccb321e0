"""Per-task state at evaluation: each task is measured on what it stores, inside Avalanche's eval.

Every method here keeps one set of values per task (NWS: indices, BatchNorm, head; PackNet: its
owner view, BatchNorm, head; Finetune/AQD: a whole network). ``PerTaskEval`` keeps them keyed by
task label after each training experience and puts the right set in place before every
evaluation minibatch, then restores the training state when the evaluation ends, so Avalanche's
own ``accuracy_metrics``/``forgetting_metrics`` measure each task on what it stores.

Two sources of per-task state:

- memory (default): ``capture(strategy, model)`` after each training experience, ``apply`` at
  eval (loaded into the live model; the training values are snapshotted first);
- artifacts (``use_artifacts(rebuild)``): ``rebuild(task_label)`` returns the model rebuilt from
  the files a task wrote, and that model stands in for ``strategy.model`` while its task is
  evaluated (the runner: "measured on what is stored").

A minibatch that mixes task labels is evaluated group by group, each with its task's state, and
the outputs are joined in the minibatch's order (zero-padded to the widest head, as Avalanche's
``MultiTaskModule`` does); this recomputes the forward that the strategy already ran on it.
Task labels without state (tasks not trained yet) are evaluated with the training state.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from avalanche.core import SupervisedPlugin
from avalanche.models.utils import avalanche_forward

from .nwsify import set_module


def compact_indices(idx: torch.Tensor, pool_size: int) -> torch.Tensor:
    """The smallest integer dtype that holds indices below ``pool_size`` (uint8/int16/int32), a
    copy on the indices' device (so a task switch at evaluation never crosses the bus)."""
    dtype = torch.uint8 if pool_size <= 256 else torch.int16 if pool_size <= 32768 else torch.int32
    return idx.detach().to(dtype=dtype, copy=True)


def experience_labels(experience) -> list[int]:
    labels = getattr(experience, "task_labels", None)
    return sorted({int(t) for t in labels}) if labels is not None else [0]


class PerTaskEval(SupervisedPlugin):
    """Keeps per-task state after training and swaps it in during evaluation (see module doc)."""

    def __init__(self):
        super().__init__()
        self.task_states: dict[int, object] = {}
        self.rebuild: Callable[[int], nn.Module] | None = None
        self._loaded = None      # task label whose state is in place; None: the training state
        self._snapshot = None    # training values while a task's state is in place
        self._replaced: dict[str, nn.Module] = {}  # modules resized for a task (restored after)
        self._live_model = None  # artifacts mode: the training model while a rebuilt one stands in
        self._built: dict[int, nn.Module] = {}
        self._mixed = False

    # -- what a method keeps (memory mode); override --------------------------------------
    def capture(self, strategy, model: nn.Module):
        """What the task just trained stores (default: a copy of the whole state_dict)."""
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def apply(self, strategy, model: nn.Module, state) -> None:
        """Put a task's captured state in place in ``model``."""
        load_state(model, state, self._replaced)

    def training_extra(self, strategy):
        """Training values outside the state_dict that ``apply`` changes (restored after eval)."""
        return None

    def restore_training_extra(self, strategy, extra) -> None:
        pass

    def has_state(self, label: int) -> bool:
        return label in self.task_states if self.rebuild is None else label in self._known

    def use_artifacts(self, rebuild: Callable[[int], nn.Module], labels) -> None:
        """Evaluate task ``label`` on ``rebuild(label)`` for every label in ``labels``."""
        self.rebuild, self._known = rebuild, set(labels)

    # -- Avalanche hooks -----------------------------------------------------------------
    def after_training_exp(self, strategy, **kw):
        if self.rebuild is not None:
            return
        state = self.capture(strategy, strategy.model)
        for label in experience_labels(strategy.experience):
            self.task_states[label] = state

    def before_eval(self, strategy, **kw):
        self._loaded, self._built = None, {}

    def before_eval_forward(self, strategy, **kw):
        labels = strategy.mb_task_id.unique().tolist()
        self._mixed = len(labels) > 1
        if not self._mixed:
            self.switch(strategy, labels[0])

    def after_eval_forward(self, strategy, **kw):
        if self._mixed:
            strategy.mb_output = self._grouped_forward(strategy)

    def after_eval(self, strategy, **kw):
        self.switch(strategy, None)
        self._snapshot, self._built = None, {}

    # -- switching ----------------------------------------------------------------------
    def switch(self, strategy, label) -> None:
        target = label if label is not None and self.has_state(label) else None
        if target == self._loaded:
            return
        if self.rebuild is not None:
            self._switch_model(strategy, target)
        else:
            self._switch_state(strategy, target)
        self._loaded = target

    def _switch_state(self, strategy, target) -> None:
        model = strategy.model
        if self._snapshot is None and target is not None:
            self._snapshot = ({k: v.detach().clone() for k, v in model.state_dict().items()},
                              self.training_extra(strategy))
        if target is None:
            if self._snapshot is not None:
                restore_modules(model, self._replaced)
                # strict=False: Avalanche may have added modules during the eval (a new task's head)
                model.load_state_dict(self._snapshot[0], strict=False)
                self.restore_training_extra(strategy, self._snapshot[1])
            return
        with torch.no_grad():
            self.apply(strategy, model, self.task_states[target])
        model.to(strategy.device)
        model.eval()

    def _switch_model(self, strategy, target) -> None:
        if self._live_model is None:
            self._live_model = strategy.model
        if target is None:
            strategy.model, self._live_model = self._live_model, None
            return
        if target not in self._built:
            self._built = {target: self.rebuild(target).to(strategy.device).eval()}
        strategy.model = self._built[target]

    def _grouped_forward(self, strategy) -> torch.Tensor:
        x, labels = strategy.mb_x, strategy.mb_task_id
        parts = []
        for label in labels.unique().tolist():
            sel = labels == label
            self.switch(strategy, label)
            with torch.no_grad():
                parts.append((sel, avalanche_forward(strategy.model, x[sel], labels[sel])))
        width = max(out.shape[1] for _, out in parts)
        joined = parts[0][1].new_zeros(len(x), width)
        for sel, out in parts:
            joined[sel, : out.shape[1]] = out
        return joined


# -- loading a state_dict whose head sizes differ from the model's --------------------------------
def load_state(model: nn.Module, state: dict[str, torch.Tensor], replaced: dict[str, nn.Module]) -> None:
    """``model.load_state_dict(state, strict=False)``, first resizing the Linear/NWSLinear heads
    whose stored weight has another number of outputs (originals go to ``replaced``)."""
    own = model.state_dict()
    for key, value in state.items():
        if key.endswith(".weight") and key in own and own[key].shape != value.shape:
            name = key[: -len(".weight")]
            module = model.get_submodule(name)
            replaced.setdefault(name, module)
            set_module(model, name, resized_head(module, value.shape[0]))
    model.load_state_dict(state, strict=False)


def resized_head(module: nn.Module, out_features: int) -> nn.Module:
    from .layers import NWSLinear

    device = module.weight.device
    if isinstance(module, NWSLinear):
        new = NWSLinear(module.in_features, out_features, module.pool, bias=module.bias is not None,
                        group_size=module.group_size, search_factory=module._search_factory)
    elif type(module) is nn.Linear:
        new = nn.Linear(module.in_features, out_features, bias=module.bias is not None)
    else:
        raise ValueError(f"a task's state has another shape for {type(module).__name__} weights; only "
                         f"Linear and NWSLinear heads can change size between tasks")
    return new.to(device)


def restore_modules(model: nn.Module, replaced: dict[str, nn.Module]) -> None:
    for name, module in replaced.items():
        set_module(model, name, module)
    replaced.clear()


class StrategyTaskState(PerTaskEval):
    """Per-task state defined by the strategy (``TaskIncrementalStrategy.task_state`` and
    ``load_task_extra``): the default for every method of this package."""

    def capture(self, strategy, model):
        return strategy.task_state()

    def apply(self, strategy, model, state):
        load_state(model, state["state"], self._replaced)
        strategy.load_task_extra(state.get("extra"))

    def training_extra(self, strategy):
        return strategy.task_extra()

    def restore_training_extra(self, strategy, extra):
        strategy.load_task_extra(extra)
