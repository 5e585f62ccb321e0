"""Pools from a checkpoint (k-means per layer) and a look inside a pool file."""
from __future__ import annotations

from pathlib import Path

import torch

from ..common.errors import ConfigError
from ..config.tool_settings import KMeansSettings
from ..method.grouping import group_sizes_for
from ..method.search import nearest
from ..nets.models import build_arch
from .hub import resolve_pretrained
from .pool_set import PoolSet, build_pools_kmeans, layer_vectors
from .torchvision_state import load_torchvision_state


def model_from_checkpoint(path: str, arch: str, in_channels: int = 3) -> torch.nn.Module:
    """The plain ``arch`` with the torchvision-format state_dict at ``path`` (or ``imagenet``) loaded."""
    path = resolve_pretrained(path, arch)
    state, classes = load_torchvision_state(path, build_arch(arch, 1, in_channels))
    model = build_arch(arch, classes, in_channels)
    model.load_state_dict(state)
    return model


def build_from_checkpoint(path: str, arch: str, s: KMeansSettings, in_channels: int = 3,
                          progress=None) -> PoolSet:
    s.validate()
    model = model_from_checkpoint(path, arch, in_channels)
    return build_pools_kmeans(model, arch, s.pool_size, seed=s.seed, iters=s.iters,
                              group_sizes=group_sizes_for(model, s.group_size), init_sample=s.init_sample,
                              fit_sample=s.fit_sample, final_iters=s.final_iters, progress=progress)


def inspect_rows(pools: PoolSet, model: torch.nn.Module | None = None) -> list[dict]:
    """Per layer: shape, d, gs, K, bytes; with ``model``: entries its kernels use and the error."""
    rows = []
    for spec in pools.specs:
        t = pools.tables[spec["name"]].float()
        row = {"layer": spec["name"], "kernel shape": "x".join(str(v) for v in spec["shape"]),
               "d": spec["d"], "gs": spec["group_size"], "K": t.shape[0],
               "distinct": int(torch.unique(t, dim=0).shape[0]), "bytes": t.numel() * t.element_size()}
        if model is not None:
            w = layer_vectors(model.get_submodule(spec["name"]), spec["group_size"]).float()
            idx = nearest(w, t)
            err = (w - t[idx]).pow(2).sum(1)
            row.update({"kernels": w.shape[0], "used": int(torch.unique(idx).numel()),
                        "q-error": float(err.mean()),
                        "rel q-error": float(err.mean() / w.pow(2).sum(1).mean().clamp(min=1e-30))})
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers="keys", floatfmt=".4g")


def load_pools(path: str) -> PoolSet:
    if not Path(path).is_file():
        raise ConfigError(f"pool file {path} not found")
    return PoolSet.load(path)
