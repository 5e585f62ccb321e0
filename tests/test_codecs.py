"""The entropy codec (``rans16``, the default): lossless on
adversarial distributions, near the order-0 entropy, and artifacts rebuild bit-identically."""
import numpy as np
import pytest
import torch

from nws_avalanche.method.layers import nws_layers
from nws_avalanche.method.nwsify import nwsify
from nws_avalanche.method.task_artifact import load_nws_task, read_nws_task, save_nws_task
from nws_avalanche.nets.models import build_arch
from nws_avalanche.pools.pool_set import PoolSet, layer_specs
from nws_avalanche.speed.perf_measure import sample_pools
from nws_avalanche.storage import ans
from nws_avalanche.storage.codecs import CODECS, DEFAULT_CODEC, RANS16, BitPack, order0_entropy_bits

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
    "K above 2^14": (RNG.integers(0, 20000, 3000), 20000),
    "lane tail, n % 4 = 3": (RNG.integers(0, 5, 4099), 5),
}
CODERS = {"rans16": (RANS16, 32 * ans.LANES)}  # class, final-state bits


@pytest.fixture(params=list(CODERS))
def coder(request):
    return CODERS[request.param]


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_adversarial(name, coder):
    codec, _ = coder
    x, K = CASES[name]
    data = codec.encode(x, K)
    y = codec.decode(data, x.size, K)
    assert y.dtype == np.int64 and np.array_equal(x, y)
    # never worse than fixed-width codes by more than the one mode byte
    assert len(data) <= len(BitPack.encode(x, K)) + 1


@pytest.mark.parametrize("name", ["uniform over all K", "zipf, K=500", "two symbols, K=300", "uniform, K=7"])
def test_size_within_one_percent_of_entropy_plus_table(name, coder):
    codec, final_bits = coder
    x, K = CASES[name]
    data = codec.encode(x, K)
    parts = codec.split(data, K)
    h = order0_entropy_bits(x, K)
    assert parts["table"] + parts["stream"] == len(data)
    # the stream: within 1% of n*H0 plus the coder's final state
    assert 8 * parts["stream"] <= 1.01 * h + final_bits
    if parts["mode"] == "ans":
        assert parts["table"] <= 1 + (K + 7) // 8 + 3 * len(np.unique(x))


def test_bad_streams_raise_value_error(coder):
    codec, _ = coder
    x, K = CASES["zipf, K=500"]
    data = codec.encode(x, K)
    for bad in (data[:-3], data[:-4], data[:40], b"\x09" + data[1:], data + b"\0\0\0\0",
                b"\x03" + data[1:]):  # 3: the retired constriction coder's mode
        with pytest.raises(ValueError):
            codec.decode(bad, x.size, K)
    with pytest.raises(ValueError):
        codec.encode(np.array([3, 512]), 512)


def test_quantized_frequencies_sum_to_the_total_and_stay_positive():
    for counts in ([1] * 16383, [10 ** 6] + [1] * 5000, [3, 1], list(range(1, 600))):
        f = ans.quantize(np.array(counts))
        assert f.sum() == 1 << ans.PROB_BITS and f.min() >= 1


def test_artifact_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    model = build_arch("resnet-tiny", 4)
    tables = sample_pools(model, 16, 0)
    pools = PoolSet("resnet-tiny", layer_specs(model), tables)
    nwsify(model, tables, True)
    model.eval()
    paths = {}
    for codec in ("bitpack", "rans16"):
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
    assert paths["rans16"].stat().st_size < paths["bitpack"].stat().st_size
    assert set(CODECS.names()) == {"bitpack", "rans16"} and DEFAULT_CODEC == "rans16"
