"""``nws-bench pretrain-pools``: train an NWS network on an image folder, pools learnt by EMA."""
from __future__ import annotations

from . import command

_HELP = {
    "data": "image folder <root>/<class>/<image> (e.g. ImageNet's train/)",
    "benchmark": "instead of --data: this benchmark's pretraining split (its channels, size, normalisation)",
    "benchmark_options": "the benchmark's options, as in a run (a YAML mapping)",
    "out": "output folder: checkpoint.pt, pools.nwsp, pretrained.pt, history.json",
    "batch_size": "global batch size (split over the torchrun processes)",
    "group_size": "gs: input channels per vector in 1x1 convs (1 = single weights)",
    "init": "start from this torchvision-format state_dict (pools: k-means of its kernels)",
    "max_classes": "use the first N classes (sorted), e.g. 100 for Sub-ImageNet",
    "revive_fraction": "an entry is dead when its EMA count < this * n/K (0: no revival)",
    "stop_after": "stop after N epochs in this invocation; rerun to continue",
    "amp": "mixed precision: off | bf16 | fp16 (distances and EMA stay float32)",
    "ema_stats": "EMA statistics from: forward (the forward pass's assignment, the authors') | post_step",
    "ema_prior": "initial EMA state: uniform (N = n/K, m = N P) | zero (the authors': N = 0, m = P)",
    "schedule": "LR: multistep (the authors': x0.1 at epoch 100 of 160, else at 50 % and 80 % of the epochs) | cosine",
}


def add_arguments(p):
    from ..config.tool_settings import PretrainConfig, add_settings_arguments

    add_settings_arguments(p, PretrainConfig, _HELP, skip=("progress",))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args):
    from ..config.tool_settings import PretrainConfig, settings_from_args

    cfg = settings_from_args(PretrainConfig, args, "pretrain-pools",
                             **({"progress": False} if args.no_progress else {}))
    from ..pools.pretrain import pretrain

    if cfg.benchmark:
        summary = pretrain(cfg, benchmark_source(cfg.benchmark, cfg.benchmark_options, cfg.seed))
    else:
        summary = pretrain(cfg)
    if summary["rank"] != 0:
        return 0
    if summary["finished"]:
        print(f"pools: {cfg.out}/pools.nwsp\npretrained network: {cfg.out}/pretrained.pt")
    else:
        print(f"stopped after epoch {summary['epochs_done']}/{cfg.epochs}; rerun the same command to continue")
    return 0


command("pretrain-pools", "pretrain kernel pools (EMA vector quantisation) on an image folder or a benchmark's pretraining split; torchrun-able")(
    (add_arguments, main))


def benchmark_source(name: str, options: dict, seed: int):
    """A registered benchmark's pretraining split (never a task image), exactly as a run of that
    benchmark with this seed and these options pretrains on."""
    from benchmarks import build_benchmark

    from ..common.errors import ConfigError
    from ..config.run_config import build_config
    from ..pools.pretrain import Source

    bench = build_benchmark(build_config([], [], benchmark=name, seed=seed, benchmark_options=options or None))
    if bench.pretrain is None:
        raise ConfigError(f"benchmark {name!r} has no pretraining split; give an image folder with --data DIR")
    return Source(bench.pretrain, [str(c) for c in range(bench.pretrain_classes)], bench.in_channels,
                  f"benchmark {name}")
