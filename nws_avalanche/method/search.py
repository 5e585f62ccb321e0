"""Exact nearest-pool-vector search in L2.

``nearest(w, pool)`` returns, for every row of ``w``, the index of the closest pool row, the
lowest index on exact ties, the same answer as an exhaustive float64 ``cdist`` + ``argmin``.
The fast path is a float32 GEMM; rows whose best and second-best distances are too close
for float32 to order them are re-checked exactly in float64.
"""
from __future__ import annotations

import torch

from . import cpu_loops
from ..common.registry import Registry

SEARCHES: Registry = Registry("search")
DEFAULT_SEARCH = "incremental"  # exact, and re-searches only what may have changed
_CHUNK = 1 << 16
_FULL_CHUNK = 4096  # rows per GEMM block of the incremental search: the block stays in cache
_CANDIDATES = 8     # nearest rows remembered per vector by the incremental search
_GAP_TABLE_MAX = 2048  # largest pool whose pairwise distances are tabulated (16 MiB)


def _top2(w: torch.Tensor, pool: torch.Tensor, pool_sq: torch.Tensor):
    # ||w-p||^2 = ||w||^2 - 2 w.p + ||p||^2; ||w||^2 is constant per row and dropped.
    d = torch.addmm(pool_sq.unsqueeze(0), w, pool.t(), beta=1.0, alpha=-2.0)
    if pool.shape[0] == 1:
        return (d, torch.zeros(len(w), dtype=torch.long, device=w.device),
                torch.full((len(w),), float("inf"), device=w.device))
    vals, idx = torch.topk(d, 2, dim=1, largest=False, sorted=True)
    return d, idx[:, 0], vals[:, 1] - vals[:, 0]


