"""Pools learnt by exponential-moving-average vector quantisation (online k-means over kernels).

After every optimiser step, for each NWS layer with pool ``P`` (``K x d``) and its ``n`` kernel
vectors (the temporary weights, cut as the layer cuts them), per entry ``k``::

    N_k <- decay * N_k + (1 - decay) * n_k            n_k: kernels assigned to k
    m_k <- decay * m_k + (1 - decay) * s_k            s_k: sum of those kernels
    N~_k = (N_k + eps) / (n + K * eps) * n            Laplace smoothing, n = sum_k N_k
    P_k  = m_k / N~_k

Which assignment gives ``n_k`` and ``s_k`` (``EMAConfig.stats``):

- ``forward`` (default, as the authors' ``models/quantizer.py``): the assignment the layer made in
  the training forward pass, with the kernels as they were then (before the optimiser step);
  accumulated by a forward hook over the forward passes since the last update and applied by
  ``update()`` after the step. No second search.
- ``post_step``: the kernels after the optimiser step, searched again in ``update()``.

Initial state (``EMAConfig.prior``): ``uniform`` (default) ``N_k = n / K``, ``m_k = N_k * P_k``, so
the first updates move every entry only by its own statistics; ``zero`` is the authors'
(``Quantize.__init__``: ``cluster_size`` 0, ``embed_avg`` = the pool), under which the first
update divides an entry no kernel chose by about ``eps``: its vector jumps ~``1/eps`` times away
and stays unused for hundreds of steps (their code never revives it).
``update()`` without a training forward pass since the last one (e.g. called by hand) uses the
current kernels and their current assignment.

Everything here runs in float32 with autocast off, whatever precision the forward pass uses.

Dead entries are revived (rule): after the update, an entry whose EMA count ``N_k`` is below
``revive_fraction * n / K`` (a small fraction of the count it would have if all entries were
used equally) is dead. Dead entries, lowest index first, are re-seeded with the kernels that are
currently farthest from their assigned vector, largest error first, taken only from clusters
that hold at least two kernels (so no kernel is stolen from an entry it has alone). A revived
entry's statistics restart at the average count: ``N_k = n / K``, ``m_k = N_k * kernel``, so that
``P_k`` equals the kernel and is not revived again before it has had time to attract kernels.

The statistics depend only on the weights, not on the data, and DDP keeps the weights identical
on every rank, so no statistic has to be summed across ranks (summing would count every kernel
``world_size`` times). ``broadcast`` copies rank 0's pools and statistics to the others after each
update, so the pools stay bit-identical even if ranks' float rounding ever differed.

Revival (our fix: the authors' code never revives) uses the kernels and assignment that gave the
statistics; in ``forward`` mode, when some entry is dead, the current kernels searched in the pool
as it was before the update.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..method.layers import NWSConv2d, nws_layers
from ..method.search import nearest


STATS = ("forward", "post_step")
PRIORS = ("uniform", "zero")


@dataclass
class EMAConfig:
    decay: float = 0.99
    eps: float = 1e-5
    revive_fraction: float = 0.03  # dead: N_k < revive_fraction * n / K; 0 disables revival
    stats: str = "forward"         # forward (the authors') | post_step
    prior: str = "uniform"         # initial EMA state: uniform (N = n/K, m = N P) | zero (the authors': N = 0, m = P)

    def __post_init__(self):
        if self.stats not in STATS:
            raise ValueError(f"stats must be one of {STATS}, got {self.stats!r}")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior!r}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")


@dataclass
class LayerStats:
    N: torch.Tensor  # [K] EMA counts
    m: torch.Tensor  # [K, d] EMA kernel sums
    acc_n: torch.Tensor | None = None  # forward mode: n_k, s_k accumulated since the last update
    acc_s: torch.Tensor | None = None


def assignment_stats(vectors: torch.Tensor, pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(assignment, n_k, s_k) of ``vectors`` to ``pool``, float32."""
    v = vectors.detach().float()
    a = nearest(v, pool)
    K = pool.shape[0]
    counts = torch.bincount(a, minlength=K).float()
    sums = torch.zeros(K, v.shape[1], device=v.device).index_add_(0, a, v)
    return a, counts, sums


def smoothed_pool(N: torch.Tensor, m: torch.Tensor, eps: float) -> torch.Tensor:
    n = N.sum()
    K = N.shape[0]
    N_s = (N + eps) / (n + K * eps) * n
    return m / N_s[:, None]


