"""Pool pretraining: an NWS network trained on an image folder, or on a registered benchmark's own
pretraining split (``--benchmark``: its channels, image size and normalisation), pools learnt by EMA
(``vq_ema``).

Loss ``CE + beta * sum_l commitment_l``; after each optimiser step the pools take one EMA
step (with dead-entry revival) from the statistics of the forward pass's assignment. One process, or ``torchrun --nproc_per_node N`` (gloo on CPU,
nccl on GPU): every rank reads its ``DistributedSampler`` shard, gradients are averaged by DDP,
BatchNorm normalises over the global batch (``dist_bn``), and the pools are identical on all
ranks after every update (``PoolEMA.broadcast``).

Outputs in ``out/``: ``checkpoint.pt`` (after every epoch, atomic; a rerun resumes from it),
and when training ends ``pools.nwsp`` (``PoolSet``: tables and layer metadata only, no EMA
buffers), ``pretrained.pt`` (a torchvision-format state_dict of the plain architecture, usable
as ``--set pretrained=FILE``) and ``history.json``.

``pretrained.pt`` holds the *quantised* kernels (``pool[indices]``), not the temporary ones:
they are the network that was trained and whose BatchNorm statistics were measured, and with
the saved pools they search back to exactly the same indices, so task 0 starts from the
pretrained network's own function.

Against the authors' ``pretrain_KP.py``. Same: SGD (lr 0.01, momentum 0.9, Nesterov, weight
decay 4e-5), the EMA formula, statistics from the forward pass's assignment applied after the
step (``--ema-stats forward``), the LR schedule of their SGD branch (``--schedule multistep``:
x0.1 at epoch 100 when there are 160 epochs, their paper setting, else at ``int(0.5 E)`` and
``int(0.8 E)``; ``cosine`` is the option). Deliberately different, fixing their defects:
- the commitment term is really in the loss (theirs sums an attribute of a class the ResNet
  layers are not instances of, so it is zero for ResNets);
- dead pool entries are revived (``--revive-fraction``; theirs never are, unused entries stay);
- mixed precision is off by default and distances/statistics stay float32 under autocast
  (theirs always runs fp16 autocast, their known source of NaN losses);
- ``pools.nwsp`` keeps only the tables (theirs pickles the quantiser modules with their EMA
  buffers, about 3x the bytes reconstruction needs).

Reproducibility: the data order depends on (seed, epoch) only, and the global RNG is re-seeded
from (seed, epoch, rank) at the start of each epoch, so a resumed run continues exactly as an
uninterrupted one.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from torchvision import datasets

from ..common.atomic import atomic_write, atomic_write_json
from ..common.errors import ConfigError, DataError, NWSError
from ..storage.torch_file import load_torch
from ..config.tool_settings import PretrainConfig
from ..method.grouping import group_sizes_for
from ..method.layers import commitment_loss, nws_layers
from ..method.nwsify import nwsify
from ..nets.models import build_arch
from .kmeans import kmeans
from .pool_set import PoolSet, layer_specs, layer_vectors
from .torchvision_state import load_torchvision_state, write_sha256_sidecar
from .vq_ema import EMAConfig, PoolEMA

CHECKPOINT_FORMAT = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TrainingDiverged(NWSError):
    pass


# -- data -------------------------------------------------------------------------------------
class LimitedImageFolder(datasets.ImageFolder):
    """ImageFolder over the first ``max_classes`` class folders (sorted); module-level so that
    DataLoader workers can pickle it."""

    def __init__(self, root, transform=None, max_classes=None):
        self.max_classes = max_classes
        super().__init__(root, transform=transform)

    def find_classes(self, directory):
        classes, _ = super().find_classes(directory)
        if self.max_classes:
            classes = classes[: self.max_classes]
        return classes, {c: i for i, c in enumerate(classes)}


def image_folder(cfg: PretrainConfig) -> Dataset:
    """``<root>/<class>/<image>``; train transforms with ImageNet normalisation."""
    from torchvision import transforms as T

    root = Path(cfg.data)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; expected <root>/<class>/<image> (e.g. ImageNet's train/)")
    if cfg.augment:
        aug = [T.RandomResizedCrop(cfg.image_size), T.RandomHorizontalFlip()]
    else:
        aug = [T.Resize(cfg.image_size), T.CenterCrop(cfg.image_size)]
    tf = T.Compose([*aug, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    try:
        ds = LimitedImageFolder(str(root), transform=tf, max_classes=cfg.max_classes)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"{root}: not a usable image folder ({e}); expected <root>/<class>/<image>") from None
    if len(ds.classes) < 2:
        raise DataError(f"{root}: found {len(ds.classes)} class folder(s); pretraining needs at least 2")
    return ds


@dataclass
class Source:
    """What pretraining reads: a dataset of (image tensor, label), its class names and channels."""
    data: Dataset
    classes: list[str]
    in_channels: int = 3
    label: str = ""  # for messages: the folder or the benchmark


def folder_source(cfg: PretrainConfig) -> Source:
    ds = image_folder(cfg)
    return Source(ds, list(ds.classes), 3, str(cfg.data))


# -- distributed set-up -----------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(cfg: PretrainConfig, d: Dist) -> torch.device:
    kind = cfg.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device cuda requested but CUDA is not available; use --device cpu")
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device(kind)


# -- the model ----------------------------------------------------------------------------------
def random_pools(model: nn.Module, K: int, group_sizes: dict[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Gaussian pools at the scale of each layer's (kaiming) kernels."""
    pools = {}
    for s in layer_specs(model, True, group_sizes):
        w = layer_vectors(model.get_submodule(s["name"]), s["group_size"])
        pools[s["name"]] = torch.randn(K, s["d"], generator=gen) * w.float().std().clamp(min=1e-4)
    return pools


