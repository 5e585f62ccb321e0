"""Exact nearest-pool-vector search in L2.

``nearest(w, pool)`` returns, for every row of ``w``, the index of the closest pool row, the
lowest index on exact ties, the same answer as an exhaustive float64 ``cdist`` + ``argmin``.
The fast path is a float32 GEMM; rows whose best and second-best distances are too close
for float32 to order them are re-checked exactly in float64.
"""
from __future__ import annotations

import torch

from .registry import Registry

SEARCHES: Registry = Registry("search")
_CHUNK = 1 << 16


def _top2(w: torch.Tensor, pool: torch.Tensor, pool_sq: torch.Tensor):
    # ||w-p||^2 = ||w||^2 - 2 w.p + ||p||^2; ||w||^2 is constant per row and dropped.
    d = torch.addmm(pool_sq.unsqueeze(0), w, pool.t(), beta=1.0, alpha=-2.0)
    if pool.shape[0] == 1:
        return d, torch.zeros(len(w), dtype=torch.long), torch.full((len(w),), float("inf"))
    vals, idx = torch.topk(d, 2, dim=1, largest=False, sorted=True)
    return d, idx[:, 0], vals[:, 1] - vals[:, 0]


def exact_rows(w: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Reference search: float64 distances, first index on ties."""
    return torch.cdist(w.double(), pool.double()).argmin(dim=1)


def _nearest_1d(w: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """d = 1 (1x1 convs, the head): binary search in the sorted pool, O(n log K) instead of O(nK).

    Same answer as ``exact_rows``: distances in float64, lowest index on ties (among equal pool
    values, and between the two neighbours when ``w`` lies exactly midway)."""
    p = pool[:, 0].double()
    order = torch.argsort(p, stable=True)
    sp = p[order]
    # for every sorted position, the lowest original index holding the same value
    _, run, counts = torch.unique_consecutive(sp, return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    first = order[starts][run]
    x = w[:, 0].double().contiguous()
    pos = torch.searchsorted(sp, x)
    lo = (pos - 1).clamp(min=0)
    hi = pos.clamp(max=len(sp) - 1)
    dlo, dhi = (x - sp[lo]).abs(), (x - sp[hi]).abs()
    ilo, ihi = first[lo], first[hi]
    return torch.where(dlo < dhi, ilo, torch.where(dhi < dlo, ihi, torch.minimum(ilo, ihi)))


@torch.no_grad()
def nearest(w: torch.Tensor, pool: torch.Tensor, pool_sq: torch.Tensor | None = None) -> torch.Tensor:
    w = w.detach().float()
    pool = pool.detach().float()
    if pool.shape[1] == 1 and pool.shape[0] > 1:
        return _nearest_1d(w, pool)
    if pool_sq is None:
        pool_sq = (pool * pool).sum(1)
    out = torch.empty(w.shape[0], dtype=torch.long, device=w.device)
    # float32 rounding of the GEMM is bounded by a few ulps of the magnitudes involved.
    scale = (w.abs().amax() + pool.abs().amax()).item() ** 2 * w.shape[1]
    tol = 64 * torch.finfo(torch.float32).eps * max(scale, 1e-30)
    for s in range(0, w.shape[0], _CHUNK):
        ws = w[s: s + _CHUNK]
        _, idx, gap = _top2(ws, pool, pool_sq)
        unsure = torch.nonzero(gap <= tol).flatten()
        if unsure.numel():
            idx[unsure] = exact_rows(ws[unsure], pool)
        out[s: s + _CHUNK] = idx
    return out


@SEARCHES.register("exact")
class ExactSearch:
    """Stateless exhaustive search; the per-layer searcher interface is ``search(w) -> idx``."""

    def __init__(self, pool: torch.Tensor):
        self.pool = pool
        self.pool_sq = (pool.float() ** 2).sum(1)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return nearest(w, self.pool, self.pool_sq)

    def reset(self) -> None:
        pass
