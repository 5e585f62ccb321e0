"""Typed run configuration, YAML presets and ``--set key=value`` overrides.

Resolution order (later wins): dataclass defaults < ``presets/<benchmark>.yaml`` (if any) <
``--config`` files or preset names < ``--set``. Method-specific options live under
``method_options`` (``--set packnet.prune_ratio=0.5`` is short for
``--set method_options.packnet.prune_ratio=0.5``) and are checked against the method's own
``Options`` dataclass; ``benchmark_options`` against the benchmark's (``benchmarks.base``).

Types are enforced strictly (``common.typed_options``): a number must be finite, a bool is true/false (or
yes/no/on/off/1/0 as a string), an integer has no fraction; a wrong value is a ``ConfigError``
naming the key. ``RunConfig.validate`` checks ranges, ``check_device`` the machine: all before any
work, so a refused config writes nothing.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..common.errors import ConfigError
from ..common.schema import MAX_POOL_SIZE
from ..common.typed_options import build_options, coerce
from ..common.untrusted import parse_yaml, read_yaml

PRESET_DIR = Path(__file__).parent / "presets"


CUDNN_MODES = ("default", "benchmark", "deterministic")


def apply_cudnn(mode: str) -> None:
    """``default``: torch's settings; ``benchmark``: cudnn times its algorithms and keeps the
    fastest (faster for fixed input sizes, results may differ between runs); ``deterministic``:
    reproducible cudnn convolutions (slower)."""
    import torch

    if mode == "benchmark":
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    elif mode == "deterministic":
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


@dataclass
class PoolSettings:
    """The pool and NWS-loss settings, declared once: ``RunConfig`` takes its defaults and checks
    from here, the tool subcommands' settings (``nws_avalanche.config.tool_settings``) extend it."""
    pool_size: int = 512   # K, vectors per layer (the paper: 512)
    beta: float = 0.5      # commitment weight (the paper: 0.5 CIFAR, 0.1 CUB)
    group_size: int = 1    # gs: input channels per vector in 1x1 convs (1 = single weights)

    def check_pool(self) -> None:
        check_pool_settings(self.pool_size, self.beta, self.group_size)


POOL_DEFAULTS = PoolSettings()


def check_pool_settings(pool_size: int, beta: float, group_size: int) -> None:
    _need(2 <= pool_size <= MAX_POOL_SIZE, f"pool_size must be >= 2 (got {pool_size}) and at most {MAX_POOL_SIZE}; the paper uses 512")
    _need(beta >= 0, f"beta must be >= 0 (got {beta}); the paper uses 0.5 (CIFAR) / 0.1 (CUB)")
    _need(1 <= group_size <= 4096, f"group_size must be >= 1 (got {group_size}) and at most 4096")


