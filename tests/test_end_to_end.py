"""The quickstart path on a reduced config: runs, rebuilds, no forgetting, honest memory."""
import json

import torch

from nws_avalanche.method.layers import nws_layers
from nws_avalanche.strategies.training import evaluate
from tests.baseline_kit import assert_paper_memory


def test_results_json_schema(tiny_runs):
    out, res = tiny_runs
    for method, r in res.items():
        path = out / "split-digits" / method / "seed0" / "results.json"
        on_disk = json.loads(path.read_text())
        assert on_disk["average_accuracy"] == r["average_accuracy"]
        for key in ("benchmark", "method", "seed", "tasks", "accuracy_matrix", "final_accuracy",
                    "average_accuracy", "memory_mib"):
            assert key in on_disk
        acc = on_disk["accuracy_matrix"]
        assert len(acc) == 2 and acc[0][1] is None and acc[1][0] is not None
        assert on_disk["final_accuracy"] == acc[-1]
        assert abs(on_disk["average_accuracy"] - sum(acc[-1]) / 2) < 1e-9
        assert (path.parent / "config.yaml").is_file()


def test_memory_equals_bytes_on_disk(tiny_runs):
    out, res = tiny_runs
    for method, r in res.items():
        art = out / "split-digits" / method / "seed0" / "artifacts"
        mem = r["memory_mib"]
        files = {p.name: p.stat().st_size for p in art.iterdir() if p.is_file()}
        per_task = [sum(files[f] for f in names) for names in mem["files"]["per_task"]]
        assist = sum(files[f] for f in mem["files"]["assist"])
        assert per_task == mem["bytes"]["per_task"] and assist == mem["bytes"]["assist"]
        assert sum(files.values()) == sum(per_task) + assist  # nothing stored goes uncounted
        assert abs(mem["total"] - sum(files.values()) / 2**20) < 1e-12
        assert_paper_memory(r)


def test_nws_stores_far_less_than_finetune(tiny_runs):
    _, res = tiny_runs
    nws, ft = res["nws"]["memory_mib"], res["finetune"]["memory_mib"]
    assert max(nws["per_task"]) < 0.25 * min(ft["per_task"])


def test_no_forgetting_and_rebuild_matches_reported_accuracy(tiny_runs):
    out, res = tiny_runs
    for method in ("nws", "finetune"):
        acc = res[method]["accuracy_matrix"]
        assert acc[0][0] == acc[1][0]  # task 0 unchanged after task 1


def test_task0_logits_identical_after_last_task(tmp_path):
    """Task 0's model rebuilt after task 0 and after the last task gives identical logits."""
    from benchmarks import build_benchmark
    from tests.conftest import tiny_config
    from nws_avalanche.runner.run import run_single

    snapshots = {}

    def grab(t, acc, strategy):
        art = tmp_path / "split-digits" / "nws" / "seed0" / "artifacts"
        snapshots[t] = strategy.rebuild_task(0, art)

    cfg = tiny_config(method="nws")
    run_single(cfg, tmp_path, progress=False, callbacks=[grab])
    x = torch.stack([build_benchmark(cfg).tasks[0].test[i][0] for i in range(16)])
    with torch.no_grad():
        assert torch.equal(snapshots[0](x), snapshots[1](x))
    assert all(not m.training for _, m in nws_layers(snapshots[1]))


def test_rebuilt_model_reproduces_reported_accuracy(tiny_runs):
    from benchmarks import build_benchmark
    from tests.conftest import tiny_config
    from nws_avalanche.pools.pretrained import prepare_assets
    from nws_avalanche.runner.factory import build_strategy

    out, res = tiny_runs
    cfg = tiny_config(method="nws")
    bench = build_benchmark(cfg)
    assets = prepare_assets(cfg, bench, out / "split-digits" / "_assist", need_pools=True)
    strat = build_strategy(cfg, assets, [2, 2], progress=False)
    art = out / "split-digits" / "nws" / "seed0" / "artifacts"
    for j in range(2):
        model = strat.rebuild_task(j, art)
        assert evaluate(model, bench.tasks[j].test) == res["nws"]["final_accuracy"][j]


def test_fast_search_and_codec_do_not_change_results(tiny_runs, tmp_path):
    """The exhaustive search with fixed-width codes gives the default run's accuracy matrix."""
    from tests.conftest import tiny_config
    from nws_avalanche.runner.run import run_single

    out, res = tiny_runs
    import shutil
    shutil.copytree(out / "split-digits" / "_assist", tmp_path / "split-digits" / "_assist")  # same pools
    cfg = tiny_config(method="nws", method_options={"nws": {"search": "exact", "codec": "bitpack"}})
    slow = run_single(cfg, tmp_path, progress=False)
    assert slow["config"]["method_options"]["nws"]["search"] == "exact"
    assert res["nws"]["config"]["method_options"]["nws"]["search"] == "incremental"
    assert slow["accuracy_matrix"] == res["nws"]["accuracy_matrix"]
    from nws_avalanche.method.task_artifact import read_nws_task

    for t in range(2):
        name = f"task{t:03d}.nwst"
        _, fast_idx, fast_state = read_nws_task(out / "split-digits" / "nws" / "seed0" / "artifacts" / name)
        _, slow_idx, slow_state = read_nws_task(tmp_path / "split-digits" / "nws" / "seed0" / "artifacts" / name)
        assert fast_idx.keys() == slow_idx.keys()
        assert all((fast_idx[k] == slow_idx[k]).all() for k in fast_idx)  # same indices, decoded
        assert all(torch.equal(fast_state[k], slow_state[k]) for k in fast_state)  # same BatchNorm
