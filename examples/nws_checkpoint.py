"""Stop and resume an NWS run with Avalanche's own checkpointing.

    python examples/nws_checkpoint.py CKPT --stop-after 1   # trains experiences 0..1, saves, stops
    python examples/nws_checkpoint.py CKPT                  # resumes at experience 2 and finishes

``save_checkpoint`` pickles the whole strategy (the NWSPlugin's per-task states included) with
dill; importing ``nws_avalanche`` installs the patch that makes it work with the installed
torch/dill/typing_extensions (``nws_avalanche.common.pickle_compat``). Prints one JSON line:
Avalanche's last accuracies per task and a digest of every per-task state the plugin keeps.
"""
from __future__ import annotations

import argparse
import hashlib
import json

import torch
import torch.nn as nn
from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin

from nws_avalanche import NWSPlugin, build_pools_kmeans
from nws_naive import SmallNet, make_benchmark


def state_digest(state) -> str:
    """sha256 over a per-task state (nested dicts of tensors), in key order."""
    h = hashlib.sha256()

    def walk(obj, prefix=""):
        if isinstance(obj, dict):
            for k in sorted(obj):
                walk(obj[k], f"{prefix}/{k}")
        else:
            h.update(prefix.encode())
            h.update(obj.detach().cpu().contiguous().numpy().tobytes())
    walk(state)
    return h.hexdigest()


def main(ckpt: str | None, stop_after: int | None = None, epochs: int = 2) -> dict:
    torch.manual_seed(0)
    bench = make_benchmark()
    model = SmallNet()
    pools = build_pools_kmeans(model, K=16, seed=0)
    plugin = NWSPlugin(pools=pools, beta=0.5)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     criterion=nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=epochs, eval_mb_size=64,
                     plugins=[plugin], evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    start = 0
    if ckpt is not None:
        strategy, start = maybe_load_checkpoint(strategy, ckpt)
        plugin = next(p for p in strategy.plugins if isinstance(p, NWSPlugin))
    for exp in bench.train_stream[start:]:
        strategy.train(exp)
        strategy.eval(bench.test_stream)
        if ckpt is not None:
            save_checkpoint(strategy, ckpt)
        if stop_after is not None and exp.current_experience == stop_after:
            break
    metrics = strategy.evaluator.get_last_metrics()
    return {"acc": {k: v for k, v in sorted(metrics.items()) if k.startswith("Top1_Acc_Exp")},
            "states": {str(k): state_digest(v) for k, v in sorted(plugin.task_states.items())},
            "tasks_seen": plugin.tasks_seen}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--stop-after", type=int, default=None)
    a = p.parse_args()
    print(json.dumps(main(a.checkpoint, a.stop_after)))
