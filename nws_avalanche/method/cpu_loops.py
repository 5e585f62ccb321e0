"""Fused CPU loops (numba) for the per-step passes over every weight of an NWS network.

Eager torch would make each of these several passes with weight-sized temporaries; on a CPU
training step they are memory-bound, so one fused pass is what brings NWS near plain training.
Each kernel has a torch twin (used on GPUs, for other dtypes, or with ``NWS_KERNELS=torch``);
tests check that both give bit-identical values or, for the search, exact answers.

The kernels are serial numba builds that release the GIL; a big pass is cut in two halves, one
run on a helper thread. (numba's own parallel layers were slower here, or abort the process
when it forks, as DataLoader workers do.)
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from numba import njit

_ENABLED = os.environ.get("NWS_KERNELS", "numba") != "torch"
_LOCK = threading.Lock()  # one caller at a time: the halves of a pass share the helper thread
_HELPER: ThreadPoolExecutor | None = None
SPLIT_FROM = 1 << 20  # values touched by a pass from which it runs on two threads


def _forget_helper() -> None:  # a forked child has no helper thread: make a new one on demand
    global _HELPER
    _HELPER = None


os.register_at_fork(after_in_child=_forget_helper)


def enabled() -> bool:
    return _ENABLED


def set_enabled(flag: bool) -> bool:
    """Switch the fused kernels on or off (tests compare both paths); returns the old setting."""
    global _ENABLED
    old = _ENABLED
    _ENABLED = bool(flag)
    return old


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the fused CPU path applies: kernels on, float32, contiguous CPU tensors."""
    return _ENABLED and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
                            for t in tensors)


def _halves(n: int, work: int, run):
    """``run(a, b)`` over [0, n): in two halves on two threads when the pass is big and torch
    may use two threads (a run limited to one thread stays on one core); returns the results."""
    global _HELPER
    if n < 2 or work < SPLIT_FROM or torch.get_num_threads() < 2:
        return [run(0, n)]
    if _HELPER is None:
        _HELPER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nws-kernels")
    h = n // 2
    other = _HELPER.submit(run, h, n)
    try:
        first = run(0, h)
    finally:
        second = other.result()
    return [first, second]


@njit(nogil=True, cache=True)
def _ste_forward(w, q, out):  # pragma: no cover - compiled
    acc = 0.0
    for i in range(w.size):
        d = q[i] - w[i]
        out[i] = w[i] + d
        acc += np.float64(d) * np.float64(d)
    return acc

@njit(nogil=True, cache=True)
def _ste_backward(w, q, g, c, out):  # pragma: no cover - compiled
    two = np.float32(2.0)
    for i in range(w.size):
        out[i] = g[i] - c * ((q[i] - w[i]) * two)

@njit(nogil=True, cache=True)
def _ste_forward_rows(w, idx, pool, out, a, b):  # pragma: no cover - compiled
    """``_ste_forward`` over flat elements [a, b) of ``w`` with ``q = pool[idx]`` read row by row
    from the (cache-resident) pool: the same operations in the same order, no ``q`` in memory."""
    d = pool.shape[1]
    i = a // d
    k = a - i * d
    r = idx[i] if a < b else 0
    acc = 0.0
    for e in range(a, b):
        t = pool[r, k] - w[e]
        out[e] = w[e] + t
        acc += np.float64(t) * np.float64(t)
        k += 1
        if k == d:
            k = 0
            i += 1
            if e + 1 < b:
                r = idx[i]
    return acc

@njit(nogil=True, cache=True)
def _ste_backward_rows(w, idx, pool, g, c, out, a, b):  # pragma: no cover - compiled
    """``_ste_backward`` over flat elements [a, b), ``q = pool[idx]`` read from the pool."""
    two = np.float32(2.0)
    d = pool.shape[1]
    i = a // d
    k = a - i * d
    r = idx[i] if a < b else 0
    for e in range(a, b):
        out[e] = g[e] - c * ((pool[r, k] - w[e]) * two)
        k += 1
        if k == d:
            k = 0
            i += 1
            if e + 1 < b:
                r = idx[i]

_E = 2.220446049250313e-16  # float64 epsilon

