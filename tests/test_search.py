import torch

from nws_avalanche.method.search import ExactSearch, exact_rows, nearest


def test_nearest_matches_brute_force_random():
    g = torch.Generator().manual_seed(0)
    for n, K, d in [(1000, 512, 9), (300, 7, 49), (50, 2, 1), (1, 513, 9)]:
        w, pool = torch.randn(n, d, generator=g), torch.randn(K, d, generator=g)
        assert torch.equal(nearest(w, pool), exact_rows(w, pool))


def test_ties_pick_lowest_index():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(10, 9, generator=g)
    pool = torch.cat([base, base[:5]])  # rows 10..14 duplicate rows 0..4
    w = torch.cat([base + 1e-3 * torch.randn(10, 9, generator=g), base])
    idx = nearest(w, pool)
    assert torch.equal(idx, exact_rows(w, pool))
    assert (idx < 10).all()
    # a point exactly between two pool vectors: the lower index wins
    pool2 = torch.tensor([[0.0], [2.0], [1.0], [3.0]])
    assert nearest(torch.tensor([[1.5]]), pool2).item() == 1
    assert nearest(torch.tensor([[0.5]]), pool2).item() == 0


def test_exact_search_object_and_scalar_pool():
    pool = torch.linspace(-1, 1, 5)[:, None]
    s = ExactSearch(pool)
    w = torch.tensor([[-0.9], [0.1], [0.74], [2.0]])
    assert s(w).tolist() == [0, 2, 3, 4]

