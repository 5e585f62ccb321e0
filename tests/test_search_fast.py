"""The incremental search is exact: it equals float64 brute force at every step of real training."""
import pytest
import torch
import torch.nn.functional as F

from nws_avalanche.method import cpu_loops
from nws_avalanche.method.layers import NWSConv2d, commitment_loss, nws_layers
from nws_avalanche.method.nwsify import nwsify
from nws_avalanche.method.search import SEARCHES, IncrementalSearch, exact_rows
from nws_avalanche.nets.models import build_arch
from nws_avalanche.speed.perf_measure import sample_pools


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["numba", "torch"], autouse=True)
def kernel_path(request):
    """Every test runs on the fused CPU kernels and on the torch path (the one GPUs take)."""
    old = cpu_loops.set_enabled(request.param == "numba")
    if request.param == "numba" and not cpu_loops.enabled():
        pytest.skip("numba is not importable here")
    yield request.param
    cpu_loops.set_enabled(old)


def _with_duplicates(pool: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dup = pool[torch.randint(len(pool), (len(pool) // 2,), generator=g)]
    mixed = torch.cat([pool, dup])
    return mixed[torch.randperm(len(mixed), generator=g)]


def test_exact_over_real_training_with_large_lr_and_duplicate_rows():
    torch.manual_seed(0)
    model = build_arch("resnet-tiny", 5)
    pools = {k: _with_duplicates(v, i) for i, (k, v) in enumerate(sample_pools(model, 8, 0).items())}
    nwsify(model, pools, True, search_factory=SEARCHES.get("incremental"))
    x, y = torch.randn(8, 3, 16, 16), torch.randint(5, (8,))
    changes, skipped = 0, 0
    for step, lr in enumerate([0.001] * 4 + [0.3] * 8 + [0.01] * 4):
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        prev = {n: m.indices.clone() for n, m in nws_layers(model)}
        model.train()
        loss = F.cross_entropy(model(x), y) + 0.5 * commitment_loss(model)
        opt.zero_grad()
        loss.backward()
        for n, m in nws_layers(model):
            ref = exact_rows(m.vectors().detach(), m.pool)
            assert torch.equal(m.indices, ref), f"step {step} layer {n}"
            changes += int((m.indices != prev[n]).sum())
            if m.d > 1:
                skipped += m.num_vectors - m.search.last_searched
        opt.step()
    assert changes > 50          # kernels did cross decision boundaries
    assert skipped > 0           # and the search was incremental, not exhaustive


def test_random_walks_all_shapes_and_step_sizes():
    g = torch.Generator().manual_seed(1)
    for d, K in [(1, 37), (2, 16), (9, 64), (9, 1), (49, 5)]:
        pool = _with_duplicates(torch.randn(K, d, generator=g), d)
        w = torch.randn(3000, d, generator=g)
        s = IncrementalSearch(pool)
        for step in range(24):
            assert torch.equal(s(w), exact_rows(w, pool)), (d, K, step)
            scale = [1e-4, 1e-2, 0.3][step % 3]
            w = w + scale * torch.randn(w.shape, generator=g)


def test_exact_ties_take_the_lowest_index():
    pool = torch.tensor([[2.0], [0.0], [1.0], [0.0]])
    w = torch.tensor([[0.5], [1.5], [0.0], [-3.0]])
    s = IncrementalSearch(pool)
    assert s(w).tolist() == exact_rows(w, pool).tolist() == [1, 0, 1, 1]
    pool2 = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    w2 = torch.tensor([[0.0, 0.0], [0.0, 5.0], [0.9, 0.0]])
    s2 = IncrementalSearch(pool2)
    for _ in range(3):  # repeated calls on tied rows keep re-checking them
        assert s2(w2).tolist() == exact_rows(w2, pool2).tolist() == [0, 0, 0]


def test_reset_forces_a_full_search_and_state_is_not_aliased():
    pool = torch.randn(16, 9)
    w = torch.randn(100, 9)
    s = IncrementalSearch(pool)
    first = s(w)
    first[:] = 0  # the caller may modify what it got back
    assert torch.equal(s(w), exact_rows(w, pool))
    assert s.last_searched == 0
    s.reset()
    s(w)
    assert s.last_searched == 100


def test_layer_training_is_bit_identical_to_exact_search():
    """Forward outputs, commitment and gradients equal those with the exhaustive search."""
    torch.manual_seed(3)
    pool = torch.randn(12, 9) * 0.3
    layers = [NWSConv2d(4, 6, 3, pool, padding=1, search_factory=SEARCHES.get(n)) for n in ("exact", "incremental")]
    layers[1].load_state_dict(layers[0].state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in layers]
    x = torch.randn(2, 4, 5, 5)
    for _ in range(10):
        outs = []
        for m, opt in zip(layers, opts):
            out = m(x)
            loss = out.square().mean() + 0.5 * m.commitment
            opt.zero_grad()
            loss.backward()
            outs.append((out.detach(), m.commitment.detach(), m.weight.grad.clone(), m.indices.clone()))
            opt.step()
        for a, b in zip(*outs):
            assert torch.equal(a, b)


def test_incremental_search_survives_reset_cycles_and_pool_sizes_below_candidates():
    """Pools with fewer distinct rows than the candidate list, a single row, and d = 49."""
    g = torch.Generator().manual_seed(5)
    for d, K in [(9, 3), (9, 8), (9, 9), (49, 12), (4, 1)]:
        pool = torch.randn(K, d, generator=g)
        w = torch.randn(500, d, generator=g) * 2
        s = IncrementalSearch(pool)
        for step in range(12):
            assert torch.equal(s(w), exact_rows(w, pool)), (d, K, step)
            if step == 6:
                s.reset()
            w = w + 0.2 * torch.randn(w.shape, generator=g)


def test_non_finite_weights_are_searched_every_time():
    pool = torch.randn(16, 9)
    w = torch.randn(50, 9)
    s = IncrementalSearch(pool)
    s(w)
    w[3, 2] = float("nan")
    w[7, 0] = float("inf")
    s(w)
    assert s.last_searched >= 2
    w[3, 2], w[7, 0] = 0.0, 0.0
    assert torch.equal(s(w), exact_rows(w, pool))


def test_straight_through_kernel_is_bit_identical_to_the_unfused_expression():
    """w + sg(q - w) and the gradient g - (c / N)(2 (q - w)) equal eager autograd's for the authors'
    commitment ``(sg(q) - w).pow(2).mean()``, on either path."""
    from nws_avalanche.method.layers import _StraightThrough
    g = torch.Generator().manual_seed(2)
    for trial in range(6):
        n = 500 + 37 * trial
        w0 = torch.randn(n, 9, generator=g) * 10 ** (trial - 3)
        q = torch.randn(n, 9, generator=g) * w0.std()
        gout = torch.randn(n, 9, generator=g)
        beta = 0.1 + trial
        w = w0.clone().requires_grad_()
        diff = q - w
        ((w + diff.detach()) * gout).sum().add(beta * diff.pow(2).mean()).backward()
        w2 = w0.clone().requires_grad_()
        out, commit = _StraightThrough.apply(w2, q)
        ((out * gout).sum() + beta * commit).backward()
        assert torch.equal(out, w0 + (q - w0))
        assert torch.equal(w.grad, w2.grad)
        assert torch.allclose(commit, diff.pow(2).mean(), rtol=1e-5)


@pytest.mark.parametrize("split", [False, True])
def test_straight_through_from_the_pool_is_bit_identical_to_the_one_from_q(monkeypatch, split):
    """The CPU layer's ``_StraightThroughRows`` (q read from the pool by index inside the loops)
    gives the same output, commitment (same summation order, also when a pass is cut in halves on
    two threads, odd sizes included) and gradient as ``_StraightThrough(w, pool[idx])``."""
    from nws_avalanche.method.layers import _StraightThrough, _StraightThroughRows
    old = torch.get_num_threads()
    if split:
        monkeypatch.setattr(cpu_loops, "SPLIT_FROM", 64)
        torch.set_num_threads(2)
    g = torch.Generator().manual_seed(4)
    try:
        for trial, (n, d, K) in enumerate([(501, 9, 32), (77, 1, 16), (1, 49, 3), (2048, 4, 300)]):
            pool = torch.randn(K, d, generator=g)
            idx = torch.randint(K, (n,), generator=g)
            w0 = torch.randn(n, d, generator=g) * 10 ** (trial - 2)
            gout = torch.randn(n, d, generator=g)
            outs = []
            for fn, extra in ((_StraightThrough, (pool[idx],)), (_StraightThroughRows, (idx, pool))):
                w = w0.clone().requires_grad_()
                out, commit = fn.apply(w, *extra)
                ((out * gout).sum() + (0.5 + trial) * commit).backward()
                outs.append((out.detach(), commit.detach(), w.grad))
            for a, b in zip(*outs):
                assert torch.equal(a, b), (n, d, K)
    finally:
        torch.set_num_threads(old)


def _child_search(conn):
    torch.set_num_threads(2)
    pool, w = torch.randn(16, 9), torch.randn(5000, 9)
    s = IncrementalSearch(pool)
    s(w)
    a = torch.randn(3_000_000)
    out, _ = cpu_loops.ste_forward(a, a)  # big: needs the helper thread, which the fork did not copy
    conn.send(bool(torch.equal(s(w + 0.05), exact_rows(w + 0.05, pool)) and torch.equal(out, a)))


def test_kernels_survive_fork(kernel_path):
    """DataLoader workers fork: a child of a process that ran the (two-thread) kernels runs them too.
    The parent is a fresh interpreter: in the suite's own process, state left by earlier tests (seen
    after tests/test_device.py) made the forked child hang, which this test is not about."""
    import subprocess
    import sys
    from pathlib import Path

    script = """
import multiprocessing as mp, sys, torch
from nws_avalanche.method import cpu_loops
from tests.test_search_fast import _child_search
cpu_loops.set_enabled(sys.argv[1] == "numba")
torch.set_num_threads(2)  # big passes run on the helper thread before the fork
a = torch.randn(3_000_000)
cpu_loops.ste_forward(a, a)
ctx = mp.get_context("fork")
parent, child = ctx.Pipe()
p = ctx.Process(target=_child_search, args=(child,))
p.start()
assert parent.poll(120), "the forked child hung"
assert parent.recv() is True
p.join(30)
assert p.exitcode == 0
print("ok")
"""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", script, kernel_path], cwd=root, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_pools_too_large_for_a_distance_table_stay_exact(monkeypatch):
    """Above _GAP_TABLE_MAX rows the Voronoi faces are bounded by the triangle inequality."""
    from nws_avalanche.method import search
    monkeypatch.setattr(search, "_GAP_TABLE_MAX", 4)
    g = torch.Generator().manual_seed(7)
    for d, K in [(9, 40), (9, 6)]:
        pool = torch.randn(K, d, generator=g)
        w = torch.randn(2000, d, generator=g)
        s = IncrementalSearch(pool)
        untouched = 0
        for step in range(16):
            assert torch.equal(s(w), exact_rows(w, pool)), (d, K, step)
            if step:
                untouched += w.shape[0] - s.last_rescored
            w = w + [1e-3, 3e-2][step % 2] * torch.randn(w.shape, generator=g)
        assert s._gaps.numel() == 1
        assert untouched > 0  # radii are not all zero: some rows stayed inside theirs
