"""Where an NWS training step's time goes: process CPU time per part, per step.

Inside ``timers(model)`` every NWS layer's parts are timed into the yielded clock (the training
loop adds its optimiser and commitment-sum time itself); ``summarise`` turns the clock and the
steps' total CPU time into each part's CPU time per step:

- ``search``: the layers' searches;
- ``quantise``: building ``q = pool[idx]`` (``NWSConv2d._quantised``; on CPU ``q`` is read from the
  pool inside the straight-through loops, so this part is 0 there);
- ``straight_through``: ``w + sg(q - w)`` and the commitment term, forward and backward, and
  ``commitment_loss`` (summing the layers' terms);
- ``bookkeeping``: the rest of the NWS layers' forward (index copies, views, Python per layer);
- ``optimiser``: ``zero_grad`` + ``step``;
- ``plain_work``: everything else (convolutions, BatchNorm, activations, loss, autograd), the
  part a plain network has too.

The timers wrap instance attributes (``forward``, ``search``, ``_quantised``, ``_conv``) and swap
the straight-through function for a timed subclass, all undone on exit, so the model is unchanged
afterwards. Timers cost ~1 us per call (a few hundred per step): measure ratios with untimed
steps, read the parts from timed ones. CPU time is the process's (all threads): on 2 threads it
also counts torch's OpenMP workers spinning while the main thread runs serial NWS work.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch.nn as nn

from ..method import layers as nws_layers_mod
from ..method.layers import nws_layers

PARTS = ("search", "quantise", "straight_through", "bookkeeping", "optimiser", "plain_work")


class _Clock:
    def __init__(self):
        self.parts = dict.fromkeys(PARTS + ("layer_forward", "conv", "st_forward"), 0.0)

    def timed(self, part, fn):
        parts = self.parts

        def wrapper(*args, **kwargs):
            t = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[part] += time.process_time() - t
        return wrapper


class _TimedSearch:
    """The layer's searcher, timed; its counters (``calls``, ``changed``) stay readable, so the
    layer patches ``q`` as it does untimed."""

    def __init__(self, inner, parts):
        self.inner, self.parts = inner, parts

    def __call__(self, w):
        t = time.process_time()
        try:
            return self.inner(w)
        finally:
            self.parts["search"] += time.process_time() - t

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _timed_function(base, clock: _Clock):
    """A subclass of the autograd function ``base`` whose forward and backward are timed."""

    class Timed(base):
        @staticmethod
        def forward(ctx, *args):
            t = time.process_time()
            try:
                return base.forward(ctx, *args)
            finally:
                t = time.process_time() - t
                clock.parts["straight_through"] += t
                clock.parts["st_forward"] += t

        @staticmethod
        def backward(ctx, *grads):
            t = time.process_time()
            try:
                return base.backward(ctx, *grads)
            finally:
                clock.parts["straight_through"] += time.process_time() - t
    return Timed


_FUNCTIONS = ("_StraightThrough", "_StraightThroughRows")


@contextmanager
def timers(model: nn.Module):
    """Timers around the NWS parts of ``model``'s layers; yields the clock."""
    clock = _Clock()
    layers = [m for _, m in nws_layers(model)]
    bases = {name: getattr(nws_layers_mod, name) for name in _FUNCTIONS}
    saved = []  # (a model without NWS layers leaves the straight-through function alone)
    for m in layers:
        saved.append((m, {k: m.__dict__.get(k) for k in ("forward", "_quantised", "_conv")}, m.search))
        m.forward = clock.timed("layer_forward", m.forward)
        m._quantised = clock.timed("quantise", m._quantised)
        m._conv = clock.timed("conv", m._conv)
        m.search = _TimedSearch(m.search, clock.parts)
    if layers:
        for name, base in bases.items():
            setattr(nws_layers_mod, name, _timed_function(base, clock))
    try:
        yield clock
    finally:
        if layers:
            for name, base in bases.items():
                setattr(nws_layers_mod, name, base)
        for m, attrs, search in saved:
            for k, v in attrs.items():
                if v is None:
                    m.__dict__.pop(k, None)
                else:
                    m.__dict__[k] = v
            m.search = search


def summarise(clock: _Clock, total: float, steps: int) -> dict:
    """CPU seconds per step of each part (``PARTS``) and ``total`` (the steps' summed CPU time)."""
    p = clock.parts
    out = {"search": p["search"], "quantise": p["quantise"], "straight_through": p["straight_through"],
           "optimiser": p["optimiser"]}
    # the layers' forward minus what is counted elsewhere (the straight-through forward runs inside it)
    out["bookkeeping"] = max(p["layer_forward"] - p["search"] - p["quantise"] - p["conv"] - p["st_forward"], 0.0)
    out["plain_work"] = total - sum(out.values())
    out = {k: out[k] / steps for k in PARTS}
    out["total"] = total / steps
    return out
