"""Kernel pools: one frozen ``[K, d]`` table per NWS layer, saved once per run.

The pool file stores only what reconstruction needs (the tables) plus metadata that lets a
loader refuse a mismatch: the architecture name and fingerprint, every layer's name, kernel
shape, vector length, K and dtype. The container adds a checksum.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..common.errors import ArtifactError, ConfigError
from ..method.layers import NWSConv2d, NWSLinear
from ..method.nwsify import convertible_layers, head_names
from ..common.schema import MAX_POOL_SIZE, Bool, Int, List, Map, Obj, Str, check
from ..storage.container import pack_state, read_container, unpack_state, write_container
from .kmeans import kmeans

POOL_FORMAT = 1
_DIM = Int(-1, 1 << 20)
POOL_HEADER = Obj({
    "arch": Str(), "tables": Map(lambda v, w: v),
    "layers": List(Obj({"name": Str(max_len=1024), "shape": List(_DIM, min_len=4, max_len=4), "d": Int(1, 1 << 20),
                        "group_size": Int(1, 1 << 20), "head": Bool()}, optional=frozenset({"head"})),
                   min_len=1, max_len=1 << 14),
})


def layer_specs(model: nn.Module, include_head: bool = True,
                group_sizes: dict[str, int] | None = None) -> list[dict]:
    """Name, kernel shape and vector length of every layer NWS converts (head: out dim = -1)."""
    group_sizes = group_sizes or {}
    heads = head_names(model)
    specs = []
    for name, m in convertible_layers(model, include_head):
        is_head = isinstance(m, (nn.Linear, NWSLinear)) and name in heads
        gs = m.group_size if isinstance(m, NWSConv2d) else group_sizes.get(name, 1)
        if isinstance(m, (nn.Linear, NWSLinear)):  # a head's out dim varies per task: -1
            shape = [-1 if is_head else m.out_features, m.in_features, 1, 1]
        else:
            shape = [m.out_channels, m.in_channels // m.groups, *m.kernel_size]
        specs.append({"name": name, "shape": shape, "d": gs * shape[2] * shape[3],
                      "group_size": gs, "head": is_head})
    return specs


def fingerprint(specs: list[dict]) -> str:
    canon = json.dumps([[s["name"], s["shape"], s["d"], s["group_size"]] for s in specs])
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


@dataclass
class PoolSet:
    arch: str
    specs: list[dict]
    tables: dict[str, torch.Tensor]

    @property
    def K(self) -> int:
        return next(iter(self.tables.values())).shape[0]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.specs)

    @property
    def digest(self) -> str:
        """sha256 of the tables' bytes: ties task artifacts to these exact pools."""
        h = hashlib.sha256()
        for name in sorted(self.tables):
            h.update(name.encode())
            h.update(self.tables[name].float().contiguous().numpy().tobytes())
        return h.hexdigest()

    def save(self, path) -> Path:
        metas, blobs = pack_state(self.tables, prefix="pool/")
        header = {"kind": "nws-pools", "format": POOL_FORMAT, "arch": self.arch,
                  "fingerprint": self.fingerprint, "layers": self.specs, "tables": metas}
        return write_container(path, header, blobs)

    @classmethod
    def load(cls, path) -> "PoolSet":
        header, blobs = read_container(path)
        if header.get("kind") != "nws-pools":
            raise ArtifactError(f"{path}: not a pool file (kind={header.get('kind')!r})")
        if header.get("format") != POOL_FORMAT:
            raise ArtifactError(f"{path}: pool format {header.get('format')} is not supported "
                                f"(this version reads {POOL_FORMAT}); rebuild the pools")
        return cls.from_header(header, blobs, str(path))

    @classmethod
    def from_header(cls, header: dict, blobs: dict[str, bytes], source: str) -> "PoolSet":
        """Check a pool file's header against ``POOL_HEADER`` and its tables against the layers it lists:
        one ``[K, d]`` real, finite table per layer, ``2 <= K <= MAX_POOL_SIZE``, one K for all."""
        fix = "rebuild the pools (nws-bench build-pools, or delete the cached file and rerun)"
        header = check(header, POOL_HEADER, source, fix)
        tables = unpack_state(header["tables"], blobs, "pool/", source=source, field="tables")
        names = [s["name"] for s in header["layers"]]
        if len(set(names)) != len(names) or set(names) != set(tables):
            diff = sorted(set(names) ^ set(tables)) or ["(a layer listed twice)"]
            raise ArtifactError(f"{source}: field tables does not match field layers (differ in {diff[0]!r}); {fix}")
        Ks = set()
        for spec in header["layers"]:
            t = tables[spec["name"]]
            if (t.dim() != 2 or not t.is_floating_point() or t.shape[1] != spec["d"]
                    or not 2 <= t.shape[0] <= MAX_POOL_SIZE):
                raise ArtifactError(f"{source}: table of layer {spec['name']!r} is {str(t.dtype)[6:]} "
                                    f"{list(t.shape)}, expected a float [K, {spec['d']}] with 2 <= K <= "
                                    f"{MAX_POOL_SIZE}; {fix}")
            if not bool(torch.isfinite(t).all()):
                raise ArtifactError(f"{source}: table of layer {spec['name']!r} holds NaN or Inf values; {fix}")
            Ks.add(t.shape[0])
        if len(Ks) > 1:
            raise ArtifactError(f"{source}: tables of different sizes K {sorted(Ks)}; NWS needs one K; {fix}")
        return cls(header["arch"], header["layers"], tables)

    @property
    def group_sizes(self) -> dict[str, int]:
        return {s["name"]: s["group_size"] for s in self.specs}

    def check_model(self, model: nn.Module, source: str = "pool file", include_head: bool = True,
                    group_sizes: dict[str, int] | None = None) -> None:
        """Raise a ConfigError naming the first layer whose pool does not fit ``model``."""
        want = {s["name"]: s for s in layer_specs(model, include_head, group_sizes)}
        have = {s["name"]: s for s in self.specs}
        for name, s in want.items():
            if name not in have:
                raise ConfigError(f"{source} (arch {self.arch}) has no pool for layer {name!r} of the "
                                  f"model; build pools for this architecture (nws-bench build-pools)")
            h = have[name]
            if h["shape"] != s["shape"] or h["d"] != s["d"] or h["group_size"] != s["group_size"]:
                raise ConfigError(
                    f"{source} (arch {self.arch}) does not fit layer {name!r}: pool built for kernel "
                    f"shape {h['shape']} (d={h['d']}, gs={h['group_size']}), model has {s['shape']} "
                    f"(d={s['d']}, gs={s['group_size']}); use pools built for this architecture")
        extra = set(have) - set(want)
        if extra:
            raise ConfigError(f"{source} (arch {self.arch}) has pools for layers the model lacks: "
                              f"{', '.join(sorted(extra))}")
        for name, t in self.tables.items():
            if t.shape[1] != have[name]["d"]:
                raise ArtifactError(f"{source}: table of layer {name!r} is {list(t.shape)}, expected d={have[name]['d']}")