class PoolEMA:
    """EMA state of every NWS layer of ``model``; ``update()`` after each optimiser step."""

    def __init__(self, model: nn.Module, cfg: EMAConfig | None = None):
        self.cfg = cfg or EMAConfig()
        self.layers: list[tuple[str, NWSConv2d]] = nws_layers(model)
        self.stats: dict[str, LayerStats] = {}
        for name, m in self.layers:
            pool = m.pool.detach().float()
            if self.cfg.prior == "zero":  # the authors': cluster_size = 0, embed_avg = the pool
                self.stats[name] = LayerStats(torch.zeros(m.pool_size, device=pool.device), pool.clone())
                continue
            start = m.num_vectors / m.pool_size  # uniform prior: makes the first P equal to the pool
            N = torch.full((m.pool_size,), start, device=pool.device)
            self.stats[name] = LayerStats(N, pool * start)
        self.revived: dict[str, int] = {name: 0 for name, _ in self.layers}
        self._hooks = []
        if self.cfg.stats == "forward":
            for name, m in self.layers:
                self._hooks.append(m.register_forward_hook(self._accumulate_hook(name)))

    def _accumulate_hook(self, name: str):
        @torch.no_grad()
        def hook(layer, args, out):
            if not layer.training:
                return
            st = self.stats[name]
            with torch.autocast(layer.pool.device.type, enabled=False):
                vecs = layer.vectors().detach().float()
                idx = layer.indices  # the assignment this forward pass used
                n = torch.bincount(idx, minlength=layer.pool_size).float()
                if st.acc_n is None:
                    st.acc_n, st.acc_s = n, torch.zeros_like(st.m).index_add_(0, idx, vecs)
                else:
                    st.acc_n.add_(n)
                    st.acc_s.index_add_(0, idx, vecs)
        return hook

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @torch.no_grad()
    def update(self) -> dict[str, int]:
        """One EMA step on every layer; returns the number of pool vectors used per layer."""
        used = {}
        device_type = self.layers[0][1].pool.device.type if self.layers else "cpu"
        with torch.autocast(device_type, enabled=False):  # distances and statistics in float32
            for name, layer in self.layers:
                used[name] = self._update_layer(name, layer)
        return used

    def _update_layer(self, name: str, layer: NWSConv2d) -> int:
        c, st = self.cfg, self.stats[name]
        vecs = layer.vectors().detach().float()
        old_pool = layer.pool  # replaced only at the end
        assigned = None
        if st.acc_n is not None:  # forward mode: what the forward passes saw
            counts, sums = st.acc_n, st.acc_s
            st.acc_n = st.acc_s = None
        else:
            assigned = assignment_stats(vecs, old_pool)
            _, counts, sums = assigned
        st.N.mul_(c.decay).add_(counts, alpha=1 - c.decay)
        st.m.mul_(c.decay).add_(sums, alpha=1 - c.decay)
        pool = smoothed_pool(st.N, st.m, c.eps)
        if c.revive_fraction > 0:
            n, K = vecs.shape[0], pool.shape[0]
            dead = torch.nonzero(st.N < c.revive_fraction * n / K).flatten()
            if dead.numel():
                a, now_counts, _ = assigned if assigned is not None else assignment_stats(vecs, old_pool)
                self.revived[name] += self._revive(st, pool, vecs, a, now_counts, dead)
        layer.pool.copy_(pool)
        layer.reset_search()
        return int((counts > 0).sum())

    def _revive(self, st: LayerStats, pool: torch.Tensor, vecs: torch.Tensor, a: torch.Tensor,
                counts: torch.Tensor, dead: torch.Tensor) -> int:
        n, K = vecs.shape[0], pool.shape[0]
        shared = counts[a] >= 2
        err = (vecs - pool[a]).pow(2).sum(1)
        err = torch.where(shared, err, torch.full_like(err, -1.0))
        take = min(dead.numel(), int(shared.sum()))
        if take == 0:
            return 0
        far = torch.topk(err, take, largest=True, sorted=True).indices
        dead = dead[:take]
        start = n / K
        pool[dead] = vecs[far]
        st.N[dead] = start
        st.m[dead] = vecs[far] * start
        return take

    def broadcast(self, src: int = 0) -> None:
        """Make every rank's pools and statistics rank ``src``'s (no-op without a process group)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        for name, layer in self.layers:
            st = self.stats[name]
            flat = torch.cat([layer.pool.reshape(-1), st.N, st.m.reshape(-1)])
            dist.broadcast(flat, src)
            P, K = layer.pool.numel(), st.N.numel()
            layer.pool.copy_(flat[:P].view_as(layer.pool))
            st.N.copy_(flat[P:P + K])
            st.m.copy_(flat[P + K:].view_as(st.m))
            layer.reset_search()

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"cfg": vars(self.cfg), "revived": dict(self.revived),
                "stats": {k: {"N": s.N.cpu(), "m": s.m.cpu()} for k, s in self.stats.items()}}

    def load_state_dict(self, state: dict) -> None:
        for name, s in state["stats"].items():
            st = self.stats[name]
            st.N.copy_(s["N"])
            st.m.copy_(s["m"])
        self.revived.update(state.get("revived", {}))
