"""The assets a run starts from: the pretrained network and the kernel pools.

The pretrained network is a torchvision-format state_dict given by ``pretrained`` (a file, or
``imagenet``: torchvision's weights for the arch, see ``hub``), or trained on
the benchmark's pretrain split when it has one (split-digits), or random (``pretrained: random``,
for smoke tests). Pools come from ``pool_file`` (validated against the architecture) or are built
by k-means from the pretrained network. Both are cached under ``<out>/<benchmark>/_assist/`` so
every method and rerun of a benchmark starts from the same bytes. Both cached files are checksummed
containers (``pretrained-*.nwsw``, ``pools-*.nwsp``) verified on every load: a corrupted cache stops
the run (exit 2) naming the file, never changes results silently.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..common.errors import ArtifactError, ConfigError
from ..common.feedback import Steps
from ..method.grouping import group_sizes_for
from ..nets.models import build_arch
from ..common.schema import Int, Map, Obj, check
from ..storage.container import file_sha256, pack_state, read_container, unpack_state, write_container
from ..storage.record import MAX_CLASSES
from .hub import resolve_pretrained
from .pool_set import PoolSet, build_pools_kmeans, layer_specs
from .torchvision_state import load_torchvision_state, write_sha256_sidecar  # noqa: F401 (imported from here too)


@dataclass
class Assets:
    arch: str
    in_channels: int
    pretrained_state: dict[str, torch.Tensor]
    pretrained_classes: int
    pools: PoolSet | None
    pool_path: Path | None

    def pretrained_model(self) -> nn.Module:
        m = build_arch(self.arch, self.pretrained_classes, self.in_channels)
        m.load_state_dict(self.pretrained_state)
        return m


PRETRAINED_SUFFIX = "nwsw"  # a checksummed container (container.py), not a pickle
PRETRAINED_FORMAT = 1


def _key(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def pretrain_network(cfg, bench, progress: bool | None = None) -> tuple[dict, int]:
    torch.manual_seed(cfg.seed)
    model = build_arch(cfg.arch, bench.pretrain_classes, bench.in_channels)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.pretrain_lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.pretrain_epochs)
    loader = DataLoader(bench.pretrain, batch_size=64, shuffle=True)
    model.train()
    steps = Steps(f"pretraining {cfg.arch} on {bench.name}: epoch", cfg.pretrain_epochs, progress)
    for _ in range(cfg.pretrain_epochs):
        total = n = 0
        for x, y in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(y), n + len(y)
        sched.step()
        steps.step(f"loss {total / max(n, 1):.4f}")
    steps.close()
    return model.state_dict(), bench.pretrain_classes


def save_cached_pretrained(path: Path, state: dict[str, torch.Tensor], classes: int) -> Path:
    metas, blobs = pack_state(state, prefix="state/")
    return write_container(path, {"kind": "pretrained", "format": PRETRAINED_FORMAT, "classes": int(classes),
                                  "state": metas}, blobs)


def load_cached_pretrained(path: Path, arch: str | None = None, in_channels: int = 3
                           ) -> tuple[dict[str, torch.Tensor], int]:
    """The cached pretrained network, its checksum checked (a flipped byte is refused, not used); with
    ``arch``, its entries must be exactly that architecture's (names, shapes, dtypes)."""
    fix = (f"delete {path} and rerun: the run rebuilds it (pretraining again, or from the random seed); "
           f"runs that finished with the old file keep their results")
    try:
        header, blobs = read_container(path)
    except ArtifactError as e:
        raise ArtifactError(f"{str(e).split('; re-create it')[0]}; {fix}") from None
    if header.get("kind") != "pretrained" or header.get("format") != PRETRAINED_FORMAT:
        raise ArtifactError(f"{path}: not a cached pretrained network of format {PRETRAINED_FORMAT}; {fix}")
    header = check(header, Obj({"classes": Int(1, MAX_CLASSES), "state": Map(lambda v, w: v)}), str(path), fix)
    state = unpack_state(header["state"], blobs, "state/", source=str(path))
    head = state.get("fc.weight")
    if head is None or head.dim() != 2 or head.shape[0] != header["classes"]:
        raise ArtifactError(f"{path}: field classes ({header['classes']}) does not match its head "
                            f"fc.weight {list(head.shape) if head is not None else '(missing)'}; {fix}")
    if arch is not None:
        own = build_arch(arch, header["classes"], in_channels).state_dict()
        bad = sorted(set(own) ^ set(state)) or [k for k in own if own[k].shape != state[k].shape
                                                 or own[k].dtype != state[k].dtype]
        if bad:
            raise ArtifactError(f"{path}: entry {bad[0]!r} does not fit {arch} (missing, extra, or another "
                                f"shape or dtype); {fix}")
    return state, header["classes"]


