"""Import the NWS authors' released files (``nws-bench pools import``) as our pools and network.

Two formats, both torch pickles read with ``weights_only=True`` (no code runs):

- their pool-pretraining checkpoint, ``{'model': state_dict, ...}`` (or a Lightning
  ``{'state_dict': ...}``; ``module.`` / ``backbone.`` prefixes are stripped). Each NWS layer ``X``
  has its continuous weight ``X.weight`` and its quantiser's buffers ``X.qtz.embed`` [d, K] (the
  pool, transposed), ``cluster_size``, ``embed_avg``, ``acum_embed_sum``, ``acum_embed_onehot_sum``;
  only ``embed`` is kept (the others are the EMA's training state, which a frozen pool never uses);
- their ``shared_kernel_pools.pt``: a pickled list of their quantiser modules, one per NWS layer in
  module order. The only class it names (``models.quantizer.Quantize``) is mapped to a plain
  container, ``QuantizerRecord``; torch's restricted unpickler refuses any other.

Their ResNet names map onto ours: ``conv1.0``/``conv1.1`` -> ``conv1``/``bn1``; stage ``conv{k}_x``
-> ``layer{k-1}``, block ``NwsRes{b}`` -> ``{b}``, ``residual_function.{0,1,3,4}`` ->
``conv1, bn1, conv2, bn2``, ``shortcut.{0,1}`` -> ``downsample.{0,1}``; the head ``last_layer``
(a bias-free 1x1 conv [C, 512, 1, 1]) -> ``fc`` (a bias-free Linear [C, 512], the same numbers).
Their network has no max-pool, like ours. Every entry must fit our architecture; a mismatch is
refused naming the layer. A pool's vector length ``d`` sets the layer's group size (1x1 convs:
``gs = d``; k x k kernels must have ``d = k*k``). Their grouping takes input channels
``i, i + C/gs, ...`` into one vector, ours ``gs`` consecutive channels: the pool (a set of
vectors) imports unchanged; ``quantised`` networks are rebuilt in their layout.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from ..common.atomic import atomic_write
from ..common.errors import ArtifactError, ConfigError
from ..method.nwsify import convertible_layers
from ..method.search import nearest
from ..nets.models import build_arch
from ..storage.torch_file import load_torch
from .pool_set import PoolSet, layer_specs

THEIR_QUANTIZER = "models.quantizer.Quantize"
RESNET_ARCHS = ("resnet18", "resnet34", "resnet18-narrow", "resnet-tiny")


class QuantizerRecord:
    """What unpickling one of their quantiser modules gives: its attributes, no behaviour."""

    @property
    def embed(self) -> torch.Tensor:
        buffers = self.__dict__.get("_buffers") or {}
        if "embed" not in buffers or not isinstance(buffers["embed"], torch.Tensor):
            raise ArtifactError("a quantiser in the pool list has no 'embed' buffer")
        return buffers["embed"]


def read_authors_file(path) -> object:
    """Unpickle their file with the weights-only reader (``storage.torch_file``) plus their quantiser class."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p} not found; give the authors' pretraining checkpoint or shared_kernel_pools.pt")
    return load_torch(p, "the authors' checkpoint or shared_kernel_pools.pt",
                      "give one of the files the NWS authors released (see README, 'Importing the authors' pools')",
                      safe_globals=[(QuantizerRecord, THEIR_QUANTIZER)])


_BLOCK = re.compile(r"^conv(\d+)_x\.NwsRes(\d+)\.(residual_function|shortcut)\.(\d+)\.(.+)$")
_RESIDUAL = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2"}
_SHORTCUT = {"0": "downsample.0", "1": "downsample.1"}


def our_key(key: str) -> str:
    """Their ResNet state_dict key -> ours (an ArtifactError for a key with no counterpart)."""
    if key.startswith("conv1.0."):
        return "conv1." + key[len("conv1.0."):]
    if key.startswith("conv1.1."):
        return "bn1." + key[len("conv1.1."):]
    if key.startswith("last_layer."):
        return "fc." + key[len("last_layer."):]
    m = _BLOCK.match(key)
    if m:
        stage, block, part, idx, leaf = m.groups()
        table = _RESIDUAL if part == "residual_function" else _SHORTCUT
        if idx in table and int(stage) >= 2:
            return f"layer{int(stage) - 1}.{block}.{table[idx]}.{leaf}"
    raise ArtifactError(f"entry {key!r} of the authors' checkpoint has no counterpart in our ResNet")


