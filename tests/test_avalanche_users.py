"""What an Avalanche user meets: class-incremental streams refused with the fix, Avalanche's own
checkpointing (stop and resume, exact), an optimiser without stale parameters after conversion,
and torch.compile of a converted model compiling once per shape and mode."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from avalanche.benchmarks import nc_benchmark
from avalanche.training import Naive

from nws_avalanche import NWSPlugin, build_pools_kmeans, nwsify
from nws_avalanche.method.plugin import TaskLabelError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))  # as `python examples/X.py` has it

import nws_naive  # noqa: E402


def _strategy(model, pools, plugins=()):
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                 criterion=nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=1, eval_mb_size=64,
                 plugins=[NWSPlugin(pools=pools), *plugins], evaluator=None)


def _setup(num_classes: int = 2):
    torch.manual_seed(0)
    model = nws_naive.SmallNet(num_classes)
    return model, build_pools_kmeans(model, K=16, seed=0)


def test_class_incremental_streams_are_refused_before_training(one_thread):
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.scenarios.task_aware import task_incremental_benchmark
    from avalanche.benchmarks.utils import as_classification_dataset

    train, test = nws_naive.toy_data(n_classes=4)
    no_labels = nc_benchmark(train, test, n_experiences=2, task_labels=False, seed=0)
    ci = class_incremental_benchmark({"train": as_classification_dataset(train),
                                      "test": as_classification_dataset(test)}, num_experiences=2)
    for bench in (no_labels, ci):
        model, pools = _setup()
        strategy = _strategy(model, pools)
        with pytest.raises(TaskLabelError, match="one state .* per task label.*task_incremental_benchmark"):
            strategy.train(bench.train_stream[0])
        assert strategy.plugins[0].tasks_seen == 0  # nothing trained
    # the advised fix runs, and each experience keeps its own state
    model, pools = _setup(num_classes=4)  # class ids run on across experiences (a shared 4-way head)
    fixed = task_incremental_benchmark(ci, reset_task_labels=True)
    strategy = _strategy(model, pools)
    for exp in fixed.train_stream:
        strategy.train(exp)
    assert sorted(strategy.plugins[0].task_states) == [0, 1]


def test_optimizer_holds_the_converted_models_parameters(one_thread):
    model, pools = _setup()
    strategy = _strategy(model, pools)
    bench = nws_naive.make_benchmark()
    for exp in bench.train_stream[:2]:
        strategy.train(exp)
        in_opt = [p for g in strategy.optimizer.param_groups for p in g["params"]]
        in_model = {id(p) for p in strategy.model.parameters()}
        assert all(id(p) in in_model for p in in_opt)  # no stale (replaced) parameter
        assert {id(p) for p in in_opt} == {id(p) for p in strategy.model.parameters() if p.requires_grad}
        assert len(in_opt) == len({id(p) for p in in_opt})
        assert all(id(p) in in_model for p in strategy.optimizer.state)  # no momentum of a replaced layer


def test_avalanche_checkpoint_stop_and_resume_is_exact(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'examples'}", "OMP_NUM_THREADS": "1"}

    def script(*args):
        done = subprocess.run([sys.executable, str(ROOT / "examples" / "nws_checkpoint.py"), *args], env=env,
                              capture_output=True, text=True, timeout=3600)  # ~25 s CPU each
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    whole = script(str(tmp_path / "whole.pkl"))
    stopped = script(str(tmp_path / "cut.pkl"), "--stop-after", "0")
    assert stopped["tasks_seen"] == 1 and (tmp_path / "cut.pkl").is_file()
    resumed = script(str(tmp_path / "cut.pkl"))
    assert resumed["tasks_seen"] == whole["tasks_seen"] == 3
    assert resumed["states"] == whole["states"] and len(whole["states"]) == 3  # per-task states, bit for bit
    assert resumed["acc"] == whole["acc"] and len(whole["acc"]) == 3


def test_compiled_converted_model_compiles_once_per_shape_and_mode(one_thread):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, pools = _setup()
    nwsify(model, pools)
    strategy = _strategy(torch.compile(model), pools)
    bench = nws_naive.make_benchmark()
    graphs = []
    for t, exp in enumerate(bench.train_stream):
        strategy.train(exp)
        strategy.eval(bench.test_stream[: t + 1])
        graphs.append(counters["stats"]["unique_graphs"])
    # task 0 compiled the train and eval graphs; later tasks (new per-task state swapped in at
    # evaluation, the search restarted) reuse them instead of recompiling
    assert graphs[0] > 0 and graphs[-1] == graphs[0]
