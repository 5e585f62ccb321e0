import pytest
import torch

from nws_avalanche.common.errors import ArtifactError, ConfigError
from nws_avalanche.nets.models import build_arch
from nws_avalanche.pools.kmeans import kmeans, quantisation_error
from nws_avalanche.pools.pool_set import PoolSet, build_pools_kmeans


def test_kmeans_deterministic_and_better_than_random():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(300, 9, generator=g) * 0.1 + c for c in torch.randn(6, 9, generator=g) * 3])
    a, b = kmeans(x, 16, seed=3), kmeans(x, 16, seed=3)
    assert torch.equal(a, b)
    rand = x[torch.randperm(len(x), generator=g)[:16]]
    assert quantisation_error(x, a) < quantisation_error(x, rand)


def test_kmeans_fewer_points_than_k_keeps_k():
    x = torch.randn(5, 9)
    c = kmeans(x, 16, seed=0)
    assert c.shape == (16, 9) and torch.equal(c[:5], x)


def test_pool_file_round_trip_and_validation(tmp_path):
    model = build_arch("resnet-tiny", 3, in_channels=1)
    pools = build_pools_kmeans(model, "resnet-tiny", K=4, iters=2)
    path = pools.save(tmp_path / "p.nwsp")
    loaded = PoolSet.load(path)
    assert loaded.fingerprint == pools.fingerprint and loaded.digest == pools.digest
    assert all(torch.equal(loaded.tables[k], pools.tables[k]) for k in pools.tables)
    loaded.check_model(build_arch("resnet-tiny", 7, in_channels=1))  # head size may differ
    with pytest.raises(ConfigError, match="conv1"):
        loaded.check_model(build_arch("resnet-tiny", 3, in_channels=3))
    with pytest.raises(ConfigError, match="does not fit|no pool"):
        loaded.check_model(build_arch("resnet18-narrow", 3, in_channels=1))
    # only what reconstruction needs: tables + header + checksum
    table_bytes = sum(t.numel() * 4 for t in pools.tables.values())
    assert path.stat().st_size < table_bytes + 8192


def test_corrupted_and_truncated_pool_file(tmp_path):
    model = build_arch("resnet-tiny", 3, in_channels=1)
    path = build_pools_kmeans(model, "resnet-tiny", K=4, iters=1).save(tmp_path / "p.nwsp")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "bad.nwsp").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        PoolSet.load(tmp_path / "bad.nwsp")
    (tmp_path / "short.nwsp").write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ArtifactError, match="truncated"):
        PoolSet.load(tmp_path / "short.nwsp")


def test_k_below_two_rejected():
    with pytest.raises(ConfigError, match="pool_size"):
        build_pools_kmeans(build_arch("resnet-tiny", 3), "resnet-tiny", K=1)
