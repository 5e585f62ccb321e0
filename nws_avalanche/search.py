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
DEFAULT_SEARCH = "incremental"  # exact, and re-searches only what may have changed
_CHUNK = 1 << 16
_CANDIDATES = 2  # GEMM candidates re-scored in float64 by the incremental search


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


def _dedupe_rows(pool: torch.Tensor) -> torch.Tensor:
    """Original indices of each distinct pool row's first occurrence, ascending.

    A duplicate row is always exactly as far as its first copy, so the lowest-index rule never
    picks it; dropping duplicates keeps answers and lets ties between copies have a radius > 0.
    """
    uniq, inverse = torch.unique(pool, dim=0, return_inverse=True)
    first = torch.full((len(uniq),), pool.shape[0], dtype=torch.long, device=pool.device)
    first.scatter_reduce_(0, inverse, torch.arange(pool.shape[0], device=pool.device), reduce="amin")
    return first.sort().values


def _smallest(dist: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The m smallest entries per row, ascending (m repeated min passes: far faster than topk
    on CPU for small m; ``dist`` is overwritten)."""
    vals, tops = [], []
    for k in range(m):
        v, j = dist.min(dim=1, keepdim=True)
        vals.append(v)
        tops.append(j)
        if k + 1 < m:
            dist.scatter_(1, j, float("inf"))
    return torch.cat(vals, 1), torch.cat(tops, 1)


@SEARCHES.register("incremental")
class IncrementalSearch:
    """Exact search that only re-searches the vectors that may have changed their nearest row.

    For a vector last searched at ``a`` with nearest distance ``d1`` and second-nearest ``d2``,
    the triangle inequality gives, for any ``w`` with ``||w - a|| = delta``: the old winner is at
    most ``d1 + delta`` away and every other row at least ``d2 - delta``; so the winner cannot
    change while ``delta < (d2 - d1) / 2``. Per vector it keeps the index, a *safe* squared
    radius and the anchor ``a``; each call computes ``||w - a||^2`` and re-searches only the rows
    at or beyond their radius.

    Float rounding: a float32 GEMM proposes the two nearest rows; its error per row is bounded by
    ``tol = 2 (d+2) eps32 (|p|max^2 + 2 |w| |p|max)``. The two candidates are re-scored in
    float64 from differences (exact for float32 inputs); every other row is at least
    ``v2 - tol`` away. The radius uses an upper bound on ``d1`` and a lower bound on ``d2`` and
    keeps, at the edge of the ball, a squared gap well above the float64 reference's own
    rounding, so the reference agrees; the moved distance is inflated by its float32 error
    bound. Rows that cannot be decided this way (near-ties) are answered by the float64
    reference ``exact_rows`` and get radius 0 (re-checked every call). Duplicate pool rows are
    dropped first (``_dedupe_rows``). For ``d == 1`` (1x1 convs, the head) the sorted-pool
    search ``_nearest_1d`` (the one ``nearest`` uses) is exact and cheap, so it runs on every call. Answers equal
    ``exact_rows`` (float64 ``cdist`` + ``argmin``, lowest index on ties).
    """

    def __init__(self, pool: torch.Tensor):
        self.pool = pool
        self._ready = False  # tables are built on first use: skeletons that only load indices skip it
        self.last_searched = 0  # rows re-searched by the last call (for benchmarks)
        self.reset()

    def _prepare(self) -> None:
        full = self.pool.detach().float()
        self._full = full
        self._keep = _dedupe_rows(full)
        self._pool = full[self._keep].contiguous()
        self._pool_t = self._pool.t().contiguous()
        self._pool_sq = (self._pool * self._pool).sum(1)
        self._pool64 = self._pool.double()
        self._pnorm = float(self._pool64.norm(dim=1).max()) if self._pool.numel() else 0.0
        d = full.shape[1]
        self._gemm_c = 2 * (d + 2) * torch.finfo(torch.float32).eps
        self._slack = 1.0 + 4 * (d + 4) * torch.finfo(torch.float32).eps
        self._one_d = d == 1 and self._pool.shape[0] > 1
        self._ready = True

    def reset(self) -> None:
        self._anchor = self._idx = self._r2 = None

    @torch.no_grad()
    def _search_rows(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, d = w.shape
        idx = torch.zeros(n, dtype=torch.long, device=w.device)
        r2 = torch.zeros(n, dtype=torch.float32, device=w.device)
        if n == 0:
            return idx, r2
        if self._pool.shape[0] == 1:
            return idx.fill_(int(self._keep[0])), r2.fill_(float("inf"))
        m = min(_CANDIDATES, self._pool.shape[0])
        for s in range(0, n, _CHUNK):
            ws = w[s: s + _CHUNK]
            dist = torch.addmm(self._pool_sq.unsqueeze(0), ws, self._pool_t, beta=1.0, alpha=-2.0)
            vals, top = _smallest(dist, m)
            del dist
            # Exact-enough float64 distances to the m GEMM candidates (differences of float32
            # values are exact in float64), sorted by (distance, original index).
            w64 = ws.double()
            wsq = (w64 * w64).sum(1)
            # GEMM error bound per row: (d+2) eps (||p||^2 + 2 ||w|| ||p||), doubled for safety
            tol = self._gemm_c * (self._pnorm ** 2 + 2 * wsq.sqrt() * self._pnorm) + 1e-300
            cand = (w64.unsqueeze(1) - self._pool64[top]).pow_(2).sum(-1)
            orig = self._keep[top]
            key_order = torch.argsort(orig, dim=1)
            cand, orig = cand.gather(1, key_order), orig.gather(1, key_order)
            best_d, best_j = cand.min(dim=1)                  # first minimum = lowest index
            out = orig.gather(1, best_j.unsqueeze(1)).squeeze(1)
            second = cand.scatter(1, best_j.unsqueeze(1), float("inf")).min(dim=1).values
            # every row outside the candidates is at least this far (squared)
            outside = (vals[:, -1].double() + wsq - tol).clamp_min(0)
            if m == self._pool.shape[0]:
                outside = torch.full_like(outside, float("inf"))
            eps64 = 64 * d * torch.finfo(torch.float64).eps * (wsq.sqrt() + self._pnorm) ** 2
            near = torch.minimum(second, outside)
            sure = (best_d < outside) & (near - best_d > 4 * eps64)
            u1 = (best_d + eps64).sqrt()
            l2 = (near - eps64).clamp_min(0).sqrt()
            room = l2 - u1 - 4 * eps64 / (l2 + u1).clamp_min(1e-300)
            rad = (room.clamp_min(0) * 0.5 * (1 - 1e-6)) ** 2
            rad = torch.where(sure, rad, torch.zeros_like(rad))
            unsure = torch.nonzero(~sure).flatten()
            if unsure.numel():
                out[unsure] = exact_rows(ws[unsure], self._full)
            idx[s: s + _CHUNK] = out
            r2[s: s + _CHUNK] = rad.float()
        return idx, r2

    @torch.no_grad()
    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        w = w.detach().float()
        if not self._ready:
            self._prepare()
        if self._one_d:  # exact and O(n log K): cheaper than tracking radii
            self.last_searched = w.shape[0]
            return _nearest_1d(w, self._full)
        if self._anchor is None or self._anchor.shape != w.shape or self._anchor.device != w.device:
            self._idx, self._r2 = self._search_rows(w)
            self._anchor = w.clone()
            self.last_searched = w.shape[0]
            return self._idx.clone()
        moved = torch.sub(w, self._anchor).pow_(2).sum(1).mul_(self._slack)
        # written as "not inside" so that NaN movement also triggers a search
        redo = torch.nonzero(~(moved < self._r2)).flatten()
        self.last_searched = int(redo.numel())
        if self.last_searched:
            rows = w.index_select(0, redo)
            idx, r2 = self._search_rows(rows)
            self._idx[redo] = idx
            self._r2[redo] = r2
            self._anchor[redo] = rows
        return self._idx.clone()
