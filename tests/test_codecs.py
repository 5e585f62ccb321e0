"""The ``rans`` codec: lossless on adversarial distributions, near the order-0 entropy, and
artifacts written with it rebuild bit-identically."""
import numpy as np
import pytest
import torch

from nws_avalanche.artifact import load_nws_task, read_nws_task, save_nws_task
from nws_avalanche.codecs import CODECS, RANS, BitPack, order0_entropy_bits
from nws_avalanche.layers import nws_layers
from nws_avalanche.models import build_arch
from nws_avalanche.nwsify import nwsify
from nws_avalanche.perf import sample_pools
from nws_avalanche.pools import PoolSet, layer_specs

RNG = np.random.default_rng(0)
CASES = {
    "empty": (np.zeros(0, np.int64), 512),
    "one kernel": (np.array([311]), 512),
    "single symbol": (np.full(5000, 7), 512),
    "K=1": (np.zeros(40, np.int64), 1),
    "uniform over all K": (np.arange(512 * 30) % 512, 512),
    "uniform, K=7": (RNG.permutation(np.arange(7 * 300) % 7), 7),
    "two symbols, K=300": (np.where(RNG.random(4000) < 0.01, 299, 0), 300),
    "zipf, K=500": (np.minimum(RNG.zipf(1.4, 50000) - 1, 499), 500),
    "tiny layer": (RNG.integers(0, 512, 27), 512),
}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_adversarial(name):
    x, K = CASES[name]
    data = RANS.encode(x, K)
    y = RANS.decode(data, x.size, K)
    assert y.dtype == np.int64 and np.array_equal(x, y)
    # never worse than fixed-width codes by more than the one mode byte
    assert len(data) <= len(BitPack.encode(x, K)) + 1


@pytest.mark.parametrize("name", ["uniform over all K", "zipf, K=500", "two symbols, K=300", "uniform, K=7"])
def test_size_within_one_percent_of_entropy_plus_table(name):
    x, K = CASES[name]
    data = RANS.encode(x, K)
    parts = RANS.split(data, K)
    h = order0_entropy_bits(x, K)
    assert parts["table"] + parts["stream"] == len(data)
    # the stream: within 1% of n*H0 plus the coder's final state (at most 2 words)
    assert 8 * parts["stream"] <= 1.01 * h + 64
    if parts["mode"] == "ans":
        assert parts["table"] <= 1 + (K + 7) // 8 + 3 * len(np.unique(x))


def test_bad_streams_raise_value_error():
    x, K = CASES["zipf, K=500"]
    data = RANS.encode(x, K)
    for bad in (data[:-3], data[:40], b"\x09" + data[1:], data + b"\0\0\0\0"):
        with pytest.raises(ValueError):
            RANS.decode(bad, x.size, K)
    with pytest.raises(ValueError):
        RANS.encode(np.array([3, 512]), 512)


def test_artifact_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    model = build_arch("resnet-tiny", 4)
    tables = sample_pools(model, 16, 0)
    pools = PoolSet("resnet-tiny", layer_specs(model), tables)
    nwsify(model, tables, True)
    model.eval()
    paths = {}
    for codec in ("bitpack", "rans"):
        paths[codec] = save_nws_task(tmp_path / f"{codec}.nwst", model, task=0, arch="resnet-tiny", num_classes=4,
                                     pool_fingerprint=pools.fingerprint, pool_digest=pools.digest, codec=codec)

    def build(nc):
        return nwsify(build_arch("resnet-tiny", nc), tables, True, search_now=False)

    x = torch.randn(3, 3, 16, 16)
    want = model(x)
    for codec, path in paths.items():
        _, idx, _ = read_nws_task(path)
        for name, m in nws_layers(model):
            assert np.array_equal(idx[name], m.indices.numpy())
        rebuilt = load_nws_task(path, build, pools.fingerprint, pools.digest)
        assert torch.equal(rebuilt(x), want), codec
        for name, m in nws_layers(rebuilt):  # the skipped random init left nothing behind
            assert torch.equal(m.weight, m.pool[m.indices].view_as(m.weight))
    assert paths["rans"].stat().st_size < paths["bitpack"].stat().st_size
    assert "rans" in CODECS.names()