def prepare_assets(cfg, bench, cache_root: Path, need_pools: bool, progress: bool | None = None) -> Assets:
    cache_root = Path(cache_root)
    cfg = replace(cfg, pretrained=resolve_pretrained(cfg.pretrained, cfg.arch))  # imagenet -> cached file
    if cfg.pretrained and cfg.pretrained != "random":
        state, classes = load_torchvision_state(cfg.pretrained, build_arch(cfg.arch, 1, bench.in_channels))
        # keyed on the content: a changed file never reuses pools built from the old one
        pre_key = {"file": str(Path(cfg.pretrained).resolve()), "sha256": file_sha256(Path(cfg.pretrained))}
    else:
        pre_key = {"arch": cfg.arch, "seed": cfg.seed, "in": bench.in_channels,
                   "mode": cfg.pretrained or "pretrain", "epochs": cfg.pretrain_epochs, "lr": cfg.pretrain_lr,
                   "threads": cfg.threads}  # pretraining's bytes depend on the thread count
        if cfg.benchmark_options:  # they may change the pretraining images (classes, size, drawings)
            pre_key["bench_options"] = cfg.benchmark_options
        path = cache_root / f"pretrained-{_key({**pre_key, 'bench': bench.name})}.{PRETRAINED_SUFFIX}"
        if path.is_file():
            state, classes = load_cached_pretrained(path, cfg.arch, bench.in_channels)
        else:
            if cfg.pretrained == "random":
                torch.manual_seed(cfg.seed)
                classes = max(bench.pretrain_classes, 2)
                state = build_arch(cfg.arch, classes, bench.in_channels).state_dict()
            elif bench.pretrain is not None:
                state, classes = pretrain_network(cfg, bench, progress)
            else:
                raise ConfigError(
                    f"benchmark {bench.name!r} has no pretraining data: give a pretrained network "
                    f"(--set pretrained=FILE, a torchvision-format state_dict for {cfg.arch}), "
                    f"or --set pretrained=random for a smoke test")
            save_cached_pretrained(path, state, classes)
    pools = pool_path = None
    if need_pools and cfg.pools == "pretrain" and not cfg.pool_file:
        if cfg.pretrained and cfg.pretrained != "random":
            raise ConfigError("pools=pretrain pretrains its own network on the benchmark's pretraining split; "
                              "drop pretrained=FILE, or use pools=kmeans (k-means of that file's kernels)")
        if bench.pretrain is None:
            raise ConfigError(f"pools=pretrain: benchmark {bench.name!r} has no pretraining split; use "
                              f"pools=kmeans with pretrained=FILE, or give pool_file=FILE")
        state, classes, pools, pool_path = ema_pretrained(cfg, bench, cache_root, progress)
    elif need_pools:
        model = build_arch(cfg.arch, classes, bench.in_channels)
        model.load_state_dict(state, strict=False)
        if cfg.pool_file:
            pool_path = Path(cfg.pool_file)
            pools = PoolSet.load(pool_path)
            pools.check_model(model, source=str(pool_path), group_sizes=group_sizes_for(model, cfg.group_size))
        else:
            key = _key({**pre_key, "bench": bench.name, "K": cfg.pool_size, "it": cfg.kmeans_iters,
                        "gs": cfg.group_size, "seed": cfg.seed, "threads": cfg.threads})
            pool_path = cache_root / f"pools-{key}.nwsp"
            if pool_path.is_file():
                pools = PoolSet.load(pool_path)
            else:
                group_sizes = group_sizes_for(model, cfg.group_size)
                steps = Steps(f"k-means pools (K={cfg.pool_size}): layer",
                              len(layer_specs(model, True, group_sizes)), progress)
                pools = build_pools_kmeans(model, cfg.arch, cfg.pool_size, seed=cfg.seed, iters=cfg.kmeans_iters,
                                           group_sizes=group_sizes,
                                           progress=lambda name: steps.step(name))
                steps.close()
                pools.save(pool_path)
    return Assets(cfg.arch, bench.in_channels, state, classes, pools, pool_path)


def ema_pretrained(cfg, bench, cache_root: Path, progress: bool | None = None):
    """The paper's pipeline on the benchmark's own pretraining split: an NWS network trained with EMA pools
    (``pools.pretrain``, the same epochs, lr, batch 64 and weight decay as ``pretrain_network``, cosine
    schedule), cached under ``_assist/pretrain-pools-<key>/`` (a rerun resumes or reuses it). Returns its
    quantised network (state, classes), its pools and the pool file."""
    from ..config.tool_settings import PretrainConfig
    from .pretrain import Source, pretrain

    settings = PretrainConfig(benchmark=bench.name, benchmark_options=dict(cfg.benchmark_options), arch=cfg.arch,
                              epochs=max(cfg.pretrain_epochs, 1), batch_size=min(64, len(bench.pretrain)),
                              lr=cfg.pretrain_lr,
                              weight_decay=5e-4, pool_size=cfg.pool_size, beta=cfg.beta, group_size=cfg.group_size,
                              seed=cfg.seed, schedule="cosine", workers=0, device=cfg.device,
                              progress=progress if progress is not None else False)
    out = Path(cache_root) / f"pretrain-pools-{_key({**settings.resume_key(), 'threads': cfg.threads})}"
    settings.out = str(out)
    if not (out / "pools.nwsp").is_file():
        pretrain(settings, Source(bench.pretrain, [str(c) for c in range(bench.pretrain_classes)],
                                  bench.in_channels, f"benchmark {bench.name}"))
    state, classes = load_torchvision_state(str(out / "pretrained.pt"), build_arch(cfg.arch, 1, bench.in_channels))
    pools = PoolSet.load(out / "pools.nwsp")
    model = build_arch(cfg.arch, classes, bench.in_channels)
    model.load_state_dict(state, strict=False)
    pools.check_model(model, source=str(out / "pools.nwsp"), group_sizes=group_sizes_for(model, cfg.group_size))
    return state, classes, pools, out / "pools.nwsp"
