"""The same computations on the device under test (``pytest --device cuda``; cpu by default):
the searches against the float64 reference, NWSPlugin and the NWS strategy through Avalanche
(no forgetting, every tensor on the device), and the per-task state swapped in at evaluation."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin

from nws_avalanche import NWSPlugin, nws_layers
from nws_avalanche.method.search import SEARCHES
from nws_avalanche.speed.selftest import _reference
from tests.test_avalanche_native import _tiny_setup, acc_key

pytestmark = pytest.mark.usefixtures("one_thread")


def _on(t: torch.Tensor, device: torch.device) -> bool:
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


def elsewhere(model: nn.Module, device: torch.device, stored=None) -> list[str]:
    """Names of the tensors training and evaluation use that are not on ``device``: state,
    parameters, each NWS layer's search state and quantised kernels, stored per-task state."""
    seen = list(model.state_dict().items()) + list(model.named_parameters())
    for name, m in nws_layers(model):
        seen += [(f"{name}.search.{k}", v) for k, v in vars(m.search).items() if isinstance(v, torch.Tensor)]
        seen += [(f"{name}._q", m._q)] if m._q is not None else []
    for label, state in (stored or {}).items():
        seen += [(f"task{label}.{k}", v) for part in ("indices", "state") for k, v in state[part].items()]
    return [n for n, t in seen if not _on(t, device)]


@pytest.mark.parametrize("name", sorted(SEARCHES.names()))
@pytest.mark.parametrize("d", [1, 4, 9])
def test_search_on_device_equals_float64_reference(name, d, device):
    gen = torch.Generator().manual_seed(d)
    pool = torch.round(torch.randn(64, d, generator=gen) * 4096 * 0.05) / 4096
    pool[-1] = pool[2]  # a duplicate: ties go to the lower index
    w = torch.randn(3000, d, generator=gen) * 0.05
    w[:64] = pool  # distance 0
    w[64:128] = (pool[:64] + pool[torch.arange(64).roll(1)]) / 2  # exact midpoints
    search = SEARCHES.get(name)(pool.to(device))
    for step in range(3):
        got = search(w.to(device))
        assert _on(got, device) and got.dtype == torch.long
        assert torch.equal(got.cpu(), _reference(w, pool)), (name, d, step)  # float64, lowest index on ties
        w[128:] += torch.randn(len(w) - 128, d, generator=gen) * (0.002 if step == 0 else 0.05)
    one = SEARCHES.get(name)(pool[:1].to(device))  # a pool of one row
    got = one(w.to(device))
    assert _on(got, device) and bool((got == 0).all())


def test_plugin_on_device_keeps_every_tensor_there_and_forgets_nothing(device):
    mod, bench, model, pools = _tiny_setup()
    plugin = NWSPlugin(pools=pools, beta=0.5)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                     criterion=nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=1, eval_mb_size=64,
                     device=device, plugins=[plugin],
                     evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    accs = []
    for exp in bench.train_stream[:2]:
        strategy.train(exp)
        assert elsewhere(strategy.model, device, plugin.task_states) == []
        strategy.eval(bench.test_stream[:2])
        assert elsewhere(strategy.model, device) == []  # the training state is back, on the device
        accs.append(strategy.evaluator.get_last_metrics()[acc_key(0)])
    assert accs[0] == accs[1]


def test_nws_strategy_on_device_forgets_nothing(device):
    from nws_avalanche import NWS

    mod, bench, model, pools = _tiny_setup()
    strategy = NWS(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), criterion=nn.CrossEntropyLoss(),
                   pools=pools, beta=0.5, device=device, train_mb_size=16, train_epochs=1, eval_mb_size=64,
                   evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    accs = []
    for exp in bench.train_stream[:2]:
        strategy.train(exp)
        assert elsewhere(strategy.model, device, strategy.nws.task_states) == []
        strategy.eval(bench.test_stream[:2])
        accs.append(strategy.evaluator.get_last_metrics()[acc_key(0)])
    assert accs[0] == accs[1]


@torch.no_grad()
def test_task_state_swap_with_another_head_size_stays_on_device(device):
    from nws_avalanche.method.plugin import load_task_state, task_state
    from nws_avalanche.method.task_state import resized_head, restore_modules

    from nws_avalanche import nwsify

    mod, bench, model, pools = _tiny_setup()
    nwsify(model, pools, True)
    model.to(device)
    saved = task_state(model)
    assert all(_on(v, device) for v in saved["indices"].values())
    name = next(n for n, m in nws_layers(model) if hasattr(m, "out_features"))
    wide = resized_head(model.get_submodule(name), 5)  # a later task with 5 classes
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, wide)
    replaced = {}
    load_task_state(model, saved, replaced)  # task 0 (2 classes) back in place
    assert elsewhere(model, device) == [] and name in replaced
    for n, m in nws_layers(model):
        assert torch.equal(m.indices, saved["indices"][n].long())
    x = torch.randn(4, 3, 8, 8, device=device)
    assert model.eval()(x).shape == (4, 2)
    restore_modules(model, replaced)
    assert model.get_submodule(name) is wide