def _their_state(blob) -> dict[str, torch.Tensor]:
    if isinstance(blob, dict) and isinstance(blob.get("model"), dict):
        state = blob["model"]
    elif isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        state = blob["state_dict"]
    else:
        raise ArtifactError("not the authors' checkpoint: expected a dict with a 'model' (or 'state_dict') state_dict")
    out = {}
    for k, v in state.items():
        if not isinstance(k, str):
            raise ArtifactError(f"key {k!r} of the authors' checkpoint is not a string: not a state_dict")
        for prefix in ("module.", "backbone."):
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def split_checkpoint(blob) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(our state_dict of their continuous network, {our layer: their embed [d, K]})."""
    state, embeds = {}, {}
    for k, v in _their_state(blob).items():
        if not isinstance(v, torch.Tensor):
            raise ArtifactError(f"entry {k!r} of the authors' checkpoint is not a tensor")
        layer, sep, leaf = k.partition(".qtz.")
        if sep:
            if leaf == "embed":
                embeds[our_key(layer + ".weight").removesuffix(".weight")] = v
            continue  # the EMA's training state (cluster_size, embed_avg, acum_*): unused by frozen pools
        state[our_key(k)] = v
    if "fc.weight" in state and state["fc.weight"].dim() == 4:  # 1x1 conv head -> Linear, same numbers
        state["fc.weight"] = state["fc.weight"].flatten(1)
    return state, embeds


def _model(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    if arch not in RESNET_ARCHS:
        raise ConfigError(f"pools import reads the authors' ResNets only; --arch must be one of "
                          f"{', '.join(RESNET_ARCHS)} (got {arch!r})")
    return build_arch(arch, num_classes, in_channels)


def check_state(state: dict[str, torch.Tensor], model: nn.Module, source: str) -> None:
    own = model.state_dict()
    for k, v in own.items():
        if k not in state:
            raise ConfigError(f"{source} has no entry for our {k!r}: it does not fit this architecture")
        if state[k].shape != v.shape:
            raise ConfigError(f"{source} does not fit layer {k.rsplit('.', 1)[0]!r}: {k} is "
                              f"{list(state[k].shape)} there, {list(v.shape)} in this architecture")
    extra = sorted(set(state) - set(own))
    if extra:
        raise ConfigError(f"{source} has entries this architecture lacks, e.g. {extra[0]!r}")


def pools_from_embeds(embeds: dict[str, torch.Tensor], model: nn.Module, arch: str, source: str) -> PoolSet:
    """Our PoolSet from their per-layer ``embed`` [d, K]; every convertible layer needs one."""
    layers = dict(convertible_layers(model, include_head=True))
    group_sizes = {}
    Ks = {}
    for name, m in layers.items():
        if name not in embeds:
            raise ConfigError(f"{source} has no pool for our layer {name!r}")
        Ks[name] = check_embed(embeds[name], name, source)
        d = embeds[name].shape[0]
        if isinstance(m, nn.Linear):
            area, cin = 1, m.in_features
        else:
            area, cin = m.kernel_size[0] * m.kernel_size[1], m.in_channels // m.groups
        if embeds[name].dim() != 2 or d % area or cin % (d // area) or (area > 1 and d != area):
            raise ConfigError(f"{source}: the pool of layer {name!r} has vectors of length {d} (embed "
                              f"{list(embeds[name].shape)}), which do not fit its {list(m.weight.shape)} kernels")
        if d // area > 1:
            group_sizes[name] = d // area
    extra = sorted(set(embeds) - set(layers))
    if extra:
        raise ConfigError(f"{source} has a pool for {extra[0]!r}, which this architecture lacks")
    if len(set(Ks.values())) > 1:
        first, other = next(iter(Ks.items())), next((n, k) for n, k in Ks.items() if k != next(iter(Ks.values())))
        raise ArtifactError(f"{source}: pools of different sizes (layer {first[0]!r} K={first[1]}, layer "
                            f"{other[0]!r} K={other[1]}); NWS needs one K for every layer: use the authors' file "
                            f"as released")
    specs = layer_specs(model, include_head=True, group_sizes=group_sizes)
    tables = {s["name"]: embeds[s["name"]].t().contiguous().float() for s in specs}
    return PoolSet(arch, specs, tables)


def check_embed(embed, name: str, source: str) -> int:
    """K of one of their pools ``embed`` [d, K]: a real floating 2-D table with d >= 1, K >= 2 and finite
    values, else an ArtifactError naming the layer (a K = 0 pool would crash the run, a NaN pool
    would surface as divergence blamed on the learning rate)."""
    fix = "use the authors' file as released (or rebuild the pools: nws-bench build-pools)"
    if not isinstance(embed, torch.Tensor) or not embed.is_floating_point():
        kind = str(embed.dtype).replace("torch.", "") if isinstance(embed, torch.Tensor) else type(embed).__name__
        raise ArtifactError(f"{source}: the pool of layer {name!r} is {kind}, not a real floating table; {fix}")
    if embed.dim() != 2 or embed.shape[0] < 1 or embed.shape[1] < 2:
        raise ArtifactError(f"{source}: the pool of layer {name!r} is {list(embed.shape)}; a pool is [d, K] with "
                            f"d >= 1 and K >= 2; {fix}")
    if not bool(torch.isfinite(embed).all()):
        raise ArtifactError(f"{source}: the pool of layer {name!r} holds NaN or Inf values; {fix}")
    return int(embed.shape[1])


def embeds_from_list(records: list, model: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """Their pool list (module order) -> {our layer: embed}, matched to our layers in order."""
    names = [n for n, _ in convertible_layers(model, include_head=True)]
    if not all(isinstance(r, QuantizerRecord) for r in records):
        raise ArtifactError(f"{source}: expected a list of the authors' quantisers ({THEIR_QUANTIZER})")
    if len(records) != len(names):
        raise ConfigError(f"{source} holds {len(records)} pools; this architecture has {len(names)} NWS "
                          f"layers ({names[0]} ... {names[-1]}): use the file made for this architecture")
    return {name: r.embed for name, r in zip(names, records)}


def quantise_theirs(weight: torch.Tensor, table: torch.Tensor, gs: int) -> torch.Tensor:
    """``weight`` with each vector replaced by its nearest pool row, vectors cut as theirs are
    (input channels ``i, i + C/gs, ...`` together; for gs=1 the same as ours)."""
    w = weight.reshape(weight.shape[0], weight.shape[1], -1) if weight.dim() == 4 else weight[:, :, None]
    o, c, a = w.shape
    vec = w.reshape(o, gs, c // gs, a).permute(0, 2, 1, 3).reshape(-1, gs * a)
    q = table[nearest(vec.float(), table)].to(weight.dtype)
    return q.reshape(o, c // gs, gs, a).permute(0, 2, 1, 3).reshape(weight.shape)


def import_authors(path, arch: str, in_channels: int = 3, quantised: bool = False):
    """(PoolSet, our state_dict or None, num_classes or None) from either of their files."""
    blob = read_authors_file(path)
    source = str(path)
    if isinstance(blob, list):
        model = _model(arch, 1, in_channels)
        pools = pools_from_embeds(embeds_from_list(blob, model, source), model, arch, source)
        return pools, None, None
    try:
        state, embeds = split_checkpoint(blob)
    except ArtifactError as e:  # its messages name the entry; the file is named here
        raise ArtifactError(f"{source}: {e}") from None
    if "fc.weight" not in state:
        raise ConfigError(f"{source} has no head (last_layer.weight): not a full NWS ResNet checkpoint")
    classes = state["fc.weight"].shape[0]
    model = _model(arch, classes, in_channels)
    check_state(state, model, source)
    pools = pools_from_embeds(embeds, model, arch, source)
    if quantised:
        for s in pools.specs:
            key = f"{s['name']}.weight"
            state[key] = quantise_theirs(state[key], pools.tables[s["name"]], s["group_size"])
    return pools, state, classes


def save_state(path, state: dict[str, torch.Tensor]) -> Path:
    """A torchvision-format state_dict (``--set pretrained=FILE`` reads it), written atomically."""
    clean = {k: v.detach().clone().contiguous() for k, v in state.items()}
    atomic_write(Path(path), lambda fh: torch.save(clean, fh))
    return Path(path)
