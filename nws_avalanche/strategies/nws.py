"""The ``NWS`` strategy: a ``TaskIncrementalStrategy`` driven by ``NWSPlugin``.

Tasks are rebuilt from the run's ``artifacts/pools.nwsp`` (checksummed, and tied to every task
file by its digest), the very file counted in memory, not from the cache the run trained with.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..common.errors import ConfigError
from ..method.layers import nws_layers
from ..method.nwsify import make_nws_layer, nwsify
from ..method.plugin import INITS, NWSPlugin, random_head
from ..method.search import DEFAULT_SEARCH, SEARCHES
from ..method.task_artifact import load_nws_task, read_nws_task, save_nws_task
from ..nets.models import build_arch, get_head, head_name, set_head
from ..pools.pool_set import PoolSet
from ..storage import paper_memory as paper
from ..storage.codecs import CODECS, DEFAULT_CODEC
from .methods import METHODS
from .task_incremental import TaskIncrementalStrategy, state_copy


@dataclass
class NWSOptions:
    init: str = "previous"       # previous | pretrained | random
    codec: str = DEFAULT_CODEC   # how indices are stored (see nws_avalanche.storage.codecs)
    include_head: bool = True    # the classifier as a 1x1 NWS conv, as in the paper
    search: str = DEFAULT_SEARCH  # nearest-vector search implementation (nws_avalanche.method.search)

    def __post_init__(self):  # checked by the runner before anything is written
        for key, allowed in (("init", INITS), ("codec", CODECS.names()), ("search", SEARCHES.names())):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"nws.{key} must be one of {', '.join(allowed)} (got {getattr(self, key)!r})")


@METHODS.register("nws")
class NWS(TaskIncrementalStrategy):
    name = "nws"
    Options = NWSOptions
    needs_pools = True
    checkpoint_attrs = ("plugin.tasks_seen", "last_indices")

    def __init__(self, *, model, optimizer, criterion=None, pools, beta: float = 0.5,
                 options: NWSOptions | None = None, pretrained_state=None, seed: int = 0, plugins=(), **kw):
        """``pools``: a ``PoolSet``; ``model``: the plain network (converted here)."""
        opts = options or NWSOptions()
        self.search_factory = SEARCHES.get(opts.search)
        self.pools = pools
        pretrained_state = pretrained_state if pretrained_state is not None else state_copy(model)
        nwsify(model, self.pools.tables, opts.include_head, group_sizes=self.pools.group_sizes,
               search_factory=self.search_factory)
        self.plugin = NWSPlugin(beta=beta, init=opts.init, pretrained_state=pretrained_state,
                                include_head=opts.include_head, search_factory=self.search_factory, seed=seed)
        super().__init__(model=model, optimizer=optimizer, criterion=criterion, plugins=[self.plugin, *plugins],
                         options=opts, pretrained_state=pretrained_state, seed=seed, task_eval=self.plugin,
                         pools=pools, **kw)
        self.last_indices = self._indices()  # the pretrained network's: what task 0 is compared with

    def prepare_task(self, t, num_classes):
        if t == 0:
            return
        head = get_head(self.model)
        # carried over: the previous task's rebuilt head (init=random has just re-drawn it, as the
        # authors' initial_conv does); init=pretrained restarts from the pretrained head
        carried = None if self.opts.init == "pretrained" else head
        fresh = self.cfg.head_init == "fresh" and self.opts.init != "previous"
        if carried is not None and not fresh and head.weight.shape[0] == num_classes:
            return
        if self.opts.init == "random" and self.opts.include_head and not fresh:
            new = random_head(head.weight.reshape(head.weight.shape[0], -1).shape[1], num_classes, self.cfg.seed + t)
        else:
            new = self.task_head(t, num_classes, carried)
        if self.opts.include_head:
            new = make_nws_layer(new, self.pools.tables[self._head_name()], search_factory=self.search_factory)
        set_head(self.model, new)

    def _head_name(self) -> str:
        return head_name(self.model)

    def skeleton(self, num_classes: int, pools: PoolSet | None = None) -> nn.Module:
        pools = pools or self.pools
        m = build_arch(self.cfg.arch, num_classes, self.assets.in_channels)
        return nwsify(m, pools.tables, self.opts.include_head, group_sizes=pools.group_sizes,
                      search_factory=self.search_factory, search_now=False)

    def export_task(self, t, directory):
        path = self.task_file(directory, t, "nwst")
        save_nws_task(path, self.model, task=t, arch=self.cfg.arch, num_classes=self.task_classes[t],
                      pool_fingerprint=self.pools.fingerprint, pool_digest=self.pools.digest, codec=self.opts.codec)
        return [path]

    def rebuild_task(self, t, directory):
        # the pool file in artifacts/ (checksummed), not the cache the run trained with: what is stored is tested
        pools = artifact_pools(Path(directory) / "pools.nwsp")
        return load_nws_task(self.task_file(directory, t, "nwst"), lambda n: self.skeleton(n, pools),
                             pools.fingerprint, pools.digest)

    def restore_from_files(self, t, directory):
        # Every later task starts from task t's indices (init=previous), or overwrites the kernels
        # (pretrained/random); BatchNorm and the head come from its file, the searches restart.
        if t > 0:
            self.prepare_task(t, self.task_classes[t])
        self.model.load_state_dict(self.rebuild_task(t, directory).state_dict())
        self.plugin.tasks_seen = t + 1
        self.last_indices = self._indices()  # what task t + 1's index changes are counted against

    def assist_files(self, directory):
        return [Path(directory) / "pools.nwsp"]

    def _indices(self) -> dict:
        return {name: m.indices.detach().cpu().to(torch.int32).clone() for name, m in nws_layers(self.model)}

    def paper_bytes(self, t, directory) -> int:
        """The authors' files: indices as int16 + LZMA, BatchNorm as pickled modules (+ any other state)."""
        _, indices, state = read_nws_task(self.task_file(directory, t, "nwst"))
        return paper.lzma_int16_bytes(list(indices.values())) + paper.bn_and_rest_bytes(state)

    def paper_assist_bytes(self, directory) -> int:
        """The authors' pool file: every layer's pool with its EMA buffers, pickled."""
        from ..pools.pool_set import PoolSet

        return paper.pools_with_ema_bytes(PoolSet.load(Path(directory) / "pools.nwsp").tables)

    def task_summary(self, t):
        counts = {name: np.bincount(m.indices.cpu().numpy(), minlength=m.pool_size).tolist()
                  for name, m in nws_layers(self.model)}
        now = self._indices()
        layers = {}
        for name, idx in now.items():
            prev = self.last_indices.get(name)
            if prev is not None and prev.shape == idx.shape:  # a head of another size: not comparable
                changed = int((prev != idx).sum())
                layers[name] = {"changed": changed, "share": changed / max(idx.numel(), 1)}
        self.last_indices = now
        changed = sum(v["changed"] for v in layers.values())
        total = sum(now[n].numel() for n in layers)
        return {"selection_counts": counts,
                "index_changes": {"against": "pretrained" if t == 0 else f"task {t - 1}", "layers": layers,
                                  "changed": changed, "share": changed / max(total, 1)}}


_POOLS_READ: dict = {}


def artifact_pools(path: Path) -> PoolSet:
    """``PoolSet.load(path)``, read again only when the file changed (evaluation rebuilds many models)."""
    st = Path(path).stat() if Path(path).is_file() else None
    key = (str(path), st and (st.st_mtime_ns, st.st_size, st.st_ino))
    if st is None or key not in _POOLS_READ:
        pools = PoolSet.load(path)  # raises naming the file when missing or corrupted
        _POOLS_READ.clear()
        _POOLS_READ[key] = pools
    return _POOLS_READ[key]
