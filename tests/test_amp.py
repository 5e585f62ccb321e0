"""Mixed precision of task training (``amp``): bf16 autocast on the CPU trains a task whose
forward really runs in bf16 while the search, the commitment and the stored indices stay as
in float32; fp16 on a CPU is refused before any work."""
from __future__ import annotations

import torch

from tests.conftest import TINY, tiny_config


def test_bf16_task_trains_in_bf16_and_stores_the_same_artifact_kind(tmp_path):
    import shutil

    from benchmarks import build_benchmark, to_avalanche
    from nws_avalanche.method.layers import nws_layers
    from nws_avalanche.method.task_artifact import read_nws_task
    from nws_avalanche.method.task_state import compact_indices
    from nws_avalanche.pools.pretrained import prepare_assets
    from nws_avalanche.runner.factory import build_strategy
    from nws_avalanche.runner.run import avalanche_accuracies
    from nws_avalanche.storage.codecs import DEFAULT_CODEC
    from nws_avalanche.strategies.training import evaluate

    cfg = tiny_config(amp="bf16", epochs=1, pretrained="random", benchmark_options={"tasks": 5})
    bench = build_benchmark(cfg)
    assets = prepare_assets(cfg, bench, tmp_path / "assist", need_pools=True, progress=False)
    strategy = build_strategy(cfg, assets, [t.num_classes for t in bench.tasks], progress=False)
    seen = {"conv_out": set(), "search_in": set(), "commitment": set(), "loss": set()}
    model = strategy.model
    model.layer1.register_forward_hook(lambda m, i, o: seen["conv_out"].add(o.dtype) if m.training else None)
    for _, layer in nws_layers(model):  # every searcher the plugin makes (it restarts them per task)
        layer._search_factory = lambda pool, f=layer._search_factory: _SearchSpy(f(pool), seen)
        layer.reset_search()
    strategy.plugins.append(_LossSpy(seen))
    scenario = to_avalanche(bench)
    strategy.train(scenario.train_stream[0])
    assert seen["conv_out"] == {torch.bfloat16}                     # autocast was on in training
    assert seen["search_in"] == {(torch.float32, False)}             # the search: float32, autocast off
    assert seen["commitment"] == {torch.float32} and seen["loss"] == {torch.float32}
    for _, layer in nws_layers(model):
        assert layer.weight.dtype == torch.float32 and layer.pool.dtype == torch.float32
    acc = avalanche_accuracies(strategy, scenario.test_stream, 1)[0]
    art = tmp_path / "art"
    art.mkdir()
    shutil.copyfile(assets.pool_path, art / "pools.nwsp")
    path = strategy.export_task(0, art)[0]
    header, indices, state = read_nws_task(path)
    # the same artifact kind as a float32 run stores: the default codec over the exact indices,
    # BatchNorm and the rest in float32
    assert header["codec"] == DEFAULT_CODEC
    for name, layer in nws_layers(model):
        assert torch.equal(torch.from_numpy(indices[name]).long(), layer.indices)
        assert compact_indices(layer.indices, layer.pool_size).dtype == torch.uint8  # K=16: the stored kind
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    rebuilt = strategy.rebuild_task(0, art)
    data = scenario.test_stream[0].dataset.eval()
    assert evaluate(rebuilt, data, device="cpu") == acc  # evaluation (float32) of what is stored


class _SearchSpy:
    def __init__(self, inner, seen):
        self.inner, self.seen, self.pool = inner, seen, inner.pool

    def __call__(self, w):
        self.seen["search_in"].add((w.dtype, torch.is_autocast_enabled(w.device.type)))
        return self.inner(w)

    def __getattr__(self, name):  # the searcher's counters
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)


class _LossSpy:
    """A minimal plugin recording the dtypes of the loss and the commitment terms."""

    def __init__(self, seen):
        self.seen = seen
        self.supports_distributed = False

    def __getattr__(self, name):
        if name.startswith("before_") or name.startswith("after_"):
            return lambda strategy, **kw: None
        raise AttributeError(name)

    def before_update(self, strategy, **kw):
        from nws_avalanche.method.layers import nws_layers

        self.seen["loss"].add(strategy.loss.dtype)
        self.seen["commitment"].update(m.commitment.dtype for _, m in nws_layers(strategy.model))


def test_fp16_on_cpu_is_refused_with_one_line(tmp_path, capsys):
    from nws_avalanche.cli import main

    args = ["run", "--methods", "nws", "--out", str(tmp_path), "--no-report"]
    for item in TINY + ["amp=fp16", "device=cpu"]:
        args += ["--set", item]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and "amp=fp16 needs a CUDA device" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_unknown_amp_mode_is_refused(tmp_path, capsys):
    from nws_avalanche.cli import main

    rc = main(["run", "--methods", "finetune", "--out", str(tmp_path), "--no-report", "--set", "amp=fp8"])
    assert rc == 2 and "amp must be off, bf16 or fp16" in capsys.readouterr().err
