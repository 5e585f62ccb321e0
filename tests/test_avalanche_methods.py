"""Avalanche's strategies (EWC, SI, MAS, LwF, Replay) as methods: the models rebuilt from the stored
files are the trained multi-head network exactly, the regulariser / buffer does what it claims,
memory is the files on disk, and three of them run through the runner with a report."""
from __future__ import annotations

import json

import pytest
import torch

from baselines.avalanche_methods import MultiHeadNet, NETWORK_FILE
from nws_avalanche.cli import main as cli
from nws_avalanche.common.errors import ArtifactError
from nws_avalanche.storage.record import read_record
from tests.baseline_kit import assert_memory_is_files, logits, tiny_bench, tiny_strategy

pytestmark = pytest.mark.usefixtures("one_thread")

ALL = ("ewc", "si", "mas", "lwf", "replay", "gem", "agem")


def backbone_vector(strategy) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in strategy.model.backbone.parameters()])


@pytest.mark.parametrize("method", ALL)
def test_rebuilt_models_are_the_trained_network_with_each_head(method, tmp_path):
    bench = tiny_bench(3)
    small = {"gem": ["gem.patterns_per_experience=8"], "agem": ["agem.patterns_per_experience=8"]}
    strategy, scenario = tiny_strategy(method, bench, *small.get(method, []))
    before = None
    for t, exp in enumerate(scenario.train_stream):
        strategy.train(exp)
        assert strategy.export_task(t, tmp_path) == []  # every file is shared and rewritten
        for j in range(t + 1):  # task j after task t: the network after task t with head j
            x = torch.stack([bench.tasks[j].test[i][0] for i in range(len(bench.tasks[j].test))])
            with torch.no_grad():
                live = strategy.model.eval()(x, j)
            assert torch.equal(logits(strategy.rebuild_task(j, tmp_path), bench, j), live)
        if t == 0:
            before = logits(strategy.rebuild_task(0, tmp_path), bench, 0)
    # one shared network: task 0's model changed with the later tasks (what lets it forget)
    assert not torch.equal(logits(strategy.rebuild_task(0, tmp_path), bench, 0), before)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([NETWORK_FILE, f"method-state.{method}"])
    assert [p.name for p in strategy.assist_files(tmp_path)] == [NETWORK_FILE, f"method-state.{method}"]
    # the state after the last task comes back from the files alone (a run resumed without checkpoint)
    again, _ = tiny_strategy(method, bench, *small.get(method, []))
    again.restore_from_files(2, tmp_path)
    assert again.clock.train_exp_counter == 3
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                 strategy.model.state_dict().values()))
    state = {k: v.clone() for k, v in again.method_state().items()}
    assert state.keys() == strategy.method_state().keys()
    assert all(torch.equal(state[k], v) for k, v in strategy.method_state().items())
    with pytest.raises(ArtifactError, match="--overwrite"):  # an earlier task's state is gone
        again.restore_from_files(1, tmp_path)


def test_ewc_penalty_holds_the_fisher_weighted_drift_down():
    bench = tiny_bench(2, n_train=64)
    drift = {}
    for lam in (0, 1000):
        strategy, scenario = tiny_strategy("ewc", bench, f"ewc.ewc_lambda={lam}", "epochs=3")
        exps = list(scenario.train_stream)
        strategy.train(exps[0])
        a = backbone_vector(strategy)
        fisher = torch.cat([v.data.flatten() for k, v in strategy.cl_plugin.importances[0].items()
                            if k.startswith("backbone.")])
        strategy.train(exps[1])
        drift[lam] = float((fisher * (backbone_vector(strategy) - a) ** 2).sum())
    assert drift[1000] < 0.5 * drift[0]


@pytest.mark.parametrize("method,option,strong", [("si", "si_lambda", 10000), ("mas", "lambda_reg", 100),
                                                  ("lwf", "alpha", 10)])
def test_regulariser_keeps_task0_outputs_closer(method, option, strong):
    """A strong penalty / distillation changes task 0's outputs (on task 1's inputs) less than none."""
    bench = tiny_bench(2, n_train=64)
    x1 = torch.stack([bench.tasks[1].train[i][0] for i in range(64)])
    change = {}
    for value in (0, strong):
        strategy, scenario = tiny_strategy(method, bench, f"{method}.{option}={value}", "epochs=3")
        exps = list(scenario.train_stream)
        strategy.train(exps[0])
        with torch.no_grad():
            before = strategy.model.eval()(x1, 0)
        strategy.train(exps[1])
        with torch.no_grad():
            change[value] = float((strategy.model.eval()(x1, 0) - before).pow(2).mean())
    assert change[strong] < 0.6 * change[0]


@pytest.mark.parametrize("method,sets", [("gem", ["gem.patterns_per_experience=16", "gem.memory_strength=0"]),
                                         ("agem", ["agem.patterns_per_experience=16", "agem.sample_size=16"])])