@njit(nogil=True, cache=True, inline="always")
def _dist2(w, i, pool, c):  # pragma: no cover - compiled
    # in the pool's precision: float32 (re-scoring) or float64 (after a full scan)
    t2 = pool.dtype.type(0.0)
    for k in range(w.shape[1]):
        t = pool.dtype.type(w[i, k]) - pool[c, k]
        t2 += t * t
    return t2

@njit(nogil=True, cache=True, inline="always")
def _settle(w, i, cand, pool, rel, gaps, bound, eps64c, pnorm, dist):  # pragma: no cover - compiled
    """Decide row i from its candidates, every other row being at least ``bound`` away.
    Returns (sure, position of the winner in cand[i], safe squared radius). ``gaps``: the
    pool's pairwise distances, rounded up (float32, small enough to stay in cache), or 1x1
    for none. ``pool``:
    float32 (distances summed in float32) or float64; each distance is within a relative
    ``rel`` of the exact one. ``dist``: space for the candidates' distances (one per thread)."""
    e = _E
    m = cand.shape[1]
    best = np.inf
    bj = 0
    for j in range(m):
        t2 = np.float64(_dist2(w, i, pool, cand[i, j]))
        dist[j] = t2
        bj = j if t2 < best else bj  # selects, not branches: the winner's slot is random
        best = min(t2, best)
    hi_b = best * (1.0 + rel)
    e64 = eps64c * (math.sqrt(hi_b) + 2.0 * pnorm) ** 2
    hi_m = hi_b + 8.0 * e64
    outside = bound * bound if bound > 0.0 else 0.0
    if not (hi_m < outside):
        return False, bj, 0.0
    b = cand[i, bj]
    face = np.inf
    for j in range(m):
        if j == bj:
            continue
        c = cand[i, j]
        lo = dist[j] * (1.0 - rel)
        if not (hi_m < lo):
            return False, bj, 0.0
        if gaps.shape[0] > 1:
            g = gaps[b, c]
        else:  # no table (a large pool): |p_b - p_c| <= |w - p_b| + |w - p_c|
            g = (math.sqrt(hi_b) + math.sqrt(dist[j] * (1.0 + rel))) * (1.0 + 4.0 * e)
        f = (lo - hi_m) / g
        if f < face:
            face = f
    face *= 0.5 * (1.0 - 8.0 * e)
    u1 = math.sqrt(hi_b + e64) * (1.0 + 2.0 * e)
    l2 = math.sqrt(max(outside - e64, 0.0)) * (1.0 - 2.0 * e)
    rest = (l2 - u1 - 4.0 * e64 / max(l2 + u1, 1e-300)) * (0.5 * (1.0 - 4.0 * e))
    rad = max(min(face, rest), 0.0)
    return True, bj, rad * rad * (1.0 - 1e-6)  # stored as float32: must not round up

@njit(nogil=True, cache=True)
def _scan(w, i, cand, pool, kd):  # pragma: no cover - compiled
    """Full float64 scan of row i: its nearest rows into cand[i] (padding kd), and a lower
    bound on the distance to every other row."""
    m = cand.shape[1]
    top = min(m + 1, kd)
    # sorted (distance, row) pairs; allocated per row (no thread ids: cached machine code
    # must not depend on the threading layer loaded at run time), full scans are rare
    scratch = np.empty((top, 2))
    cnt = 0
    for c in range(kd):
        t2 = _dist2(w, i, pool, c)
        if cnt < top:
            pos = cnt
            cnt += 1
        elif t2 < scratch[top - 1, 0]:
            pos = top - 1
        else:
            continue
        while pos > 0 and scratch[pos - 1, 0] > t2:
            scratch[pos, 0] = scratch[pos - 1, 0]
            scratch[pos, 1] = scratch[pos - 1, 1]
            pos -= 1
        scratch[pos, 0] = t2
        scratch[pos, 1] = c
    for j in range(m):
        cand[i, j] = np.int32(scratch[j, 1]) if j < min(m, kd) else kd
    if kd <= m:
        return np.inf
    # float64 distances from float32 inputs are within a relative (d+1) eps of the truth
    lo = scratch[m, 0] * (1.0 - 2.0 * (w.shape[1] + 2) * _E)
    return math.sqrt(max(lo, 0.0)) * (1.0 - 2.0 * _E)