@dataclass
class RunConfig:
    benchmark: str = "split-digits"
    method: str = "nws"
    seed: int = 0
    arch: str = "resnet18-narrow"
    # optimisation (per task)
    epochs: int = 20
    batch_size: int = 32
    eval_batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    milestones: list[int] = field(default_factory=list)  # epochs where lr *= gamma
    gamma: float = 0.1
    head_init: str = "pretrained"  # task heads: pretrained (the authors' rule, see docs/fidelity.md) | fresh
    # NWS
    beta: float = POOL_DEFAULTS.beta            # PoolSettings declares these three (and their checks)
    pool_size: int = POOL_DEFAULTS.pool_size
    group_size: int = POOL_DEFAULTS.group_size
    # assets: pools and the pretrained network
    pool_file: str | None = None
    # where pools come from when no pool_file is given: kmeans (k-means of the pretrained network's kernels)
    # | pretrain (the paper's pipeline: an NWS network pretrained with EMA pools on the benchmark's own
    # pretraining split, nws_avalanche.pools.pretrain; it is also the NWS methods' starting network)
    pools: str = "kmeans"
    pretrained: str | None = None  # torchvision-format state_dict, "imagenet" (nws_avalanche.pools.hub), or "random"
    pretrain_epochs: int = 30
    pretrain_lr: float = 0.05
    kmeans_iters: int = 25
    # data and machine
    data_root: str | None = None
    device: str = "cpu"
    num_workers: int = 0
    amp: str = "off"  # mixed precision of task training: off | bf16 | fp16 (CUDA; loss scaling)
    cudnn: str = "default"  # cudnn algorithm choice: default | benchmark (fastest) | deterministic
    # CPU threads of torch, BLAS and the fused loops, applied at run start whatever OMP_NUM_THREADS
    # says: results depend on it (nws_avalanche.runner.threads); the same value reproduces the bytes
    threads: int = 2
    # a non-finite loss or weights stops the task (nws_avalanche.strategies.guard); true: warn once and go on
    allow_nonfinite: bool = False
    benchmark_options: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    wandb: dict[str, Any] = field(default_factory=dict)  # mode, project, entity, dir (nws_avalanche.runner.wandb_log)
    loggers: list[str] = field(default_factory=list)  # Avalanche loggers: interactive, text, csv, tensorboard, wandb
    slurm: dict[str, Any] = field(default_factory=dict)  # partition, time_min, ... (nws_avalanche.runner.launch)

    def validate(self) -> "RunConfig":
        """Ranges and allowed values of the top-level keys (types are checked by ``resolve``)."""
        def need(ok, msg):
            if not ok:
                raise ConfigError(msg)
        check_pool_settings(self.pool_size, self.beta, self.group_size)
        need(self.epochs >= 1, f"epochs must be >= 1 (got {self.epochs})")
        need(self.batch_size >= 1, f"batch_size must be >= 1 (got {self.batch_size})")
        need(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1 (got {self.eval_batch_size})")
        need(self.lr > 0, f"lr must be > 0 (got {self.lr})")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1) (got {self.momentum}); the paper uses 0.9")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0 (got {self.weight_decay})")
        need(self.gamma > 0, f"gamma must be > 0 (got {self.gamma})")
        need(all(m >= 0 for m in self.milestones), f"milestones must be epochs >= 0 (got {self.milestones})")
        need(self.head_init in ("pretrained", "fresh"),
             f"head_init must be pretrained or fresh (got {self.head_init!r})")
        need(self.optimizer in ("sgd", "adam"), f"optimizer must be sgd or adam (got {self.optimizer!r})")
        need(self.pretrain_epochs >= 0, f"pretrain_epochs must be >= 0 (got {self.pretrain_epochs})")
        need(self.pretrain_lr > 0, f"pretrain_lr must be > 0 (got {self.pretrain_lr})")
        need(self.pools in ("kmeans", "pretrain"), f"pools must be kmeans or pretrain (got {self.pools!r})")
        need(self.kmeans_iters >= 1, f"kmeans_iters must be >= 1 (got {self.kmeans_iters})")
        need(self.num_workers >= 0, f"num_workers must be >= 0 (got {self.num_workers})")
        need(self.amp in ("off", "bf16", "fp16"), f"amp must be off, bf16 or fp16 (got {self.amp!r})")
        need(not (self.amp == "fp16" and str(self.device).strip().startswith("cpu")),
             "amp=fp16 needs a CUDA device (device=cpu); on a CPU use --set amp=bf16 (or amp=off)")
        need(self.cudnn in CUDNN_MODES, f"cudnn must be one of {', '.join(CUDNN_MODES)} (got {self.cudnn!r})")
        need(self.threads >= 1, f"threads must be >= 1 (got {self.threads}); results are reproducible for a given value")
        need(0 <= self.seed < 2 ** 31, f"seed must be in 0..2**31-1 (got {self.seed})")
        need(isinstance(self.device, str) and self.device.strip() != "",
             f"device must be cpu, cuda or cuda:N (got {self.device!r})")
        for name in ("benchmark_options", "method_options", "wandb", "slurm"):
            need(isinstance(getattr(self, name), dict), f"{name} must be a mapping of key: value")
        from .loggers import check_logger_names

        check_logger_names(self.loggers)
        return self

    def options(self, method: str | None = None) -> dict[str, Any]:
        return dict(self.method_options.get(method or self.method, {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


FIELD_NAMES = {f.name for f in fields(RunConfig)}


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path_or_name: str) -> dict:
    p = Path(path_or_name)
    if not p.is_file():
        candidate = PRESET_DIR / f"{path_or_name}.yaml"
        if not candidate.is_file():
            names = sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))
            raise ConfigError(f"config {path_or_name!r} is neither a file nor a preset; presets: {', '.join(names)}")
        p = candidate
    data = read_yaml(p, "config file", "fix the file (a mapping of config keys, see the presets)") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def parse_set(item: str) -> dict:
    """``a.b=1`` -> ``{"a": {"b": 1}}``; values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    value = parse_yaml(raw, f"--set {key}", "write the value plainly", text_on_syntax_error=True) if raw != "" else None
    parts = key.strip().split(".")
    if parts[0] not in FIELD_NAMES and len(parts) > 1:
        parts = ["method_options"] + parts  # packnet.prune_ratio -> method_options.packnet.prune_ratio
    out: dict = {}
    cur = out
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def resolve(overlays: list[dict], base: dict | None = None) -> RunConfig:
    merged: dict = dict(base or {})
    for o in overlays:
        merged = _deep_merge(merged, o)
    unknown = set(merged) - FIELD_NAMES
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(sorted(unknown))}; known keys: "
                          f"{', '.join(sorted(FIELD_NAMES))}")
    kwargs = {}
    for f in fields(RunConfig):
        if f.name in merged:
            default = f.default if f.default is not dataclasses.MISSING else None
            kwargs[f.name] = coerce(f.name, merged[f.name], default, f.type)
    return RunConfig(**kwargs)


def build_config(configs: list[str] = (), sets: list[str] = (), **fixed: Any) -> RunConfig:
    """Resolve a config from preset/config names, ``--set`` items and fixed keys."""
    overlays = [load_yaml(c) for c in configs]
    overlays += [parse_set(s) for s in sets]
    overlays.append({k: v for k, v in fixed.items() if v is not None})
    merged = {}
    for o in overlays:
        merged = _deep_merge(merged, o)
    bench = merged.get("benchmark", RunConfig.benchmark)
    base = load_yaml(str(PRESET_DIR / f"{bench}.yaml")) if (PRESET_DIR / f"{bench}.yaml").is_file() else {}
    return resolve([base, merged])


def method_options(cfg: RunConfig, method: str, options_cls) -> Any:
    """Build a method's ``Options`` dataclass from ``cfg.method_options[method]``."""
    return build_options(method, cfg.options(method), options_cls)


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before any work."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"config key 'device': {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"config key 'device': {device!r} but this machine has no usable CUDA GPU; "
                              f"use --set device=cpu")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"config key 'device': {device!r} but this machine has {n} CUDA GPU(s) "
                              f"(cuda:0..cuda:{n - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"config key 'device': {device!r} but MPS is not available here; use --set device=cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"config key 'device': {device!r} is not supported; use cpu, cuda or cuda:N")
