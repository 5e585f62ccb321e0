"""NWS in plain Avalanche code: per-task state at evaluation, multi-head models, LwF, deep copies.

Every test builds its stream with Avalanche's own ``nc_benchmark`` and evaluates with Avalanche's
``EvaluationPlugin``; the per-task numbers must equal those of models rebuilt from artifacts.
"""
from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.training import LwF, Naive
from avalanche.training.plugins import EvaluationPlugin

from nws_avalanche import NWSPlugin, build_pools_kmeans, nws_layers, nwsify
from nws_avalanche.method.task_artifact import load_nws_task, read_nws_task, save_nws_task

ROOT = Path(__file__).resolve().parents[1]


def load_example(name):
    """Import an example as ``python examples/NAME.py`` would: its folder first on sys.path."""
    if str(ROOT / "examples") not in sys.path:
        sys.path.insert(0, str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def acc_key(t):
    return f"Top1_Acc_Exp/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}"


class Outputs(SupervisedPlugin):
    """Records the logits Avalanche's evaluation saw, per test experience (last eval only)."""

    def __init__(self):
        super().__init__()
        self.out = {}

    def before_eval(self, strategy, **kw):
        self.out = {}

    def after_eval_forward(self, strategy, **kw):
        self.out.setdefault(strategy.experience.current_experience, []).append(strategy.mb_output.detach().clone())


def run_recording(mod, tmp_path, build_skeleton, **kw):
    """Run an example's ``main``: artifacts after each task, Avalanche's accuracies after each eval."""
    after = {}
    rec = Outputs()

    def after_task(strategy, t):
        save_nws_task(tmp_path / f"task{t}.nwst", strategy.model, task=t, arch="custom", num_classes=2,
                      pool_fingerprint=pools_box[0].fingerprint, pool_digest=pools_box[0].digest)

    pools_box = []
    orig = mod.build_pools_kmeans

    def keep(*a, **k):
        pools_box.append(orig(*a, **k))
        return pools_box[-1]
    mod.build_pools_kmeans = keep

    class AfterEval(SupervisedPlugin):
        def after_eval(self, strategy, **k):
            m = strategy.evaluator.get_last_metrics()
            after.setdefault(len(after), {t: m.get(acc_key(t)) for t in range(3)})

    strategy, bench, pools = mod.main(epochs=2, plugins=[rec, AfterEval()], after_task=after_task, **kw)
    return strategy, bench, pools, after, rec


def check_no_forgetting_and_artifacts(strategy, bench, pools, after, rec, tmp_path, build_skeleton):
    final = strategy.evaluator.get_last_metrics()
    T = len(bench.train_stream)
    for t in range(T):
        # right after task t was learned (eval number t) == after the last task, exactly
        assert after[t][t] == final[acc_key(t)], t
        if t < T - 1:
            assert final[f"ExperienceForgetting/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}"] == 0.0
        # the model rebuilt from task t's artifact gives the logits Avalanche saw, bit for bit
        model = load_nws_task(tmp_path / f"task{t}.nwst", lambda c: build_skeleton(t), pools.fingerprint,
                              pools.digest)
        loader = torch.utils.data.DataLoader(bench.test_stream[t].dataset.eval(), batch_size=64)
        with torch.no_grad():
            rebuilt = [model(x) if not hasattr(model, "forward_single_task") else model.forward_single_task(x, t)
                       for x, _, tl in loader]
        assert len(rebuilt) == len(rec.out[t])
        for a, b in zip(rebuilt, rec.out[t]):
            assert torch.equal(a, b)
        correct = sum(int((o.argmax(1) == y).sum()) for o, (_, y, _) in zip(rebuilt, loader))
        assert abs(final[acc_key(t)] - correct / len(bench.test_stream[t].dataset)) < 1e-12


def test_naive_with_nws_plugin_shows_stored_accuracy(tmp_path, one_thread):
    mod = load_example("nws_naive")
    strategy, bench, pools, after, rec = run_recording(mod, tmp_path, None)

    def skeleton(t):
        return nwsify(mod.SmallNet(), pools, search_now=False)
    check_no_forgetting_and_artifacts(strategy, bench, pools, after, rec, tmp_path, skeleton)
    # it learned something: better than chance on the first task
    assert strategy.evaluator.get_last_metrics()[acc_key(0)] > 0.6


def test_multi_head_model(tmp_path, one_thread):
    mod = load_example("nws_multihead")
    strategy, bench, pools, after, rec = run_recording(mod, tmp_path, None)
    heads = [n for n, m in nws_layers(strategy.model) if "classifiers" in n]
    assert len(heads) == 3  # every head Avalanche added became an NWS layer

    def skeleton(t):  # as many heads as the model had when task t was saved (Avalanche adds them at eval too)
        header = read_nws_task(tmp_path / f"task{t}.nwst")[0]
        return nwsify(mod.skeleton(sum("classifiers" in lay["name"] for lay in header["layers"])), pools,
                      search_now=False)
    check_no_forgetting_and_artifacts(strategy, bench, pools, after, rec, tmp_path, skeleton)


def _tiny_setup(seed=0):
    mod = load_example("nws_naive")
    torch.manual_seed(seed)
    bench = mod.make_benchmark()
    model = mod.SmallNet()
    return mod, bench, model, build_pools_kmeans(model, K=16, seed=0)


def test_lwf_with_nws_plugin_and_deepcopy(one_thread):
    mod, bench, model, pools = _tiny_setup()
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), forgetting_metrics(experience=True), loggers=[])
    strategy = LwF(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss(), alpha=1.0,
                   temperature=2.0, train_mb_size=16, train_epochs=1, eval_mb_size=64,
                   plugins=[NWSPlugin(pools=pools)], evaluator=evaluator)
    first = None
    for t, exp in enumerate(bench.train_stream[:2]):
        strategy.train(exp)  # LwF deep-copies the model after each experience
        strategy.eval(bench.test_stream[:2])
        if t == 0:
            first = strategy.evaluator.get_last_metrics()[acc_key(0)]
    final = strategy.evaluator.get_last_metrics()
    assert final[acc_key(0)] == first
    assert final["ExperienceForgetting/eval_phase/test_stream/Task000/Exp000"] == 0.0
    # a deep copy of the trained model computes the same thing
    x = bench.test_stream[0].dataset[0][0][None]
    twin = copy.deepcopy(strategy.model).eval()
    strategy.model.eval()
    assert torch.equal(twin(x), strategy.model(x))


