import numpy as np
import pytest
import torch

from nws_avalanche.common.errors import ArtifactError
from nws_avalanche.method.nwsify import nwsify
from nws_avalanche.method.task_artifact import load_nws_task, save_nws_task
from nws_avalanche.nets.models import build_arch
from nws_avalanche.pools.pool_set import build_pools_kmeans
from nws_avalanche.storage.codecs import BitPack, bits_for


@pytest.mark.parametrize("K", [2, 3, 16, 100, 512, 1024])
def test_bitpack_round_trip_and_size(K):
    rng = np.random.RandomState(K)
    for n in (0, 1, 7, 1000):
        idx = rng.randint(0, K, size=n)
        data = BitPack.encode(idx, K)
        assert len(data) == -(-n * bits_for(K) // 8)
        assert np.array_equal(BitPack.decode(data, n, K), idx)


def _trained_model(tmp_path):
    torch.manual_seed(0)
    plain = build_arch("resnet-tiny", 3, in_channels=1)
    pools = build_pools_kmeans(plain, "resnet-tiny", K=16, iters=2)
    model = nwsify(build_arch("resnet-tiny", 3, in_channels=1), pools.tables)
    model.train()
    for _ in range(3):  # move BN statistics away from their defaults
        model(torch.randn(8, 1, 16, 16))
    for m in model.modules():
        if hasattr(m, "assign"):
            m.assign()
    model.eval()
    return model, pools


def test_artifact_round_trip_is_bit_identical(tmp_path):
    model, pools = _trained_model(tmp_path)
    path = save_nws_task(tmp_path / "t.nwst", model, task=0, arch="resnet-tiny", num_classes=3,
                         pool_fingerprint=pools.fingerprint, pool_digest=pools.digest)

    def skeleton(c):
        return nwsify(build_arch("resnet-tiny", c, in_channels=1), pools.tables, search_now=False)

    rebuilt = load_nws_task(path, skeleton, pools.fingerprint, pools.digest)
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    # indices cost ceil(log2 K) = 4 bits each
    n = sum(m.num_vectors for m in model.modules() if hasattr(m, "num_vectors"))
    assert path.stat().st_size < n * 4 / 8 + 30_000
    with pytest.raises(ArtifactError, match="other pools"):
        load_nws_task(path, skeleton, pools.fingerprint, "0" * 64)


def test_truncated_or_corrupted_artifact(tmp_path):
    model, pools = _trained_model(tmp_path)
    path = save_nws_task(tmp_path / "t.nwst", model, task=0, arch="resnet-tiny", num_classes=3,
                         pool_fingerprint=pools.fingerprint, pool_digest=pools.digest)
    data = path.read_bytes()
    skeleton = lambda c: nwsify(build_arch("resnet-tiny", c, in_channels=1), pools.tables, search_now=False)
    (tmp_path / "trunc.nwst").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        load_nws_task(tmp_path / "trunc.nwst", skeleton, pools.fingerprint, pools.digest)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 1
    (tmp_path / "bad.nwst").write_bytes(bytes(bad))
    with pytest.raises(ArtifactError, match="checksum"):
        load_nws_task(tmp_path / "bad.nwst", skeleton, pools.fingerprint, pools.digest)


def test_load_into_resident_model_equals_cold_rebuild(tmp_path):
    """A task switch into a resident network gives the same model as a fresh rebuild."""
    model, pools = _trained_model(tmp_path)
    path = save_nws_task(tmp_path / "t.nwst", model, task=0, arch="resnet-tiny", num_classes=3,
                         pool_fingerprint=pools.fingerprint, pool_digest=pools.digest)
    skeleton = lambda c: nwsify(build_arch("resnet-tiny", c, in_channels=1), pools.tables, search_now=False)
    resident = skeleton(3)
    x = torch.randn(4, 1, 16, 16)
    resident.eval()
    resident(x)  # fills its rebuilt-weight cache with other indices: the switch must invalidate it
    same = load_nws_task(path, skeleton, pools.fingerprint, pools.digest, into=resident)
    assert same is resident
    with torch.no_grad():
        assert torch.equal(resident(x), model(x))
    other = load_nws_task(path, skeleton, pools.fingerprint, pools.digest, into=skeleton(5))
    assert other is not resident and other.fc.out_features == 3  # head size differs: a new skeleton
