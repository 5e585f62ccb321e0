"""Typed settings of the tool subcommands (``pretrain-pools``, ``build-pools``, ``perf``) and the
one way the command line fills them.

``PoolSettings`` (``run_config``) declares the pool and NWS-loss settings once (``pool_size``, ``beta``,
``group_size``, their defaults and ranges); the subcommands' settings extend it and ``RunConfig``
takes its defaults and checks from it, so a setting has one name and one meaning everywhere.

Every settings subcommand reads ``--config FILE`` (YAML, repeatable) < ``--set key=value`` <
its flags (``--pool-size 64`` is ``--set pool_size=64``), all through ``common.typed_options.build_options``:
unknown keys, wrong types, a float for an int and inf/NaN stop with a ``ConfigError`` naming the
key, before any work. No torch here: ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from ..common.errors import ConfigError
from ..common.typed_options import build_options
from ..common.untrusted import parse_yaml
from .run_config import PoolSettings, _need, load_yaml


@dataclass
class PretrainConfig(PoolSettings):
    """``nws-bench pretrain-pools`` (``nws_avalanche.pools.pretrain``)."""
    data: str = ""
    # instead of ``data``: a registered benchmark's own pretraining split, with its channels, image size
    # and normalisation (``image_size``/``augment`` do not apply: the benchmark's transforms do)
    benchmark: str = ""
    benchmark_options: dict[str, Any] = field(default_factory=dict)
    out: str = "pools"
    arch: str = "resnet18"
    epochs: int = 160
    batch_size: int = 256          # global: split evenly over the ranks
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 4e-5
    image_size: int = 224
    augment: bool = True           # RandomResizedCrop + flip; False: resize + centre crop
    max_classes: int | None = None  # first N classes (sorted) of the folder, e.g. 100 for Sub-ImageNet
    seed: int = 0
    decay: float = 0.99
    eps: float = 1e-5
    revive_fraction: float = 0.03
    ema_stats: str = "forward"     # forward (the authors': the forward pass's assignment) | post_step
    ema_prior: str = "uniform"     # initial EMA state: uniform (N = n/K, m = N P) | zero (the authors')
    schedule: str = "multistep"    # multistep (the authors': x0.1 at 100 of 160 epochs, else at 50 % and 80 %) | cosine
    init: str | None = None        # torchvision-format state_dict to start from (default: kaiming)
    amp: str = "off"               # off | bf16 | fp16
    workers: int = 4
    device: str = "auto"           # auto | cpu | cuda
    stop_after: int | None = None  # stop after this many epochs in this invocation (resumable)
    progress: bool | None = None

    # keys that must match for a rerun to resume a checkpoint
    RESUME_KEYS = ("data", "benchmark", "benchmark_options", "arch", "epochs", "batch_size", "lr", "momentum", "weight_decay", "beta",
                   "pool_size", "group_size", "image_size", "augment", "max_classes", "seed", "decay",
                   "eps", "revive_fraction", "ema_stats", "schedule", "init", "amp")

    def validate(self) -> "PretrainConfig":
        self.check_pool()
        checks = [(self.epochs >= 1, f"epochs must be >= 1 (got {self.epochs})"),
                  (self.batch_size >= 1, f"batch_size must be >= 1 (got {self.batch_size})"),
                  (self.lr > 0, f"lr must be > 0 (got {self.lr})"),
                  (0 <= self.decay < 1, f"decay must be in [0, 1) (got {self.decay})"),
                  (self.eps > 0, f"eps must be > 0 (got {self.eps})"),
                  (self.image_size >= 8, f"image_size must be >= 8 (got {self.image_size})"),
                  (self.amp in ("off", "bf16", "fp16"), f"amp must be off, bf16 or fp16 (got {self.amp!r})"),
                  (self.ema_stats in ("forward", "post_step"),
                   f"ema_stats must be forward or post_step (got {self.ema_stats!r})"),
                  (self.ema_prior in ("uniform", "zero"),
                   f"ema_prior must be uniform or zero (got {self.ema_prior!r})"),
                  (self.schedule in ("multistep", "cosine"),
                   f"schedule must be multistep or cosine (got {self.schedule!r})")]
        for ok, msg in checks:
            _need(ok, msg)
        _need(bool(self.data) != bool(self.benchmark),
              "pretrain-pools needs one source of images: --data DIR (an image folder) or --benchmark NAME "
              "(that benchmark's pretraining split)" + (", not both" if self.data else ""))
        return self

    def resume_key(self) -> dict:
        return {k: getattr(self, k) for k in self.RESUME_KEYS}


@dataclass
class KMeansSettings(PoolSettings):
    """``nws-bench build-pools`` (``nws_avalanche.pools.from_checkpoint``)."""
    seed: int = 0
    iters: int = 25            # Lloyd iterations on the fit sample
    init_sample: int = 4096    # rows for the k-means++ start
    fit_sample: int = 16384    # rows for the Lloyd iterations (then final_iters on all rows)
    final_iters: int = 2       # Lloyd iterations on all rows at the end

    def validate(self) -> "KMeansSettings":
        self.check_pool()
        for name in ("iters", "init_sample", "fit_sample"):
            _need(getattr(self, name) >= 1, f"{name} must be >= 1 (got {getattr(self, name)})")
        _need(self.final_iters >= 0, f"final_iters must be >= 0 (got {self.final_iters})")
        return self


@dataclass
class PerfConfig(PoolSettings):
    """``nws-bench perf`` (``nws_avalanche.speed.perf_measure``)."""
    arch: str = "resnet18"
    in_channels: int = 3
    num_classes: int = 10
    image_size: int = 32
    batch_size: int = 32
    search: str = "incremental"
    codec: str = "rans16"     # nws_avalanche.storage.codecs.DEFAULT_CODEC (checked equal in the tests)
    steps: int = 10           # timed training steps (after warm-up)
    warmup: int = 3
    check_steps: int = 5      # steps of real training checked against exhaustive search
    check_lr: float = 0.5     # high LR so that kernels cross decision boundaries
    lr: float = 0.01
    eval_batches: int = 9
    switch_repeats: int = 5
    threads: int = 0          # 0: leave torch's default
    seed: int = 0

    def validate(self) -> "PerfConfig":
        from ..method.search import SEARCHES
        from ..storage.codecs import CODECS

        self.check_pool()
        _need(self.search in SEARCHES.names(), f"search {self.search!r} unknown; choose one of "
              f"{', '.join(SEARCHES.names())}")
        _need(self.codec in CODECS.names(), f"codec {self.codec!r} unknown; choose one of {', '.join(CODECS.names())}")
        for name in ("steps", "check_steps", "batch_size", "image_size", "eval_batches", "switch_repeats"):
            _need(getattr(self, name) >= 1, f"{name} must be >= 1 (got {getattr(self, name)})")
        _need(self.warmup >= 0 and self.threads >= 0, "warmup and threads must be >= 0")
        _need(self.check_lr > 0 and self.lr > 0, "lr and check_lr must be > 0")
        return self


# -- the command line -------------------------------------------------------------------------
def add_settings_arguments(p: argparse.ArgumentParser, cls, help: dict[str, str] | None = None,
                           skip: tuple[str, ...] = ()) -> None:
    """``--config``, ``--set`` and one ``--flag`` per field of ``cls``; flags keep the raw text
    (typed later, with the rest, by ``settings_from_args``)."""
    help = help or {}
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="YAML file of settings (repeatable; later wins)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set one setting, e.g. --set pool_size=64 (same as the flag)")
    for f in fields(cls):
        if f.name in skip:
            continue
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar=str(f.type).upper()
                       .replace(" | NONE", "").replace("STR", "TEXT"),
                       help=f"{help.get(f.name, '')} (default {f.default!r}; or --set {f.name}=...)".strip()
                       .replace("%", "%%"))


def _yaml_value(f, raw: str) -> Any:
    """The text of a flag or ``--set`` as YAML (numbers, booleans, lists), except for a text
    setting, which keeps the text as given (a path ``yes`` stays a path)."""
    if f is not None and str(f.type).split(" ")[0] == "str":
        return raw
    return parse_yaml(raw, raw[:40], "write the value plainly", text_on_syntax_error=True) if raw != "" else None


def settings_from_args(cls, args: argparse.Namespace, prefix: str, **fixed: Any):
    """``cls`` from ``--config`` files < ``--set`` < flags < ``fixed``, strictly typed and validated."""
    known = {f.name: f for f in fields(cls)}
    merged: dict[str, Any] = {}
    for path in args.config:
        merged.update(load_yaml(path))
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = (t.strip() for t in item.split("=", 1))
        merged[key] = _yaml_value(known.get(key), raw)
    for name, f in known.items():
        raw = getattr(args, name, None)
        if raw is not None:
            merged[name] = _yaml_value(f, raw)
    merged.update(fixed)
    unknown = sorted(set(merged) - set(known))
    if unknown:
        raise ConfigError(f"{prefix}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    out = build_options(prefix, merged, cls)
    return out.validate() if hasattr(out, "validate") else out