def kmeans_pools(model: nn.Module, K: int, group_sizes: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    pools = {}
    for i, s in enumerate(layer_specs(model, True, group_sizes)):
        w = layer_vectors(model.get_submodule(s["name"]), s["group_size"])
        pools[s["name"]] = kmeans(w, K, iters=10, seed=seed + i, init_sample=4096, fit_sample=16384)
    return pools


def build_nws_model(cfg: PretrainConfig, num_classes: int, in_channels: int = 3) -> tuple[nn.Module, dict[str, int]]:
    """Plain arch (kaiming, or ``cfg.init``) converted to NWS with random (or k-means) pools."""
    torch.manual_seed(cfg.seed)
    model = build_arch(cfg.arch, num_classes, in_channels)
    gen = torch.Generator().manual_seed(cfg.seed)
    gs = group_sizes_for(model, cfg.group_size)
    if cfg.init:
        state, classes = load_torchvision_state(cfg.init, build_arch(cfg.arch, 1, in_channels))
        if classes != num_classes:  # another label set: keep the fresh head
            state.pop("fc.weight")
        model.load_state_dict(state, strict=False)
        pools = kmeans_pools(model, cfg.pool_size, gs, cfg.seed)
    else:
        pools = random_pools(model, cfg.pool_size, gs, gen)
    nwsify(model, pools, include_head=True, group_sizes=gs)
    return model, gs


def lr_milestones(epochs: int) -> list[int]:
    """The authors' LR drops (``pretrain_KP.py``, SGD): [100] for 160 epochs, else ``int(0.5 E)`` and
    ``int(0.8 E)`` (a drop before epoch 1, in runs under 2 epochs, is left out)."""
    if epochs == 160:
        return [100]
    return [m for m in (int(0.5 * epochs), int(0.8 * epochs)) if m >= 1]


def lr_schedule(cfg: PretrainConfig, opt: torch.optim.Optimizer):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=lr_milestones(cfg.epochs), gamma=0.1)


def quantised_state(model: nn.Module, arch: str, num_classes: int, in_channels: int = 3) -> dict[str, torch.Tensor]:
    """The NWS model as a torchvision-format state_dict of the plain arch, kernels = pool[search(w)]."""
    plain = build_arch(arch, num_classes, in_channels)
    own = plain.state_dict()
    state = {}
    layers = dict(nws_layers(model))
    for k, v in model.state_dict().items():
        if k.endswith((".pool", ".indices")):
            continue
        state[k] = v.detach().cpu().clone()
    with torch.no_grad():
        for name, m in layers.items():
            m.assign()
            state[f"{name}.weight"] = m.pool[m.indices].view_as(m.weight).cpu().reshape(own[f"{name}.weight"].shape)
    plain.load_state_dict(state)  # strict: proves the file loads into the plain architecture
    return plain.state_dict()