def test_deepcopy_right_after_a_training_step(one_thread):
    _, _, model, pools = _tiny_setup()
    nwsify(model, pools)
    model.train()
    loss = model(torch.randn(4, 3, 8, 8)).sum() + sum(m.commitment for _, m in nws_layers(model))
    copy.deepcopy(model)  # the commitments are still on the graph here
    loss.backward()


def test_dict_of_tables_and_poolset_give_the_same_model(one_thread):
    _, _, model, pools = _tiny_setup()
    a = nwsify(copy.deepcopy(model), pools)
    b = nwsify(copy.deepcopy(model), dict(pools.tables))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(a.eval()(x), b.eval()(x))
    assert [n for n, _ in nws_layers(a)] == ["features.0", "features.3", "classifier"]


def test_compiled_model(one_thread):
    _, _, model, pools = _tiny_setup()
    with pytest.raises(ValueError, match="convert it first and compile after"):
        Naive(torch.compile(model), torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
              plugins=[NWSPlugin(pools=pools)]).train(_tiny_setup()[1].train_stream[0])
    nwsify(model, pools)
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(4, 3, 8, 8)
    model.eval()
    assert torch.equal(compiled(x), model(x))
    model.train()
    compiled(x).sum().backward()  # the search runs eagerly inside the compiled model
    assert model.features[0].weight.grad is not None


