"""KSM (issue 16): the official layer's formula, masks that move, what is stored, memory."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baselines.ksm import BACKBONE_FILE, KSMConv2d, KSMOptions
from benchmarks import build_benchmark, to_avalanche
from nws_avalanche.config.run_config import build_config
from nws_avalanche.nets.models import build_arch
from nws_avalanche.pools.pretrained import Assets
from nws_avalanche.runner.factory import build_strategy
from nws_avalanche.storage.codecs import decode_ints
from nws_avalanche.storage.record import read_record
from nws_avalanche.strategies.methods import load_all
from tests.baseline_kit import ARCH, assert_memory_is_files, cli_run, logits, tiny_bench, tiny_strategy

T = 2


def reference_multiplier(m: np.ndarray, training: bool) -> tuple[np.ndarray, np.ndarray]:
    """The authors' GroupWiseConv2d (kernel_wise, soft) restated in float64 numpy:
    (multiplier per kernel, d multiplier / d m through the straight-through estimator)."""
    x = (m - 5e-3) * 1200.0
    if training:
        soft = 1.0 / (1.0 + np.exp(-x / 100.0))
        hard = (soft >= 0.5).astype(np.float64)
        grad = soft * (1 - soft) * 1200.0 / 100.0
    else:
        hard = (x >= 0).astype(np.float64)
        grad = np.zeros_like(m)
    a = m * (1 - hard)
    lo, span = a.min(), a.max() - a.min()
    nz = a != 0
    a[nz] = (a[nz] - lo) / span
    return 0.5 * a + hard, grad


@pytest.mark.parametrize("training", [True, False])
def test_forward_and_gradient_equal_the_reference_formula_in_float64(training):
    gen = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(5, 6, 3, padding=1, bias=False).double()
    layer = KSMConv2d(conv, KSMOptions()).double().train(training)
    m = torch.rand(6, 5, generator=gen, dtype=torch.float64) * 0.02 - 0.005  # kept, dropped, negative
    m[0, 0] = 0.0  # a dropped kernel with m == 0 keeps a zero soft part (the reference's a != 0 filter)
    m[1, 1] = 5e-3  # exactly at the threshold: kept
    with torch.no_grad():
        layer.mask_real.copy_(m)
    x = torch.randn(2, 5, 7, 7, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 6, 7, 7, generator=gen, dtype=torch.float64)
    out = layer(x)
    mult, dmult = reference_multiplier(m.numpy().copy(), training)
    assert 0 < (mult == 1).sum() < mult.size and mult[0, 0] == 0.0 and mult[1, 1] == 1.0
    w_ref = torch.from_numpy(mult)[:, :, None, None] * conv.weight.detach()
    torch.testing.assert_close(out, F.conv2d(x, w_ref, padding=1), rtol=0, atol=1e-12)
    if training:
        (out * g).sum().backward()
        w = w_ref.clone().requires_grad_(True)
        (F.conv2d(x, w, padding=1) * g).sum().backward()
        expected = (w.grad * conv.weight.detach()).sum((2, 3)) * torch.from_numpy(dmult)
        torch.testing.assert_close(layer.mask_real.grad, expected, rtol=1e-10, atol=1e-14)
        assert layer.weight.grad is None  # the backbone is frozen


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """KSM on the first two tasks of digits-transfer (8x8, tiny net, the stream whose permuted
    task needs new features): 200 steps per task."""
    load_all()
    art = tmp_path_factory.mktemp("ksm")
    cfg = build_config([], ["benchmark=digits-transfer", f"arch={ARCH}", "epochs=20", "batch_size=15",
                            "benchmark_options.transforms=[identity,pixels]", "benchmark_options.image_size=8"],
                       method="ksm")
    bench = build_benchmark(cfg)
    torch.manual_seed(0)
    pre = build_arch(ARCH, 4, bench.in_channels)
    assets = Assets(ARCH, bench.in_channels, {k: v.clone() for k, v in pre.state_dict().items()}, 4, None, None)
    strat = build_strategy(cfg, assets, [t.num_classes for t in bench.tasks], progress=False)
    scenario = to_avalanche(bench)
    seen = {"logits": [], "summary": [], "backbone": []}
    for t in range(T):
        strat.train(scenario.train_stream[t])
        strat.export_task(t, art)
        seen["summary"].append(strat.task_summary(t))
        seen["logits"].append(logits(strat.model, bench, t))
        seen["backbone"].append((art / BACKBONE_FILE).read_bytes())
    return strat, bench, art, seen


def test_masks_flip_within_a_few_hundred_steps(digits_run):
    strat, _, _, seen = digits_run
    for summary in seen["summary"]:
        assert 0.0 < 1.0 - summary["kept_total"] < 1.0
        assert set(summary["kept_share"]) == {n for n, _ in strat.mask_layers()}
        assert any(share < 1.0 for share in summary["kept_share"].values())


def test_rebuilt_logits_bit_identical_and_store_what_rebuild_needs(digits_run):
    strat, bench, art, seen = digits_run
    assert torch.equal(logits(strat.rebuild_task(T - 1, art), bench, T - 1), seen["logits"][-1])
    rec = read_record(art / f"task{T - 1:03d}.ksm", "ksm-task")
    header, state, blobs = rec.header, rec.state, rec.blobs
    assert header["codec"] == "rans16"
    layers = dict(strat.mask_layers())
    for layer in header["layers"]:
        m = layers[layer["name"]]
        n = m.mask_real.numel()
        kept = decode_ints(blobs[f"bin/{layer['name']}"], n, 2, header["codec"]).astype(bool)
        assert np.array_equal(kept, m.kept().numpy().reshape(-1))
        soft = np.frombuffer(blobs[f"soft/{layer['name']}"], dtype="<f4")
        assert soft.size == (~kept).sum() and np.all((soft >= 0) & (soft <= 0.5))
        assert not any(k.startswith(layer["name"] + ".") and "mask" in k for k in state)
    assert f"{header['layers'][0]['name']}.weight" not in state


def test_backbone_frozen_and_written_once(digits_run):
    strat, _, _, seen = digits_run
    assert all(b == seen["backbone"][0] for b in seen["backbone"])
    pre = strat.assets.pretrained_state
    for name, m in strat.mask_layers():
        assert torch.equal(m.weight, pre[f"{name}.weight"]), name


def test_masks_and_batchnorm_by_adam_head_by_the_common_optimiser():
    strat, scenario = tiny_strategy("ksm", tiny_bench(1), "lr=0.05", "weight_decay=1e-3")
    strat.make_optimizer()
    adam, head = strat.optimizer.optimizers
    masks = {id(m.mask_real) for _, m in strat.mask_layers()}
    bn = {id(p) for mod in strat.model.modules() if isinstance(mod, torch.nn.BatchNorm2d) for p in mod.parameters()}
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 2e-4
    assert adam.param_groups[0]["weight_decay"] == 0
    assert {id(p) for p in adam.param_groups[0]["params"]} == masks | bn
    assert isinstance(head, torch.optim.SGD) and head.param_groups[0]["lr"] == 0.05
    assert [id(p) for g in head.param_groups for p in g["params"]] == [id(strat.model.fc.weight)]


def test_cosine_schedule_is_the_references_step_lr_cos():
    """ksm.schedule=cosine: every step's lr of masks/BN and head is base (1 + cos(pi (i + e N) / (E N))) / 2
    with e counted from 1 (utils.step_lr_cos as the reference's loop calls it), restated here."""
    from avalanche.core import SupervisedPlugin

    class Record(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.lrs = []

        def after_update(self, strategy, **kw):
            self.lrs.append([g["lr"] for g in strategy.optimizer.param_groups])
            self.n = len(strategy.dataloader)

    strat, scenario = tiny_strategy("ksm", tiny_bench(1), "ksm.schedule=cosine", "epochs=3", "lr=0.05",
                                    "milestones=[1]")
    rec = Record()
    strat.plugins.append(rec)
    strat.train(scenario.train_stream[0])
    n = rec.n
    assert n >= 2 and len(rec.lrs) == 3 * n
    for step, lrs in enumerate(rec.lrs):
        e, i = step // n + 1, step % n
        want = [base * (1 + math.cos(math.pi * (i + e * n) / (3 * n))) / 2 for base in (2e-4, 0.05)]
        assert len(lrs) == 2 and all(abs(a - b) <= 1e-15 for a, b in zip(lrs, want)), (step, lrs, want)


def test_cli_run_memory_equals_files(tmp_path):
    res = cli_run("ksm", tmp_path)
    assert_memory_is_files(res, tmp_path, "ksm")
    assert res["memory_mib"]["files"]["assist"] == [BACKBONE_FILE]
