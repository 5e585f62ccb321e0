"""``FiniteGuard``: stops a task whose loss or weights stop being finite (a diverging run).

It checks the loss after every backward pass (so the step that would spread the NaN into the
weights never runs) and the weights and BN statistics after every epoch, and raises
``DivergedError`` naming the task, epoch and iteration. The runner then marks the run failed with
that message; earlier tasks' files and the checkpoint are untouched, as the task never exported.
``allow_nonfinite=true`` turns the stop into a single warning per task.
"""
from __future__ import annotations

import sys

import torch
from avalanche.core import SupervisedPlugin

from ..common.errors import DivergedError


def first_nonfinite(model: torch.nn.Module) -> str | None:
    """The name of the first parameter or floating buffer holding a NaN or an inf, else None."""
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


class FiniteGuard(SupervisedPlugin):
    def __init__(self, allow: bool = False):
        super().__init__()
        self.allow = allow
        self.warned = False

    @staticmethod
    def _where(strategy, epoch_end: bool = False) -> str:
        # task as in the artifact names (task000 = task 0); epoch and iteration counted from 1.
        # Avalanche's clock is the last plugin: here it still counts the current epoch as unfinished.
        clock = strategy.clock
        where = (f"task {strategy.experience.current_experience}, epoch {clock.train_exp_epochs + 1} of "
                 f"{strategy.train_epochs}")
        if epoch_end:
            return f"{where}, after its last iteration ({clock.train_epoch_iterations})"
        return f"{where}, iteration {clock.train_epoch_iterations + 1}"

    def _found(self, strategy, what: str, epoch_end: bool = False) -> None:
        where = self._where(strategy, epoch_end)
        if not self.allow:
            raise DivergedError(
                f"{where}: {what}; training diverged (lr={strategy.cfg.lr:g}). This task wrote nothing; earlier "
                f"tasks' files and the checkpoint are kept. Lower lr (a changed config needs --overwrite, or "
                f"another --out), or set allow_nonfinite=true to go on regardless")
        if not self.warned:
            self.warned = True
            print(f"warning: {where}: {what}; continuing because allow_nonfinite=true", file=sys.stderr)

    def before_training_exp(self, strategy, **kw):
        self.warned = False

    def after_backward(self, strategy, **kw):
        # after every before_backward hook has added its term (e.g. NWS's commitment loss)
        if not bool(torch.isfinite(strategy.loss.detach()).all()):
            self._found(strategy, f"the loss is {float(strategy.loss.detach().sum())}")

    def after_training_epoch(self, strategy, **kw):
        name = first_nonfinite(strategy.model)
        if name is not None:
            self._found(strategy, f"{name} holds non-finite values", epoch_end=True)
