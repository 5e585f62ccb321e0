"""Per-task NWS artifact: what a task really stores, and the rebuild from it.

One file per task: for every NWS layer the chosen pool indices, coded losslessly (the codec is
named in the header, default ``codecs.DEFAULT_CODEC``), plus every other entry of the
task's state_dict (BatchNorm parameters and statistics, biases, non-NWS layers). The header
holds the format version, the architecture, the pool fingerprint and digest; the record
(``storage/record.py``) adds the checksum. Pools are not in it: they are the run's shared "assist" file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ..common.errors import ArtifactError
from ..nets.models import get_head
from ..storage.codecs import DEFAULT_CODEC
from ..common.schema import MAX_POOL_SIZE, Int, List, Obj, Str, check
from ..storage.record import MAX_CLASSES, MAX_INTS, Ints, State, read_record, write_record
from .fastbuild import skip_weight_init
from .layers import nws_layers


def _nws_owned_keys(model: nn.Module) -> set[str]:
    keys = set()
    for name, _ in nws_layers(model):
        for leaf in ("weight", "pool", "indices"):
            keys.add(f"{name}.{leaf}")
    return keys


def save_nws_task(path, model: nn.Module, *, task: int, arch: str, num_classes: int,
                  pool_fingerprint: str, pool_digest: str, codec: str = DEFAULT_CODEC,
                  extra: dict | None = None) -> Path:
    """Write task ``task``'s artifact from ``model`` (its NWS layers' current indices, coded with
    ``codec``, and every other state_dict entry); ``pool_fingerprint``/``pool_digest`` come from
    the ``PoolSet`` (``pools.fingerprint``, ``pools.digest``) and tie the file to those pools."""
    fields, layers = {}, []
    for name, m in nws_layers(model):
        idx = m.indices.detach().cpu().numpy()
        fields[f"idx/{name}"] = Ints(idx, m.pool_size)
        layers.append({"name": name, "n": int(idx.size), "K": m.pool_size})
    owned = _nws_owned_keys(model)
    fields["state"] = State({k: v for k, v in model.state_dict().items() if k not in owned})
    return write_record(path, "nws-task", fields, task=task, codec=codec,
                        header={"arch": arch, "num_classes": num_classes, "pool_fingerprint": pool_fingerprint,
                                "pool_digest": pool_digest, "layers": layers, **(extra or {})})


FIX = "delete it and rerun the same command: the run retrains from that task"
TASK_HEADER = Obj({
    "num_classes": Int(1, MAX_CLASSES), "pool_fingerprint": Str(max_len=128), "pool_digest": Str(max_len=128),
    "layers": List(Obj({"name": Str(max_len=1024), "n": Int(0, MAX_INTS), "K": Int(2, MAX_POOL_SIZE)}),
                   max_len=1 << 14),
})


def read_nws_task(path, expect: dict[str, tuple[int, int]] | None = None
                  ) -> tuple[dict, dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """(header, decoded indices per layer, the other state entries) of a task artifact. ``expect``:
    the model's ``{layer: (number of indices, K)}``; the header must match it before anything is
    decoded (otherwise at most ``record.MAX_INTS`` indices per layer are allocated)."""
    rec = read_record(path, "nws-task")
    return _decode(rec, check(rec.header, TASK_HEADER, str(path), FIX), expect)


def _decode(rec, header: dict, expect: dict[str, tuple[int, int]] | None):
    path = rec.path
    if expect is not None:
        have = {lay["name"]: (lay["n"], lay["K"]) for lay in header["layers"]}
        if set(have) != set(expect):
            raise ArtifactError(f"{path}: layers {sorted(set(have) ^ set(expect))[:5]} differ from the model; {FIX}")
        for name, (n, K) in have.items():
            if (n, K) != expect[name]:
                raise ArtifactError(f"{path}: layer {name!r} declares {n} indices into a pool of {K}, the model "
                                    f"has {expect[name][0]} kernels and pools of {expect[name][1]}; {FIX}")
    indices = {layer["name"]: rec.ints(f"idx/{layer['name']}", layer["n"], layer["K"])
               for layer in header["layers"]}
    return header, indices, rec.state


def load_nws_task(path, build: Callable[[int], nn.Module], pool_fingerprint: str, pool_digest: str,
                  into: nn.Module | None = None) -> nn.Module:
    """Rebuild a task's model. ``build(num_classes)`` returns the NWS skeleton with the run's pools.

    ``into``: a resident model built by the same ``build`` (any task's); when its head has the
    task's size, the task's indices and state are loaded into it in place (a task switch)
    instead of building a new skeleton. Every value of the model is overwritten either way.
    """
    rec = read_record(path, "nws-task")
    header = check(rec.header, TASK_HEADER, str(path), FIX)
    if header["pool_fingerprint"] != pool_fingerprint or header["pool_digest"] != pool_digest:
        raise ArtifactError(f"{path}: written against other pools (fingerprint "
                            f"{header['pool_fingerprint']}, digest {header['pool_digest'][:12]}) than "
                            f"the run's pool file ({pool_fingerprint}, {pool_digest[:12]})")
    if into is not None and get_head(into).out_features == header["num_classes"]:
        model = into
    else:
        with skip_weight_init():  # every value is loaded below; drawing random inits only costs time
            model = build(header["num_classes"])
    layers = dict(nws_layers(model))
    _, indices, state = _decode(rec, header, {name: (m.num_vectors, m.pool_size) for name, m in layers.items()})
    for name, idx in indices.items():
        m = layers[name]
        if idx.size != m.num_vectors:
            raise ArtifactError(f"{path}: layer {name!r} has {idx.size} indices, the model needs {m.num_vectors}; {FIX}")
        if idx.size and (int(idx.max()) >= m.pool_size or int(idx.min()) < 0):
            raise ArtifactError(f"{path}: layer {name!r} has index {int(idx.max())} outside its pool of "
                                f"{m.pool_size} vectors; {FIX}")
        m.indices.copy_(torch.from_numpy(idx))
        m.load_rebuilt_into_weight()
    missing = set(model.state_dict()) - _nws_owned_keys(model) - set(state)
    if missing:
        raise ArtifactError(f"{path}: missing state entries {sorted(missing)[:5]}")
    unexpected = set(state) - set(model.state_dict())
    if unexpected:  # e.g. a multi-head model's heads the skeleton lacks: never dropped silently
        raise ArtifactError(f"{path}: the file holds state entries the model lacks: {sorted(unexpected)[:5]}; "
                            f"build the skeleton with every module the task had (e.g. all its heads)")
    model.load_state_dict(state, strict=False)
    return model.eval()