# -- baselines: Avalanche's evaluation of each task's own state ----------------------------------
@pytest.mark.parametrize("method", ["finetune", "frozen", "packnet", "ksm", "aqd"])
def test_baseline_eval_uses_each_tasks_state(method, tmp_path, one_thread):
    from tests.baseline_kit import tiny_bench, tiny_strategy

    bench = tiny_bench(n_tasks=3)
    strategy, scenario = tiny_strategy(method, bench)
    rec = Outputs()
    strategy.plugins.append(rec)
    after = []
    for t, exp in enumerate(scenario.train_stream):
        strategy.train(exp)
        strategy.export_task(t, tmp_path)
        strategy.eval(scenario.test_stream)
        after.append(strategy.evaluator.get_last_metrics())
    final = after[-1]
    for t in range(3):
        assert after[t][acc_key(t)] == final[acc_key(t)], t
        model = strategy.rebuild_task(t, tmp_path)
        loader = torch.utils.data.DataLoader(scenario.test_stream[t].dataset.eval(), batch_size=strategy.eval_mb_size)
        with torch.no_grad():
            for (x, _, _), seen in zip(loader, rec.out[t]):
                assert torch.equal(model(x), seen)
    # the training state came back after every evaluation: task 2's live model is task 2's
    x = next(iter(loader))[0]
    strategy.model.eval()
    assert torch.equal(strategy.model(x), strategy.rebuild_task(2, tmp_path)(x))


def test_runner_matrix_is_avalanches(tmp_path, one_thread):
    from nws_avalanche.config.run_config import build_config
    from nws_avalanche.runner.run import run_single

    seen = {}

    def cb(t, acc, strategy):
        seen[t] = dict(strategy.evaluator.get_last_metrics())

    cfg = build_config([], ["arch=resnet-tiny", "epochs=1", "pretrain_epochs=1", "pool_size=8",
                            "benchmark_options.tasks=2", "batch_size=64", "loggers=[text,csv]"], method="nws")
    res = run_single(cfg, tmp_path, progress=False, callbacks=[cb])
    acc = res["accuracy_matrix"]
    for t in range(2):
        for j in range(t + 1):
            assert abs(acc[t][j] / 100 - seen[t][acc_key(j)]) < 1e-12
    # the loggers chosen in the config got Avalanche's metrics
    run = tmp_path / "split-digits" / "nws" / "seed0"
    assert "Top1_Acc_Exp/eval_phase/test_stream/Task001/Exp001" in (run / "avalanche_log.txt").read_text()
    assert (run / "csv" / "eval_results.csv").read_text().count("\n") >= 4  # header + 3 evaluations


