"""AQD (issue 4): weights and activations on 2^bits levels, bit-identical round trip, memory."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from baselines.aqd import QuantMixin, quant_layers
from tests.baseline_kit import assert_memory_is_files, cli_run, logits, tiny_bench, tiny_strategy
from nws_avalanche.artifact import load_state_artifact
from nws_avalanche.errors import ConfigError

T = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    art = tmp_path_factory.mktemp("aqd")
    bench = tiny_bench(T)
    strat, scenario = tiny_strategy("aqd", bench)
    out = []
    for t, exp in enumerate(scenario.train_stream):
        strat.train(exp)
        strat.export_task(t, art)
        out.append(logits(strat.model, bench, t))
    return strat, bench, art, out


def test_quantised_weights_have_at_most_2_pow_bits_values(trained):
    strat, _, _, _ = trained
    strat.model.eval()
    layers = quant_layers(strat.model)
    assert len(layers) == sum(isinstance(m, nn.Conv2d) for m in strat.model.modules()) - 1  # first conv in fp32
    for name, m in layers:
        w = m.weight_q().detach()
        assert w.unique().numel() <= 2 ** 9, name
        q = w / m.w_step.detach()
        assert torch.allclose(q, q.round(), atol=1e-3) and q.min() >= -256 and q.max() <= 255, name


def test_activations_have_at_most_2_pow_bits_levels(trained):
    strat, bench, _, _ = trained
    seen = {}

    def hook(module, inputs):
        seen[module] = module.act_q(inputs[0]).detach()

    handles = [m.register_forward_pre_hook(hook) for _, m in quant_layers(strat.model)]
    try:
        logits(strat.model, bench, T - 1)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(quant_layers(strat.model))
    for m, a in seen.items():
        assert bool(m.a_ready)
        assert a.unique().numel() <= 2 ** 9
        lo, hi = m.a_range
        levels = a / m.a_step.detach()
        assert torch.allclose(levels, levels.round(), atol=1e-3)
        assert levels.min() >= lo - 1e-3 and levels.max() <= hi + 1e-3


def test_round_trip_bit_identical(trained):
    strat, bench, art, out = trained
    for t in range(T):
        rebuilt = strat.rebuild_task(t, art)
        assert torch.equal(logits(rebuilt, bench, t), out[t])
    assert type(rebuilt.conv1) is nn.Conv2d and type(rebuilt.fc) is nn.Linear  # first and last in fp32
    header, state, blobs = load_state_artifact(art / f"task{T - 1:03d}.aqd", "aqd-task")
    for layer in header["layers"]:
        assert len(blobs[f"q/{layer['name']}"]) == math.ceil(math.prod(layer["shape"]) * 9 / 8)
        assert f"{layer['name']}.weight" not in state


def test_fewer_bits_fewer_levels():
    strat, _ = tiny_strategy("aqd", tiny_bench(1), "aqd.bits=3", "aqd.full_precision_last=false")
    strat.prepare_task(0, 2)
    strat.model.train()
    strat.model(torch.randn(4, 1, 12, 12))  # initialises the activation steps
    strat.model.eval()
    layers = quant_layers(strat.model)
    assert isinstance(strat.model.fc, QuantMixin)
    for _, m in layers:
        assert m.weight_q().detach().unique().numel() <= 8


def test_bad_bits_is_a_config_error():
    with pytest.raises(ConfigError, match="bits"):
        tiny_strategy("aqd", tiny_bench(1), "aqd.bits=1")


def test_cli_run_memory_equals_files(tmp_path):
    res = cli_run("aqd", tmp_path)
    assert_memory_is_files(res, tmp_path, "aqd")
    assert res["memory_mib"]["files"]["assist"] == []