def layer_vectors(module: nn.Module, group_size: int = 1) -> torch.Tensor:
    w = module.weight.detach()
    if isinstance(module, nn.Linear):
        return w.reshape(-1, group_size)
    kh, kw = module.kernel_size
    return w.reshape(-1, group_size * kh * kw)


def build_pools_kmeans(model: nn.Module, arch: str | None = None, K: int = 512, seed: int = 0, iters: int = 25,
                       include_head: bool = True, group_sizes: dict[str, int] | None = None,
                       init_sample: int | None = 20000, fit_sample: int | None = None,
                       final_iters: int = 2, progress=None) -> PoolSet:
    """k-means per layer over the kernels of a trained plain ``model``: every layer ``nwsify``
    converts (convs, Linears, the head(s)), for any model. ``arch`` only names the pools (default:
    the model's class name). See ``kmeans.kmeans`` for ``fit_sample``/``final_iters``;
    ``progress(name)`` is called before each layer."""
    if K < 2:
        raise ConfigError(f"pool_size must be >= 2, got {K}")
    group_sizes = group_sizes or {}
    specs = layer_specs(model, include_head, group_sizes)
    tables = {}
    for i, s in enumerate(specs):
        m = model.get_submodule(s["name"])
        if progress is not None:
            progress(s["name"])
        tables[s["name"]] = kmeans(layer_vectors(m, s["group_size"]), K, iters=iters, seed=seed + i,
                                   init_sample=init_sample, fit_sample=fit_sample, final_iters=final_iters)
    return PoolSet(arch or type(model).__name__, specs, tables)