def test_gem_steps_never_oppose_a_past_tasks_memory_gradient(method, sets):
    """After the projection no step opposes a past task's memory gradient, and the projection reaches
    the old heads (Avalanche 0.6 left their gradient empty, so their part of it was lost)."""
    from avalanche.core import SupervisedPlugin

    def flat(strategy):
        return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                          for p in strategy.model.parameters()]).double()

    def refs(strategy):
        plugin = strategy.cl_plugin
        return (plugin.G if method == "gem" else plugin.reference_gradients[None]).double()

    seen = {"before": [], "after": [], "old_heads": []}

    class Before(SupervisedPlugin):
        def after_backward(self, strategy, **kw):
            if strategy.clock.train_exp_counter > 0:
                seen["before"].append(float((refs(strategy) @ flat(strategy)).min()))

    class After(SupervisedPlugin):
        def after_backward(self, strategy, **kw):
            if strategy.clock.train_exp_counter > 0:
                G, g = refs(strategy), flat(strategy)
                seen["after"].append(float((G @ g).min() / (G.norm() * g.norm())))
                t = strategy.clock.train_exp_counter
                grads = [strategy.model.heads[str(j)].weight.grad for j in range(t)]
                seen["old_heads"].append(any(g is not None and bool(g.abs().sum() > 0) for g in grads))

    bench = tiny_bench(3, n_train=64)
    for task in bench.tasks[1::2]:  # task 1 flips task 0's labels: its steps conflict with task 0's memory
        for part in (task.train, task.test):
            part.tensors = (part.tensors[0], 1 - part.tensors[1])
    strategy, scenario = tiny_strategy(method, bench, *sets)
    strategy.plugins.insert(0, Before())
    strategy.plugins.append(After())
    for exp in scenario.train_stream:
        strategy.train(exp)
    assert len(seen["after"]) == 8 and min(seen["after"]) > -1e-4  # 2 tasks x 4 steps
    projected = [b < 0 for b in seen["before"]]
    assert any(projected) and all(h for h, p in zip(seen["old_heads"], projected) if p)


def test_replay_buffer_holds_real_samples_balanced_and_is_the_state_file(tmp_path):
    bench = tiny_bench(3, n_train=32)
    strategy, scenario = tiny_strategy("replay", bench, "replay.mem_size=30")
    for t, exp in enumerate(scenario.train_stream):
        strategy.train(exp)
        strategy.export_task(t, tmp_path)
    state = read_record(tmp_path / "method-state.replay", "replay-state").state
    for t in range(3):  # 30 samples over 3 tasks: 10 each, each one of that task's training samples
        x, y = state[f"x/{t}"], state[f"y/{t}"]
        assert len(x) == len(y) == 10
        train_x, train_y = bench.tasks[t].train.tensors
        for xi, yi in zip(x, y):
            hit = (train_x == xi).flatten(1).all(1).nonzero().flatten()
            assert len(hit) and int(train_y[hit[0]]) == int(yi)
    stored = sum(v.numel() * v.element_size() for v in state.values())
    assert stored == strategy.task_summary(2)["stored_tensor_bytes"]["method_state"] == 30 * (12 * 12 * 4 + 8)


def test_mixed_task_batch_gives_each_sample_its_own_heads_logits():
    torch.manual_seed(0)
    net = MultiHeadNet(torch.nn.Flatten(), 6)
    net.add_head(0, torch.nn.Linear(6, 2, bias=False))
    net.add_head(1, torch.nn.Linear(6, 3, bias=False))
    x, tl = torch.randn(5, 6), torch.tensor([0, 1, 1, 0, 1])
    out = net(x, tl)
    for i in range(5):
        own = net(x[i:i + 1], int(tl[i]))[0]
        torch.testing.assert_close(out[i, :len(own)], own, rtol=1e-6, atol=1e-7)  # GEMMs of other sizes
        assert torch.isinf(out[i, len(own):]).all()
    loss = torch.nn.functional.cross_entropy(out, torch.tensor([1, 2, 0, 0, 1]))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("method,item,named", [("ewc", "ewc.mode=sometimes", "ewc.mode"),
                                               ("ewc", "ewc.decay_factor=0.9", "ewc.decay_factor"),
                                               ("lwf", "lwf.temperature=0", "lwf.temperature"),
                                               ("mas", "mas.alpha=2", "mas.alpha"),
                                               ("replay", "replay.mem_size=0", "replay.mem_size"),
                                               ("gem", "gem.patterns=3", "gem.patterns")])
def test_bad_option_is_exit_2(tmp_path, capsys, method, item, named):
    assert cli(["run", "--methods", method, "--out", str(tmp_path), "--set", item]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "split-digits").exists()