def test_nws_strategy_the_avalanche_way(one_thread):
    """``NWS(model=, optimizer=, criterion=, pools=PoolSet, ...)`` == ``Naive`` + ``NWSPlugin``, exactly."""
    from nws_avalanche import NWS

    results = []
    for use_strategy in (True, False):
        mod, bench, model, pools = _tiny_setup()
        kw = dict(train_mb_size=16, train_epochs=1, eval_mb_size=64,
                  evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        if use_strategy:
            strategy = NWS(model=model, optimizer=opt, criterion=nn.CrossEntropyLoss(), pools=pools, beta=0.5, device="cpu", **kw)
        else:
            strategy = Naive(model=model, optimizer=opt, criterion=nn.CrossEntropyLoss(),
                             plugins=[NWSPlugin(pools=pools, beta=0.5)], **kw)
        accs = []
        for exp in bench.train_stream[:2]:
            strategy.train(exp)
            strategy.eval(bench.test_stream[:2])
            accs.append(strategy.evaluator.get_last_metrics()[acc_key(0)])
        results.append(accs)
        assert accs[0] == accs[1]  # task 0 unchanged by task 1
    assert results[0] == results[1]


def test_minibatches_mixing_tasks_are_evaluated_per_task(one_thread):
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels

    mod, bench, model, pools = _tiny_setup()
    tests = [bench.test_stream[t].dataset.eval() for t in range(2)]
    mixed = tests[0].concat(tests[1])
    n0 = len(tests[0])
    order = [i for pair in zip(range(n0), range(n0, len(mixed))) for i in pair]  # t0, t1, t0, t1, ...
    both = with_task_labels(benchmark_from_datasets(test=[tests[0], tests[1], mixed.subset(order)]))
    rec = Outputs()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                     criterion=nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=1, eval_mb_size=8,
                     plugins=[NWSPlugin(pools=pools), rec],
                     evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    for exp in bench.train_stream[:2]:
        strategy.train(exp)
    strategy.eval(both.test_stream)
    per_task = [torch.cat(rec.out[t]) for t in range(2)]
    expected = torch.stack([per_task[0], per_task[1]], 1).reshape(-1, per_task[0].shape[1])
    got = torch.cat(rec.out[2])
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert torch.equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("kind", ["ewc", "replay", "cumulative", "lr_scheduler", "early_stopping"])
def test_nws_plugin_combines_with_avalanche(kind, one_thread):
    from avalanche.training import EWC, Cumulative
    from avalanche.training.plugins import EarlyStoppingPlugin, LRSchedulerPlugin, ReplayPlugin

    mod, bench, model, pools = _tiny_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    kw = dict(model=model, optimizer=opt, criterion=nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=2,
              eval_mb_size=64, evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    plugins = [NWSPlugin(pools=pools)]
    cls = Naive
    if kind == "ewc":
        cls, kw["ewc_lambda"] = EWC, 1.0
    elif kind == "cumulative":
        cls = Cumulative
    elif kind == "replay":
        plugins.append(ReplayPlugin(mem_size=20))
    elif kind == "lr_scheduler":
        plugins.append(LRSchedulerPlugin(torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)))
    else:
        plugins.append(EarlyStoppingPlugin(patience=1, val_stream_name="test_stream"))
        kw["eval_every"] = 1
    strategy = cls(plugins=plugins, **kw)
    accs = []
    for exp in bench.train_stream[:2]:
        strategy.train(exp, eval_streams=[bench.test_stream[:2]] if kind == "early_stopping" else None)
        strategy.eval(bench.test_stream[:2])
        accs.append(strategy.evaluator.get_last_metrics()[acc_key(0)])
    assert accs[0] == accs[1]
    copy.deepcopy(strategy.model)


def test_baseline_example_shows_no_forgetting(one_thread):
    mod = load_example("baseline_packnet")
    after = {}

    class AfterEval(SupervisedPlugin):
        def after_eval(self, strategy, **k):
            after[len(after)] = dict(strategy.evaluator.get_last_metrics())

    strategy, bench = mod.main(epochs=1, plugins=[AfterEval()])
    final = after[2]
    for t in range(3):
        assert after[t][acc_key(t)] == final[acc_key(t)]
    for t in range(2):
        assert final[f"ExperienceForgetting/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}"] == 0.0


def test_artifact_with_heads_the_skeleton_lacks_is_refused(tmp_path, one_thread):
    from nws_avalanche.common.errors import ArtifactError

    mod = load_example("nws_multihead")
    torch.manual_seed(0)
    model = mod.skeleton(2)
    pools = build_pools_kmeans(mod.MultiHeadNet(), K=8, seed=0, iters=1, include_head=False)
    nwsify(model, pools, include_head=False)  # dense heads: stored as state entries
    save_nws_task(tmp_path / "t.nwst", model, task=1, arch="custom", num_classes=2,
                  pool_fingerprint=pools.fingerprint, pool_digest=pools.digest)

    def skeleton(heads):
        return lambda c: nwsify(mod.skeleton(heads), pools, include_head=False, search_now=False)
    with pytest.raises(ArtifactError, match="state entries the model lacks: .*classifiers.1"):
        load_nws_task(tmp_path / "t.nwst", skeleton(1), pools.fingerprint, pools.digest)
    back = load_nws_task(tmp_path / "t.nwst", skeleton(2), pools.fingerprint, pools.digest)
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(back.forward_single_task(x, 1), model.eval().forward_single_task(x, 1))


def test_wandb_metrics_logger_and_logger_names():
    from nws_avalanche.common.errors import ConfigError
    from nws_avalanche.config.loggers import WandbMetricsLogger
    from nws_avalanche.config.run_config import build_config

    class FakeRun:
        def __init__(self):
            self.logged = []

        def log(self, data, commit=True):
            self.logged.append((data, commit))

    run = FakeRun()
    logger = WandbMetricsLogger(run=lambda: run, commit=False)  # the runner's form: a run started on demand
    logger.log_single_metric("Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000", torch.tensor(0.75), 3)
    logger.log_single_metric("ConfusionMatrix", torch.zeros(2, 2), 3)  # not a scalar: skipped
    assert run.logged == [({"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000": 0.75}, False)]
    with pytest.raises(ConfigError, match="unknown logger.*'tensorbord'.*tensorboard"):
        build_config([], ["loggers=[tensorbord]"]).validate()