def exact_rows(w: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Reference search: float64 distances, first index on ties."""
    return torch.cdist(w.double(), pool.double()).argmin(dim=1)


def _f32_above(x: torch.Tensor) -> torch.Tensor:
    """The smallest float32 strictly greater than each float64 ``x``."""
    f = x.float()
    return torch.where(f.double() <= x, torch.nextafter(f, torch.full_like(f, float("inf"))), f)


def _f32_below(x: torch.Tensor) -> torch.Tensor:
    f = x.float()
    return torch.where(f.double() >= x, torch.nextafter(f, torch.full_like(f, -float("inf"))), f)


class _SortedPool1D:
    """d = 1 (1x1 convs, the head): binary search in the sorted pool, O(n log K) instead of O(nK).

    Same answer as ``exact_rows``: distances in float64 (exact for float32 inputs), lowest index on
    ties (among equal pool values, and between the two neighbours when ``w`` lies exactly midway).
    ``lo``/``hi`` bound each winner's cell in float32, strictly inside it, so that a caller can
    tell with two comparisons that a value has not left its cell."""

    def __init__(self, pool: torch.Tensor):
        p = pool[:, 0].double()
        order = torch.argsort(p, stable=True)
        vals, counts = torch.unique_consecutive(p[order], return_counts=True)
        self.values = vals
        self.first = order[torch.cumsum(counts, 0) - counts]  # lowest original index per value
        inf = torch.full((1,), float("inf"), dtype=torch.float64, device=p.device)
        mids = (vals[:-1] + vals[1:]) / 2  # exact: float32 inputs
        self.lo = _f32_above(torch.cat([-inf, mids]))
        self.hi = _f32_below(torch.cat([mids, inf]))

    def search(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(indices, cell low, cell high); a tie gets an empty cell, so it is re-checked every time."""
        x = w[:, 0].double()
        last = len(self.values) - 1
        pos = torch.searchsorted(self.values, x)
        lo, hi = (pos - 1).clamp(min=0), pos.clamp(max=last)
        dlo, dhi = (x - self.values[lo]).abs(), (x - self.values[hi]).abs()
        cell = torch.where(dlo <= dhi, lo, hi)
        tie = (dlo == dhi) & (lo != hi)
        idx = torch.where(tie, torch.minimum(self.first[lo], self.first[hi]), self.first[cell])
        clo = torch.where(tie, torch.full_like(x, float("inf")).float(), self.lo[cell])
        chi = torch.where(tie, torch.full_like(x, -float("inf")).float(), self.hi[cell])
        return idx, clo, chi


def _nearest_1d(w: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    return _SortedPool1D(pool).search(w)[0]


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


@SEARCHES.register("incremental")
class IncrementalSearch:
    """Exact search that only re-searches the vectors that may have changed their nearest row.

    Per vector it keeps an anchor ``a`` (where it was last decided), its nearest row ``b``, a
    *safe* radius, its ``M`` nearest rows at the last full search (the candidates) and a lower
    bound ``L`` on the distance from ``a`` to every other row. With ``delta = ||w - a||``:

    1. ``delta`` below the safe radius: nothing can have changed (most vectors, most steps; one
       pass over the weights). For ``w = a + e``, ``||w-p_j||^2 - ||w-p_b||^2 = c_j - c_b +
       2 e.(p_b - p_j)`` (``c``: squared distances at ``a``), so ``b`` stays nearest while
       ``delta < (c_j - c_b) / (2 ||p_b - p_j||)`` for every candidate ``j`` (the distance to
       the Voronoi face) and ``delta < (L - sqrt(c_b)) / 2`` for the rest (triangle inequality);
    2. otherwise the candidates are re-scored at ``w`` (``M * d`` work per vector); every other
       row is at least ``L - delta`` away, so if the best candidate beats that bound it is the
       answer; ``a`` moves to ``w``, ``L`` becomes ``L - delta`` and the radius is recomputed;
    3. otherwise (rare once training settles) a full search: a float32 GEMM against the pool, its
       ``M`` smallest entries re-scored in float64.

    Float rounding: the GEMM's error per entry is bounded by
    ``tol = 2 (d+2) eps32 (|p|max^2 + 2 |w| |p|max)``; re-scored distances carry a relative error
    bound (float32: ``2 (d+3) eps32``; float64 from exact differences: covered by the margin
    below). Radii and bounds use upper bounds on the winner's distance, lower bounds on the
    others' and keep a squared gap well above the float64 reference's own rounding
    (``64 d eps64 (|w| + |p|max)^2``), so the reference agrees; the moved distance is inflated
    by its float32 error bound. Rows that cannot be decided this way (near-ties) are answered
    by the float64 reference ``exact_rows`` and get radius 0 (re-checked every call). Duplicate
    pool rows are dropped first (``_dedupe_rows``). For ``d == 1`` the sorted-pool search
    (``_SortedPool1D``) is exact; each value keeps its cell's float32 bounds and only values
    that left their cell are searched again. Answers equal ``exact_rows`` (float64 ``cdist`` +
    ``argmin``, lowest index on ties).
    """

    def __init__(self, pool: torch.Tensor, candidates: int = _CANDIDATES):
        self.pool = pool
        self.candidates = max(1, int(candidates))
        self._ready = False  # tables are built on first use: skeletons that only load indices skip it
        self.last_searched = 0  # rows fully searched by the last call (for benchmarks)
        self.last_rescored = 0  # rows whose candidates were re-scored by the last call
        self.calls = 0        # with ``changed``: lets a caller patch what it derived from the answers
        self.changed = None   # rows whose answer may differ from the previous call's (None: unknown)
        self.reset()

    def _prepare(self) -> None:
        full = self.pool.detach().float()
        self._full = full
        d = full.shape[1]
        self._one_d = d == 1 and full.shape[0] > 1
        if self._one_d:
            self._sorted = _SortedPool1D(full)
            self._ready = True
            return
        self._keep = _dedupe_rows(full)
        self._pool = full[self._keep].contiguous()
        kd = self._pool.shape[0]
        self._pool_t = self._pool.t().contiguous()
        self._pool_sq = (self._pool * self._pool).sum(1)
        self._pool64 = self._pool.double()
        # index kd means "no candidate": infinitely far
        self._pool_pad = torch.cat([self._pool, torch.full((1, d), float("inf"), device=full.device)])
        self._pool64_pad = self._pool_pad.double()
        if kd <= _GAP_TABLE_MAX:
            # pairwise row distances, rounded up, for the Voronoi-face radius (sentinel: 1, any
            # finite); from differences (the GEMM form's cancellation would shrink close gaps)
            gaps = torch.cdist(self._pool64, self._pool64, compute_mode="donot_use_mm_for_euclid_dist")
            gaps = gaps.mul_(1 + 1e-9).float().mul_(1 + 1e-6)
            self._gaps = torch.nn.functional.pad(gaps, (0, 1, 0, 1), value=1.0)
        else:  # K x K would not fit in cache (or memory): faces bounded by the triangle inequality
            self._gaps = torch.zeros(1, 1, device=full.device)
        self._gaps_flat = self._gaps.view(-1)
        self._gaps_stride = kd + 1
        self._pnorm = float(self._pool64.norm(dim=1).max()) if self._pool.numel() else 0.0
        eps32, eps64 = torch.finfo(torch.float32).eps, torch.finfo(torch.float64).eps
        self._gemm_c = 2 * (d + 2) * eps32
        self._rel32 = 2 * (d + 3) * eps32  # float32 re-scoring's relative error, doubled
        self._slack = 1.0 + 4 * (d + 4) * eps32
        self._eps64 = 64 * d * eps64
        self._ready = True

    def reset(self) -> None:
        self._anchor = self._idx = self._r2 = self._cand = self._bound = None
        self._lo = self._hi = self._buf = self._moved = None
        self._views = None  # cpu_loops.TrackState of the state above

    def _decide(self, cand, cand_d, rel, outside):
        """The nearest candidate, whether that is sure, and its safe squared radius.

        ``cand``: candidate rows (deduplicated-pool indices, ``kd`` = none), ``cand_d``: their
        squared distances (float32 or float64), each within a relative ``rel`` of the truth;
        ``outside``: a lower bound (same dtype) on the squared distance to every other row.
        Every rounding of this arithmetic is absorbed by the factors ``1 +- few ulps``."""
        e = torch.finfo(cand_d.dtype).eps
        best_d, best_j = cand_d.min(dim=1)
        hi_b = best_d * (1 + rel + 2 * e)
        # the reference's own float64 rounding: |w| <= |p_b| + d_b bounds the magnitudes
        e64 = self._eps64 * (hi_b.sqrt() + 2 * self._pnorm) ** 2
        hi_m = hi_b + 8 * e64
        lo = cand_d.mul(1 - rel - 2 * e)
        lo.scatter_(1, best_j.unsqueeze(1), float("inf"))
        second = lo.amin(dim=1)
        sure = (hi_m < second) & (hi_m < outside)
        # candidates: distance from w to each Voronoi face (b, j)
        b = cand.gather(1, best_j.unsqueeze(1)).long()
        if self._gaps.shape[0] > 1:
            gaps = self._gaps_flat.index_select(0, (b * self._gaps_stride + cand).view(-1)).view(cand.shape)
        else:  # |p_b - p_j| <= |w - p_b| + |w - p_j|
            gaps = (hi_b.unsqueeze(1).sqrt() + (cand_d * (1 + rel + 2 * e)).sqrt()) * (1 + 4 * e)
            gaps = torch.where(cand_d.isinf(), torch.ones_like(gaps), gaps)  # padding: inf / 1
        face = (lo - hi_m.unsqueeze(1)).div_(gaps).amin(dim=1) * (0.5 * (1 - 8 * e))
        # every other row: triangle inequality
        u1 = (hi_b + e64).sqrt() * (1 + 2 * e)
        l2 = (outside - e64).clamp_min(0).sqrt() * (1 - 2 * e)
        rest = (l2 - u1 - 4 * e64 / (l2 + u1).clamp_min(1e-30)) * (0.5 * (1 - 4 * e))
        rad = torch.minimum(face, rest).clamp_min(0)
        rad = (rad * rad * (1 - 4 * e)).float()
        return best_j, sure, torch.where(sure, rad, torch.zeros_like(rad))

    @torch.no_grad()
    def _search_rows(self, w: torch.Tensor):
        """Full search: (index, safe squared radius, candidates, bound on the rest)."""
        n, d = w.shape
        kd = self._pool.shape[0]
        m = min(self.candidates, kd)
        idx = torch.zeros(n, dtype=torch.long, device=w.device)
        r2 = torch.zeros(n, dtype=torch.float32, device=w.device)
        cand = torch.full((n, self.candidates), kd, dtype=torch.int32, device=w.device)
        bound = torch.zeros(n, dtype=torch.float64, device=w.device)
        for s in range(0, n, _FULL_CHUNK):
            ws = w[s: s + _FULL_CHUNK]
            dist = torch.addmm(self._pool_sq.unsqueeze(0), ws, self._pool_t, beta=1.0, alpha=-2.0)
            vals, top = torch.topk(dist, m, dim=1, largest=False, sorted=True)
            del dist
            w64 = ws.double()
            wsq = (w64 * w64).sum(1)
            tol = self._gemm_c * (self._pnorm ** 2 + 2 * wsq.sqrt() * self._pnorm) + 1e-300
            cand_d = (w64.unsqueeze(1) - self._pool64[top]).pow_(2).sum(-1)
            top = top.int()
            if m == kd:
                outside = torch.full_like(wsq, float("inf"))
            else:  # every row outside the candidates is at least this far (squared)
                outside = (vals[:, -1].double() + wsq - tol).clamp_min(0)
            best_j, sure, rad = self._decide(top, cand_d, 0.0, outside)
            out = self._keep[top.gather(1, best_j.unsqueeze(1)).squeeze(1).long()]
            unsure = torch.nonzero(~sure).flatten()
            if unsure.numel():
                out[unsure] = exact_rows(ws[unsure], self._full)
            idx[s: s + _FULL_CHUNK] = out
            r2[s: s + _FULL_CHUNK] = rad
            cand[s: s + _FULL_CHUNK, :m] = top
            bound[s: s + _FULL_CHUNK] = outside.sqrt()
        return idx, r2, cand, bound

    @torch.no_grad()
    def _rescore(self, w: torch.Tensor, rows: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Tier 2 for ``rows`` (values ``w``, moved by at most ``delta``): settle those whose
        candidates decide them; return the positions (in ``rows``) still needing a full search."""
        old = self._bound.index_select(0, rows)
        e = 4 * torch.finfo(torch.float64).eps
        bound = old * (1 - e) - delta * (1 + e)  # (not old - delta - e (old + delta): old may be inf)
        outside = (bound.clamp_min(0) ** 2).float() * (1 - 2 * torch.finfo(torch.float32).eps)
        cand = self._cand.index_select(0, rows)
        n, m = cand.shape
        # float32 differences, squared and summed: within a relative rel32 of the exact distance
        cand_d = self._pool_pad.index_select(0, cand.view(-1)).view(n, m, -1)
        cand_d = cand_d.sub_(w.unsqueeze(1)).square_().sum(-1)
        best_j, sure, rad = self._decide(cand, cand_d, self._rel32, outside)
        ok = torch.nonzero(sure).flatten()
        done = rows.index_select(0, ok)
        win = cand.gather(1, best_j.unsqueeze(1)).squeeze(1).index_select(0, ok)
        self._idx.index_copy_(0, done, self._keep.index_select(0, win))
        self._r2.index_copy_(0, done, rad.index_select(0, ok))
        self._bound.index_copy_(0, done, bound.index_select(0, ok))
        self._anchor.index_copy_(0, done, w.index_select(0, ok))
        return torch.nonzero(~sure).flatten()

    def _call_1d(self, w: torch.Tensor) -> torch.Tensor:
        if self._idx is None or self._idx.shape[0] != w.shape[0] or self._idx.device != w.device:
            self._idx, self._lo, self._hi = self._sorted.search(w)
            self.last_searched = w.shape[0]
            return self._idx.clone()
        x = w[:, 0]
        if cpu_loops.usable(x, self._lo, self._hi):
            self.changed = cpu_loops.cells(x, self._idx, self._lo, self._hi, self._sorted)
            self.last_searched = int(self.changed.numel())
            return self._idx.clone()
        redo = torch.nonzero(~((x >= self._lo) & (x <= self._hi))).flatten()
        self.changed = redo
        self.last_searched = int(redo.numel())
        if self.last_searched:
            idx, lo, hi = self._sorted.search(w.index_select(0, redo))
            self._idx[redo], self._lo[redo], self._hi[redo] = idx, lo, hi
        return self._idx.clone()

    @torch.no_grad()
    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        w = w.detach().float()
        if not self._ready:
            self._prepare()
        self.last_rescored = 0
        self.calls += 1
        self.changed = None
        if self._one_d:
            return self._call_1d(w)
        if self._pool.shape[0] == 1:  # one distinct row: it is always the answer
            self.last_searched = w.shape[0]
            return torch.full((w.shape[0],), int(self._keep[0]), dtype=torch.long, device=w.device)
        if self._anchor is None or self._anchor.shape != w.shape or self._anchor.device != w.device:
            # the first search is a GEMM (faster than the kernel's per-row scan for all rows)
            self._idx, self._r2, self._cand, self._bound = self._search_rows(w)
            self._anchor = w.clone()
            self._views = None
            self._buf = self._moved = None  # the torch path's buffers, made when it first runs
            self.last_searched = w.shape[0]
            return self._idx.clone()
        if cpu_loops.usable(w, self._anchor):  # all tiers fused into one pass over the weights
            self._track(w)
            return self._idx.clone()
        # persistent buffers: this pass touches every weight each step, so no fresh allocations
        if self._buf is None:
            self._buf = torch.empty_like(w)
            self._moved = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
        moved = torch.sum(torch.sub(w, self._anchor, out=self._buf).square_(), 1, out=self._moved)
        moved.mul_(self._slack)
        # written as "not inside" so that NaN movement also triggers a search
        redo = torch.nonzero(~(moved < self._r2)).flatten()
        self.last_rescored = int(redo.numel())
        self.last_searched = 0
        if redo.numel():
            delta = moved[redo].double().sqrt_().mul_(1 + 1e-9)
            rows = w.index_select(0, redo)
            left = self._rescore(rows, redo, delta)
            if left.numel():
                self._full_rows(rows[left], redo[left])
                self.last_searched = int(left.numel())
        return self._idx.clone()

    def _track(self, w: torch.Tensor) -> None:
        if self._views is None:  # the state's tensors are updated in place until the next full search
            self._views = cpu_loops.TrackState(
                self._anchor, self._r2, self._idx, self._cand, self._bound, self._pool64_pad, self._pool_pad,
                self._rel32, self._gaps, self._keep, self._slack, self._eps64, self._pnorm)
        ties, self.changed, self.last_rescored, self.last_searched = cpu_loops.track(w, self._views)
        if ties.numel():
            self._idx[ties] = exact_rows(w.index_select(0, ties), self._full)

    def _full_rows(self, wf: torch.Tensor, rows: torch.Tensor) -> None:
        idx, r2, cand, bound = self._search_rows(wf)
        self._idx[rows], self._r2[rows], self._cand[rows], self._bound[rows] = idx, r2, cand, bound
        self._anchor[rows] = wf