# -- checkpoints --------------------------------------------------------------------------------
def save_checkpoint(path: Path, blob: dict) -> None:
    atomic_write(path, lambda fh: torch.save(blob, fh))


def load_checkpoint(path: Path, cfg: PretrainConfig) -> dict | None:
    if not path.is_file():
        return None
    blob = load_torch(path, "pretraining checkpoint", "delete it to start again, or use another --out",
                      error=ConfigError)
    if not isinstance(blob, dict) or not isinstance(blob.get("config"), dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not a pretraining checkpoint of format {CHECKPOINT_FORMAT}; "
                          f"use another --out")
    want, have = cfg.resume_key(), blob["config"]
    diff = [k for k in want if have.get(k) != want[k]]
    if diff:
        k = diff[0]
        raise ConfigError(f"{path} was written with {k}={have.get(k)!r}, this run has {k}={want[k]!r}; "
                          f"rerun with the same settings to resume, or use another --out")
    return blob


# -- training -----------------------------------------------------------------------------------
def _usage_text(used: dict[str, int], K: int) -> str:
    vals = sorted(used.values())
    return f"{vals[0]}..{vals[-1]}/{K}" if vals else "-"


def pretrain(cfg: PretrainConfig, source: Source | None = None) -> dict:
    """Run (or resume) pool pretraining on ``source`` (default: the image folder ``cfg.data``);
    returns a summary (rank 0 writes the files)."""
    cfg.validate()
    device_type = "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
    d = init_distributed(device_type)
    device = pick_device(cfg, d)
    if cfg.batch_size % d.world:
        raise ConfigError(f"batch size {cfg.batch_size} must be divisible by the {d.world} processes")
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    source = source or folder_source(cfg)
    data = source.data
    num_classes = len(source.classes)
    model, gs = build_nws_model(cfg, num_classes, source.in_channels)
    if not cfg.benchmark and cfg.image_size < getattr(model, "min_input_size", 1):
        raise ConfigError(f"arch {cfg.arch} needs images of at least {model.min_input_size} px "
                          f"(got --image-size {cfg.image_size})")
    if d.world > 1:  # before the optimiser is built: conversion creates new BN parameters
        model = convert_bn(model, device_type)
    ema = PoolEMA(model, EMAConfig(cfg.decay, cfg.eps, cfg.revive_fraction, cfg.ema_stats, cfg.ema_prior))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    sched = lr_schedule(cfg, opt)
    scaler = torch.amp.GradScaler(device_type, enabled=cfg.amp == "fp16")
    history: list[dict] = []
    start_epoch = 0
    blob = load_checkpoint(ckpt_path, cfg)
    if blob is not None:
        model.load_state_dict(blob["model"])
        for _, m in nws_layers(model):
            m.reset_search()
        ema.load_state_dict(blob["ema"])
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        scaler.load_state_dict(blob["scaler"])
        history, start_epoch = blob["history"], blob["epoch"]
    model.to(device)
    _move_optimizer(opt, device)
    ema = _rebind(ema, model, device)
    net = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(data, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    per_rank = cfg.batch_size // d.world
    loader = DataLoader(data, batch_size=per_rank, sampler=sampler, num_workers=cfg.workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0)
    if len(loader) == 0:
        raise DataError(f"{source.label}: {len(data)} images give no full batch of {cfg.batch_size}; "
                        f"lower --batch-size")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    from tqdm.auto import tqdm

    for epoch in range(start_epoch, end_epoch):
        sampler.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + d.rank)  # augmentation RNG: resumable
        net.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
                   disable=(not d.main) if cfg.progress is None else (not cfg.progress or not d.main))
        tot = torch.zeros(4, dtype=torch.float64, device=device)  # ce*n, correct, n, commitment*steps
        used: dict[str, int] = {}
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(bar):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                logits = net(x)
                ce = F.cross_entropy(logits.float(), y)
            commit = commitment_loss(model).float()  # float32: pools and temporary kernels are float32
            loss = ce + cfg.beta * commit
            stats = torch.stack([ce.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                 torch.tensor(float(len(y)), dtype=torch.float64, device=device),
                                 (~torch.isfinite(loss.detach())).double()])
            if d.world > 1:
                dist.all_reduce(stats)
            if stats[3] > 0:
                raise TrainingDiverged(
                    f"non-finite loss at epoch {epoch + 1}, step {step + 1} (CE {float(ce.detach()):.4g}, "
                    f"commitment {float(commit.detach()):.4g}); training stopped. The last good checkpoint "
                    f"{ckpt_path if ckpt_path.is_file() else '(none yet)'} is intact; lower --lr"
                    f"{' or use --amp bf16/off' if cfg.amp == 'fp16' else ''} and rerun to resume")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            used = ema.update()
            ema.broadcast()
            tot[:3] += stats[:3]
            tot[3] += float(commit.detach())
            bar.set_postfix(loss=f"{float(stats[0] / stats[2]):.3f}", acc=f"{100 * float(stats[1] / stats[2]):.1f}",
                            used=_usage_text(used, cfg.pool_size), refresh=False)
        bar.close()
        sched.step()
        secs = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "ce": float(tot[0] / tot[2]), "train_acc": 100 * float(tot[1] / tot[2]),
               "commitment": float(tot[3]) / max(len(loader), 1), "images": int(tot[2]), "seconds": secs,
               "images_per_s": float(tot[2]) / secs, "pool_usage": used, "revived": dict(ema.revived)}
        history.append(row)
        if d.main:
            save_checkpoint(ckpt_path, {"format": CHECKPOINT_FORMAT, "config": cfg.resume_key(), "epoch": epoch + 1,
                                        "model": _plain_bn_state(model), "ema": ema.state_dict(),
                                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                        "scaler": scaler.state_dict(), "history": history,
                                        "classes": list(source.classes), "group_sizes": gs})
            print(f"epoch {epoch + 1}/{cfg.epochs}: CE {row['ce']:.4f}, train acc {row['train_acc']:.2f} %, "
                  f"commitment {row['commitment']:.4g}, {row['images_per_s']:.1f} images/s, pool usage "
                  f"{_usage_text(used, cfg.pool_size)}", flush=True)
        if d.world > 1:
            dist.barrier()
    done = (history[-1]["epoch"] if history else 0) >= cfg.epochs
    summary = {"epochs_done": history[-1]["epoch"] if history else 0, "finished": done, "history": history,
               "world_size": d.world, "rank": d.rank, "out": str(out)}
    if done and d.main:
        arch_pools = PoolSet(cfg.arch, layer_specs(model, True, gs),
                             {name: m.pool.detach().cpu().clone() for name, m in nws_layers(model)})
        arch_pools.save(out / "pools.nwsp")
        state = quantised_state(model, cfg.arch, num_classes, source.in_channels)
        atomic_write(out / "pretrained.pt", lambda fh: torch.save(state, fh))
        write_sha256_sidecar(out / "pretrained.pt")  # checked by every run given it as pretrained=FILE
        atomic_write_json(out / "history.json", {"config": asdict(cfg),
                                                 "classes": list(source.classes), "history": history})
    if d.world > 1:
        dist.barrier()
    summary["pools"] = {name: m.pool.detach().cpu().clone() for name, m in nws_layers(model)}
    return summary


def convert_bn(model: nn.Module, device_type: str) -> nn.Module:
    from .dist_bn import convert_batchnorm

    return convert_batchnorm(model, device_type)


def _plain_bn_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _move_optimizer(opt: torch.optim.Optimizer, device: torch.device) -> None:
    for st in opt.state.values():
        for k, v in st.items():
            if torch.is_tensor(v):
                st[k] = v.to(device)


def _rebind(ema: PoolEMA, model: nn.Module, device: torch.device) -> PoolEMA:
    """After BN conversion and ``.to(device)`` the layers are the same objects; move the stats."""
    ema.layers = nws_layers(model)
    for st in ema.stats.values():
        st.N, st.m = st.N.to(device), st.m.to(device)
    for _, m in ema.layers:
        m.reset_search()
    return ema
