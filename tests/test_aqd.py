"""AQD (issues 4, 16): weights and activations on 2^bits levels, steps initialised from warm-up ranges as the
reference's LSQ path, per-channel weight steps, bit-identical round trip, memory."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import numpy as np

from baselines.aqd import AQDOptions, QuantConv2d, QuantMixin, quant_layers
from tests.baseline_kit import assert_memory_is_files, cli_run, logits, tiny_bench, tiny_strategy
from nws_avalanche.common.errors import ConfigError
from nws_avalanche.storage.codecs import decode_ints
from nws_avalanche.storage.record import read_record

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
        assert w.unique().numel() <= 2 ** 9 * m.w_step.numel(), name
        assert m.w_step.shape == (m.weight.shape[0],)  # one step per output channel (the default)
        q = w / m._w_step().detach()
        assert torch.allclose(q, q.round(), atol=1e-3) and q.round().min() >= -256 and q.round().max() <= 255, name


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
        assert not m.warming_up()
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
    rec = read_record(art / f"task{T - 1:03d}.aqd", "aqd-task")
    header, state, blobs = rec.header, rec.state, rec.blobs
    assert header["codec"] == "rans16"
    layers = dict(quant_layers(strat.model))
    for layer in header["layers"]:
        n = math.prod(layer["shape"])
        q = decode_ints(blobs[f"q/{layer['name']}"], n, 2 ** 9, header["codec"]) - 256
        assert np.array_equal(q, layers[layer["name"]].int_weight().numpy().reshape(-1))
        assert len(blobs[f"q/{layer['name']}"]) <= math.ceil(n * 9 / 8) + 1  # never above bit-packing
        assert f"{layer['name']}.weight" not in state


def _gaussian_conv(opts: AQDOptions) -> QuantConv2d:
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    with torch.no_grad():  # trained weights are roughly Gaussian: a few large ones, most near 0
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.05)
    layer = QuantConv2d(conv, opts)
    layer.reset_steps()
    return layer


@pytest.mark.parametrize("weight_steps", ["channel", "layer"])
def test_most_weight_levels_used_after_init(weight_steps):
    """Steps from the warm-up's max|w| spread a 36,864-weight layer over most of the 512 levels at 9 bits
    (the former 2 mean|w| / sqrt(Qp) used about 90 of them)."""
    layer = _gaussian_conv(AQDOptions(weight_steps=weight_steps, warmup_batches=2)).train()
    for _ in range(2):
        layer(torch.randn(2, 64, 5, 5).relu())
    used = layer.int_weight().unique().numel()
    assert used >= 400, used
    old_step = 2 * layer.weight.abs().mean() / 255 ** 0.5
    assert torch.clamp(layer.weight / old_step, -256, 255).round().unique().numel() < 128


def test_warmup_runs_in_full_precision_and_averages_the_ranges():
    layer = _gaussian_conv(AQDOptions(warmup_batches=3)).train()
    xs = [torch.rand(2, 64, 5, 5) * scale for scale in (1.0, 2.0, 4.0)]
    for x in xs:  # all three warm-up batches: the plain conv (the reference's `stable` iterations)
        assert torch.equal(layer(x), nn.functional.conv2d(x, layer.weight, padding=1))
    expected = sum(float(x.abs().max()) for x in xs) / 3 / 511
    assert float(layer.a_step.detach()) == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(layer.w_step.detach(), torch.full((64,), float(layer.weight.detach().abs().max()) / 255))
    assert not torch.equal(layer(xs[0]), nn.functional.conv2d(xs[0], layer.weight, padding=1))  # quantised now


def test_default_step_training_equals_the_reference_clip_training_float64():
    """The reference learns clip values c (``grad_scale`` none: gradient unscaled); ours learns s = c / Qp
    with the gradient x 1/Qp^2. Restated independently in float64: SGD (momentum, Nesterov) on
    (W, c_w, c_a) moves c exactly as ours moves Qp * s, step for step."""
    torch.manual_seed(0)
    layer = _gaussian_conv(AQDOptions(warmup_batches=1)).double().train()
    assert layer.grad_mode == "none"
    xs = [torch.rand(4, 64, 5, 5, dtype=torch.float64) for _ in range(6)]
    layer(xs[0])  # warm-up: sets the steps
    qpw, qpa = layer.w_range[1], layer.a_range[1]
    W = layer.weight.detach().clone().requires_grad_()
    cw = (layer.w_step.detach() * qpw).clone().requires_grad_()
    ca = (layer.a_step.detach() * qpa).clone().requires_grad_()

    def q_ref(x, c, qn, qp):  # s = c / Qp, rounding straight-through, plain autograd to c
        s = c / qp
        y = torch.clamp(x / s, qn, qp)
        return ((y.round() - y).detach() + y) * s

    sgd = dict(lr=0.05, momentum=0.9, nesterov=True)
    ours, ref = torch.optim.SGD(layer.parameters(), **sgd), torch.optim.SGD([W, cw, ca], **sgd)
    for x in xs[1:]:
        ours.zero_grad(), ref.zero_grad()
        layer(x).pow(2).mean().backward()
        out = nn.functional.conv2d(q_ref(x, ca, 0, qpa), q_ref(W, cw.view(-1, 1, 1, 1), -qpw - 1, qpw), padding=1)
        out.pow(2).mean().backward()
        ours.step(), ref.step()
        assert torch.allclose(layer.w_step.detach() * qpw, cw.detach(), rtol=1e-12, atol=0)
        assert torch.allclose(layer.a_step.detach() * qpa, ca.detach(), rtol=1e-12, atol=0)
        assert torch.allclose(layer.weight.detach(), W.detach(), rtol=1e-12, atol=1e-15)
    assert not torch.allclose(cw.detach(), layer.w_clip.double().expand_as(cw))  # the clips did move


def test_fewer_bits_fewer_levels():
    strat, _ = tiny_strategy("aqd", tiny_bench(1), "aqd.bits=3", "aqd.full_precision_last=false")
    strat.prepare_task(0, 2)
    strat.model.train()
    for _ in range(20):  # the warm-up batches initialise the steps
        strat.model(torch.randn(4, 1, 12, 12))
    strat.model.eval()
    layers = quant_layers(strat.model)
    assert isinstance(strat.model.fc, QuantMixin)
    for _, m in layers:
        assert m.weight_q().detach().unique().numel() <= 8 * m.w_step.numel()
        assert m.int_weight().unique().numel() <= 8


def test_bad_bits_is_a_config_error():
    with pytest.raises(ConfigError, match="bits"):
        tiny_strategy("aqd", tiny_bench(1), "aqd.bits=1")


def test_cli_run_memory_equals_files(tmp_path):
    res = cli_run("aqd", tmp_path)
    assert_memory_is_files(res, tmp_path, "aqd")
    assert res["memory_mib"]["files"]["assist"] == []


def test_levels_used_per_layer_in_task_facts(trained):
    strat, _, art, _ = trained
    facts = strat.task_summary(T - 1)["levels_used"]
    _, _, ints = strat.read_task(T - 1, art)
    assert facts == {name: int(np.unique(q).size) for name, q in ints.items()}
    assert all(1 < v <= 2 ** 9 for v in facts.values())
