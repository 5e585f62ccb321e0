"""k-means pool builder (deterministic, never worse than a random pool), ``pools inspect``, and
the runner's use of a given pool file (a mismatched one is refused with a non-zero exit)."""
from __future__ import annotations

import pytest
import torch

from nws_avalanche.cli import main as cli
from nws_avalanche.nets.models import build_arch
from nws_avalanche.pools.kmeans import kmeans, quantisation_error
from nws_avalanche.pools.pool_set import PoolSet, layer_vectors


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A torchvision-format state_dict of resnet-tiny for 1-channel input (split-digits)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(build_arch("resnet-tiny", 10, 1).state_dict(), path)
    return path


def build(ckpt, out, *extra):
    return cli(["build-pools", "--from-checkpoint", str(ckpt), "--arch", "resnet-tiny", "--in-channels", "1",
                "--pool-size", "8", "--iters", "5", "--out", str(out), *extra])


def test_kmeans_deterministic_and_better_than_random():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 9, generator=gen) * torch.linspace(0.1, 2, 9)
    a = kmeans(x, 16, seed=3, init_sample=500, fit_sample=1000, final_iters=2)
    b = kmeans(x, 16, seed=3, init_sample=500, fit_sample=1000, final_iters=2)
    assert torch.equal(a, b)
    err = quantisation_error(x, a)
    for s in range(5):  # random pools: random rows of the data, and Gaussian draws at its scale
        g = torch.Generator().manual_seed(100 + s)
        rows = x[torch.randperm(len(x), generator=g)[:16]]
        gauss = torch.randn(16, 9, generator=g) * x.std(0)
        assert err <= quantisation_error(x, rows)
        assert err <= quantisation_error(x, gauss)


def test_build_pools_cli_deterministic_and_fits(ckpt, tmp_path, capsys):
    assert build(ckpt, tmp_path / "a.nwsp") == 0
    assert build(ckpt, tmp_path / "b.nwsp") == 0
    assert (tmp_path / "a.nwsp").read_bytes() == (tmp_path / "b.nwsp").read_bytes()
    assert build(ckpt, tmp_path / "c.nwsp", "--seed", "1") == 0
    a, c = PoolSet.load(tmp_path / "a.nwsp"), PoolSet.load(tmp_path / "c.nwsp")
    assert a.digest != c.digest
    model = build_arch("resnet-tiny", 10, 1)
    model.load_state_dict(torch.load(ckpt))
    a.check_model(model)
    for spec in a.specs:  # every layer beats a random pool drawn from its own kernels
        w = layer_vectors(model.get_submodule(spec["name"]), spec["group_size"])
        rand = w[torch.randperm(len(w), generator=torch.Generator().manual_seed(0))[:8]]
        assert quantisation_error(w, a.tables[spec["name"]]) <= quantisation_error(w, rand) + 1e-12


def test_pools_inspect_reports_usage(ckpt, tmp_path, capsys):
    build(ckpt, tmp_path / "p.nwsp")
    capsys.readouterr()
    assert cli(["pools", "inspect", str(tmp_path / "p.nwsp"), "--checkpoint", str(ckpt), "--in-channels", "1"]) == 0
    out = capsys.readouterr().out
    assert "layer4.0.conv2" in out and "q-error" in out and "K=8" in out


def test_runner_uses_given_pool_file_and_rejects_a_mismatch(ckpt, tmp_path, capsys):
    pools = tmp_path / "p.nwsp"
    build(ckpt, pools)
    common = ["run", "--methods", "nws", "--no-report", "--set", "epochs=1", "--set", "arch=resnet-tiny",
              "--set", "pool_size=8", "--set", f"pretrained={ckpt}", "--set", "benchmark_options.tasks=2",
              "--set", "benchmark_options.image_size=8"]
    # a pool file for another architecture: refused before training, naming the layer
    other = tmp_path / "other.nwsp"
    torch.manual_seed(0)
    wrong = build_arch("resnet-tiny", 10, 3)  # 3-channel stem: conv1 kernels differ
    torch.save(wrong.state_dict(), tmp_path / "rgb.pt")
    assert cli(["build-pools", "--from-checkpoint", str(tmp_path / "rgb.pt"), "--arch", "resnet-tiny",
                "--pool-size", "8", "--iters", "2", "--out", str(other)]) == 0
    capsys.readouterr()
    code = cli([*common, "--out", str(tmp_path / "bad"), "--set", f"pool_file={other}"])
    err = capsys.readouterr().err
    assert code != 0
    assert "'conv1'" in err and "error:" in err
    # the matching pool file is used as is: the run's assist file holds exactly its bytes
    code = cli([*common, "--out", str(tmp_path / "good"), "--set", f"pool_file={pools}"])
    assert code == 0
    copied = list((tmp_path / "good").rglob("artifacts/pools.nwsp"))
    assert copied and copied[0].read_bytes() == pools.read_bytes()


def test_one_dimensional_search_matches_exhaustive_search():
    """d = 1 pools (1x1 convs, the head) use a sorted search: same indices as float64 brute force,
    duplicates in the pool and points exactly midway included (lowest index wins)."""
    from nws_avalanche.method.search import exact_rows, nearest

    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        K = int(torch.randint(2, 40, (1,), generator=g))
        pool = torch.randint(-5, 6, (K, 1), generator=g).float() * 0.5
        w = torch.cat([torch.randint(-14, 15, (300, 1), generator=g).float() * 0.25,
                       torch.randn(300, 1, generator=g) * 4])
        assert torch.equal(nearest(w, pool), exact_rows(w, pool))