@njit(nogil=True, cache=True)
def _cells(x, idx, lo, hi, values, first, clo, chi, flag):  # pragma: no cover - compiled
    """1-D search: values that left their cell are searched again (``_SortedPool1D.search``)."""
    count = 0
    last = values.shape[0] - 1
    for i in range(x.shape[0]):
        if x[i] >= lo[i] and x[i] <= hi[i]:
            flag[i] = False
            continue
        flag[i] = True
        count += 1
        v = np.float64(x[i])
        if np.isnan(v):  # sorts last, as in torch.searchsorted
            pos = last + 1
        else:
            a, b = 0, last + 1
            while a < b:
                mid = (a + b) // 2
                if values[mid] < v:
                    a = mid + 1
                else:
                    b = mid
            pos = a
        l = max(pos - 1, 0)
        h = min(pos, last)
        dl = abs(v - values[l])
        dh = abs(v - values[h])
        if dl == dh and l != h:
            idx[i] = min(first[l], first[h])
            lo[i] = np.inf
            hi[i] = -np.inf
        else:
            c = l if dl <= dh else h
            idx[i] = first[c]
            lo[i] = clo[c]
            hi[i] = chi[c]
    return count

@njit(nogil=True, cache=True, inline="always")
def _accept(w, i, anchor, r2, idx, bound, new, rad2, newb):  # pragma: no cover - compiled
    """Row i is decided at w: re-anchor it; returns whether its index changed."""
    r2[i] = np.float32(rad2)
    bound[i] = newb
    for k in range(w.shape[1]):
        anchor[i, k] = w[i, k]
    if new != idx[i]:
        idx[i] = new
        return 1
    return 0

@njit(nogil=True, cache=True)
def _track(w, anchor, r2, idx, cand, bound, pool, pool32, rel, gaps, keep, slack, eps64c, pnorm, kd,
           status):  # pragma: no cover - compiled
    n, d = w.shape
    dist = np.empty(cand.shape[1])
    rel64 = 2.0 * (d + 2) * _E
    rescored = 0
    scanned = 0
    ties = 0
    changed = 0
    for i in range(n):
        # float32 (vectorises); its rounding is inside ``slack``, as on the torch path
        s = np.float32(0.0)
        for k in range(d):
            t = w[i, k] - anchor[i, k]
            s += t * t
        moved = np.float64(s) * slack
        if moved < r2[i]:
            status[i] = 0
            continue
        # tier 2: the candidates, every other row at least bound - delta away
        delta = math.sqrt(moved) * (1.0 + 1e-9)
        newb = bound[i] * (1.0 - 4.0 * _E) - delta * (1.0 + 4.0 * _E)
        sure, bj, rad2 = _settle(w, i, cand, pool32, rel, gaps, newb, eps64c, pnorm, dist)
        if sure:
            moved_idx = _accept(w, i, anchor, r2, idx, bound, keep[cand[i, bj]], rad2, newb)
            status[i] = 5 if moved_idx else 1
            changed += moved_idx
            rescored += 1
            continue
        # tier 3: full scan
        newb = _scan(w, i, cand, pool, kd)
        # decided in float64: only ties at that precision are left to the reference
        sure, bj, rad2 = _settle(w, i, cand, pool, rel64, gaps, newb, eps64c, pnorm, dist)
        scanned += 1
        if sure:
            moved_idx = _accept(w, i, anchor, r2, idx, bound, keep[cand[i, bj]], rad2, newb)
            status[i] = 6 if moved_idx else 2
            changed += moved_idx
        else:  # a near-tie: the caller asks the float64 reference (and counts it as changed)
            _accept(w, i, anchor, r2, idx, bound, idx[i], 0.0, newb)
            status[i] = 7
            ties += 1
            changed += 1
    return rescored + scanned, scanned, ties, changed


_NONE = torch.zeros(0, dtype=torch.long)


def cells(x: torch.Tensor, idx, lo, hi, sorted_pool) -> torch.Tensor:
    """``IncrementalSearch`` for d = 1: values of ``x`` (float32 [n]) outside their cell
    ``[lo, hi]`` are searched again; updates ``idx``, ``lo``, ``hi``; returns those rows."""
    flag = np.empty(x.shape[0], dtype=np.bool_)
    sp = sorted_pool
    with _LOCK:
        count = _cells(x.numpy(), idx.numpy(), lo.numpy(), hi.numpy(), sp.values.numpy(),
                       sp.first.numpy(), sp.lo.numpy(), sp.hi.numpy(), flag)
    return torch.from_numpy(np.flatnonzero(flag)) if count else _NONE


