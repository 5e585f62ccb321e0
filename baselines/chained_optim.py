"""``ChainedOptimizer``: several torch optimisers stepped as one (e.g. Adam for masks, SGD for a head).

Avalanche and the LR schedule see one ``torch.optim.Optimizer`` whose ``param_groups`` are the
inner optimisers' own group dicts, so an LR scheduler's changes reach the inner optimisers.
"""
from __future__ import annotations

import torch


class ChainedOptimizer(torch.optim.Optimizer):
    def __init__(self, optimizers):
        self.optimizers = [o for o in optimizers if o is not None]
        params = [p for o in self.optimizers for g in o.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        parts = [o.state_dict() for o in self.optimizers]
        return {"state": {}, "param_groups": [g for p in parts for g in p["param_groups"]], "parts": parts}

    def load_state_dict(self, state_dict):
        parts = state_dict.get("parts", [])
        if len(parts) != len(self.optimizers):
            raise ValueError(f"state holds {len(parts)} optimisers, this one chains {len(self.optimizers)}")
        for o, part in zip(self.optimizers, parts):
            o.load_state_dict(part)