def test_three_methods_through_the_runner_with_report(tmp_path):
    """split-digits, tiny config: EWC, LwF and Replay run, memory is the files, the report has them."""
    out = tmp_path / "runs"
    rc = cli(["run", "--methods", "ewc,lwf,replay", "--out", str(out),
              "--set", "arch=resnet-tiny", "--set", "epochs=1", "--set", "pretrained=random",
              "--set", "benchmark_options.tasks=2", "--set", "benchmark_options.image_size=8",
              "--set", "batch_size=128", "--set", "replay.mem_size=40"])
    assert rc == 0
    report = (out / "report" / "report.md").read_text()
    for method in ("ewc", "lwf", "replay"):
        res = json.loads((out / "split-digits" / method / "seed0" / "results.json").read_text())
        assert_memory_is_files(res, out, method)
        assert res["memory_mib"]["files"]["assist"] == ["network.dense", f"method-state.{method}"]
        assert res["memory_mib"]["files"]["per_task"] == [[], []]
        assert f"| {method}" in report and (out / "report" / f"accuracy_matrix_split-digits_{method}.png").is_file()
    buf = read_record(out / "split-digits" / "replay" / "seed0" / "artifacts" / "method-state.replay",
                      "replay-state").state
    assert [len(buf["y/0"]), len(buf["y/1"])] == [20, 20]


@pytest.mark.parametrize("method", ALL)
def test_resume_without_checkpoint_continues_from_the_files(tmp_path, method):
    """checkpoint.pt lost after task 0: the rerun takes the state after task 0 from the shared files
    (network, method state) and ends exactly as an uninterrupted run."""
    from nws_avalanche.config.run_config import build_config
    from nws_avalanche.runner.run import run_dir, run_single

    sets = ["arch=resnet-tiny", "epochs=1", "pretrained=random", "benchmark_options.tasks=2",
            "benchmark_options.image_size=8", "batch_size=64", "replay.mem_size=30",
            "gem.patterns_per_experience=16", "agem.patterns_per_experience=16", "agem.sample_size=8"]
    cfg = build_config([], sets, method=method)
    expected = run_single(cfg, tmp_path / "full", progress=False)

    def stop(t, acc, strategy):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_single(cfg, tmp_path / "cut", progress=False, callbacks=[stop])
    rdir = run_dir(tmp_path / "cut", cfg)
    (rdir / "checkpoint.pt").unlink()
    seen = []
    resumed = run_single(cfg, tmp_path / "cut", progress=False, callbacks=[lambda t, acc, s: seen.append(t)])
    assert seen == [1]
    assert resumed["accuracy_matrix"] == expected["accuracy_matrix"]
    full = run_dir(tmp_path / "full", cfg) / "artifacts"
    assert all((rdir / "artifacts" / p.name).read_bytes() == p.read_bytes() for p in full.iterdir())


@pytest.mark.parametrize("head_init", ["pretrained", "fresh"])
def test_heads_follow_the_shared_rule(head_init):
    """Task 0: the pretrained head's first rows (or fresh); task t: task t-1's head kept, truncated or
    extended (or fresh), as every method does (``TaskIncrementalStrategy.task_head``)."""
    from nws_avalanche.strategies.task_incremental import fresh_head, resized_head

    bench = tiny_bench(3)
    strategy, _ = tiny_strategy("lwf", bench, f"head_init={head_init}")
    pre = strategy.assets.pretrained_state["fc.weight"]
    heads = strategy.model.heads
    seed = strategy.cfg.seed
    first = pre[:2] if head_init == "pretrained" else fresh_head(pre.shape[1], 2, seed).weight
    assert torch.equal(heads["0"].weight, first)
    with torch.no_grad():  # stands for task 0's training
        heads["0"].weight.add_(1.0)
    strategy.task_classes[1] = 3
    strategy.prepare_task(1, 3)
    want = (resized_head(heads["0"].weight, 3, seed + 1) if head_init == "pretrained"
            else fresh_head(pre.shape[1], 3, seed + 1)).weight
    assert torch.equal(heads["1"].weight, want) and torch.equal(heads["0"].weight, first + 1)


def test_avalanche_evaluation_sees_the_live_network_and_equals_the_files(tmp_path):
    """Outside the runner, Avalanche's own metrics on task 0 after task 1 are those of the network
    as it is now (EWC keeps no per-task copy, so its forgetting must show), equal to the model
    rebuilt from the stored files; the runner's artifact path agrees."""
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin

    bench = tiny_bench(2)
    strategy, scenario = tiny_strategy("ewc", bench, "ewc.ewc_lambda=0", "epochs=3")
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])
    strategy.set_evaluator(evaluator)
    exps = list(scenario.train_stream)
    for t, exp in enumerate(exps):
        strategy.train(exp)
        strategy.export_task(t, tmp_path)
    metrics = strategy.eval(scenario.test_stream[:1])
    key = next(k for k in metrics if k.startswith("Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"))
    test = bench.tasks[0].test
    y = torch.tensor([int(test[i][1]) for i in range(len(test))])
    rebuilt = (logits(strategy.rebuild_task(0, tmp_path), bench, 0).argmax(1) == y).float().mean().item()
    with torch.no_grad():
        x = torch.stack([test[i][0] for i in range(len(test))])
        live = (strategy.model.eval()(x, 0).argmax(1) == y).float().mean().item()
    assert metrics[key] == pytest.approx(live, abs=1e-12)
    assert metrics[key] == pytest.approx(rebuilt, abs=1e-12)