def ste_forward(w: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(w + (q - w), sum (q - w)^2)`` in one pass (float32 values identical to eager torch)."""
    out = torch.empty_like(w)
    wf, qf, of = w.detach().view(-1).numpy(), q.view(-1).numpy(), out.view(-1).numpy()
    with _LOCK:
        acc = _halves(wf.size, wf.size, lambda a, b: _ste_forward(wf[a:b], qf[a:b], of[a:b]))
    return out, sum(acc)


def ste_backward(w: torch.Tensor, q: torch.Tensor, g: torch.Tensor, c: float) -> torch.Tensor:
    """``g - c (2 (q - w))`` in one pass, bit-identical to eager torch's unfused gradient."""
    out = torch.empty_like(g)
    wf, qf, gf, of = (t.detach().reshape(-1).numpy() for t in (w, q, g, out))
    c32 = np.float32(c)
    with _LOCK:
        _halves(wf.size, wf.size, lambda a, b: _ste_backward(wf[a:b], qf[a:b], gf[a:b], c32, of[a:b]))
    return out


def ste_forward_rows(w: torch.Tensor, idx: torch.Tensor, pool: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``ste_forward(w, pool[idx])`` without building ``pool[idx]``: bit-identical values, the
    commitment summed in the same order (the halves split at the same element)."""
    out = torch.empty_like(w)
    wf, of = w.detach().view(-1).numpy(), out.view(-1).numpy()
    ix, pn = idx.numpy(), pool.numpy()
    with _LOCK:
        acc = _halves(wf.size, wf.size, lambda a, b: _ste_forward_rows(wf, ix, pn, of, a, b))
    return out, sum(acc)


def ste_backward_rows(w: torch.Tensor, idx: torch.Tensor, pool: torch.Tensor, g: torch.Tensor,
                      c: float) -> torch.Tensor:
    """``ste_backward(w, pool[idx], g, c)`` without building ``pool[idx]`` (bit-identical)."""
    out = torch.empty_like(g)
    wf, gf, of = (t.detach().reshape(-1).numpy() for t in (w, g, out))
    ix, pn = idx.numpy(), pool.numpy()
    c32 = np.float32(c)
    with _LOCK:
        _halves(wf.size, wf.size, lambda a, b: _ste_backward_rows(wf, ix, pn, gf, c32, of, a, b))
    return out


class TrackState:
    """NumPy views of an ``IncrementalSearch``'s state and tables, made once per search state
    (not per call: a small layer's step is mostly fixed cost), and the status buffer."""

    def __init__(self, anchor, r2, idx, cand, bound, pool64_pad, pool_pad, rel32, gaps, keep, slack, eps64c,
                 pnorm):
        self.rows = [t.numpy() for t in (anchor, r2, idx, cand, bound)]
        self.rest = (pool64_pad.numpy(), pool_pad.numpy(), float(rel32), gaps.numpy(), keep.numpy(),
                     float(slack), float(eps64c), float(pnorm), int(pool64_pad.shape[0] - 1))
        self.status = np.empty(anchor.shape[0], dtype=np.int8)


def track(w: torch.Tensor, state: TrackState):
    """Tiers 1-3 of ``IncrementalSearch`` in one pass; updates the state in place. Returns (rows
    left to the float64 reference, rows whose index may have changed, number of rows re-scored,
    number of rows scanned)."""
    n = w.shape[0]
    wn, rows, rest, status = w.numpy(), state.rows, state.rest, state.status

    def run(a, b):
        return _track(wn[a:b], *(r[a:b] for r in rows), *rest, status[a:b])

    with _LOCK:
        parts = _halves(n, w.numel(), run) if w.numel() >= SPLIT_FROM else [run(0, n)]
    if len(parts) == 1:
        rescored, scanned, ties, changed = parts[0]
    else:
        rescored, scanned, ties, changed = (sum(p[k] for p in parts) for k in range(4))
    left = torch.from_numpy(np.flatnonzero(status == 7)) if ties else _NONE
    moved = torch.from_numpy(np.flatnonzero(status >= 5)) if changed else _NONE
    return left, moved, rescored, scanned
