"""Measurements behind ``nws-bench perf``: NWS training and storage cost against plain training.

Everything is measured in one process on one machine: the plain network and its NWS version
share initial weights, data and optimiser settings. Times are medians after warm-up, both wall
clock and process CPU time (the CPU time is the steadier figure on a shared machine).
"""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.tool_settings import PerfConfig
from ..method.layers import commitment_loss, nws_layers
from ..method.nwsify import nwsify
from ..method.search import SEARCHES, exact_rows
from ..method.task_artifact import load_nws_task, save_nws_task
from ..nets.models import build_arch, head_name
from ..pools.pool_set import PoolSet, layer_specs, layer_vectors
from .breakdown import summarise, timers
from ..storage.codecs import CODECS, order0_entropy_bits
from ..storage.container import read_container


class _TimedSearch:
    """Wraps a searcher and accumulates the time spent in it."""

    def __init__(self, inner, clock):
        self.inner, self.clock, self.total = inner, clock, 0.0

    def __call__(self, w):
        t = self.clock()
        out = self.inner(w)
        self.total += self.clock() - t
        return out

    def reset(self):
        self.inner.reset()

    def __getattr__(self, name):  # the searcher's counters (``calls``, ``changed``, ...)
        return getattr(self.inner, name)


def sample_pools(model: nn.Module, K: int, seed: int) -> dict[str, torch.Tensor]:
    """Pools drawn from the network's own (random-init) kernels: K distinct rows per layer."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for s in layer_specs(model):
        v = layer_vectors(model.get_submodule(s["name"]), s["group_size"]).float()
        pick = torch.randperm(v.shape[0], generator=gen)[:K]
        pool = v[pick]
        if pool.shape[0] < K:  # fewer kernels than K: pad with Gaussian draws
            extra = torch.randn(K - pool.shape[0], v.shape[1], generator=gen) * v.std().clamp_min(1e-3)
            pool = torch.cat([pool, extra])
        out[s["name"]] = pool.contiguous()
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(xs):
    return float(statistics.median(xs)) if xs else float("nan")


class _Trainer:
    """One model's SGD steps on a fixed batch; ``step()`` returns (wall s, CPU s, search s, rows)."""

    def __init__(self, model, x, y, lr, beta, nws: bool, device, searches=None):
        self.model, self.x, self.y, self.beta, self.nws, self.device = model, x, y, beta, nws, device
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        self.searches = searches or []
        model.train()

    def step(self):
        for s in self.searches:
            s.total = 0.0
        _sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(self.model(self.x), self.y)
        if self.nws and self.beta:
            loss = loss + self.beta * commitment_loss(self.model)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        _sync(self.device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        # vectors whose candidates were re-scored / that were searched again, this step
        rows = (sum(getattr(s.inner, "last_rescored", 0) for s in self.searches),
                sum(getattr(s.inner, "last_searched", 0) for s in self.searches))
        return wall, cpu, sum(s.total for s in self.searches), rows

    def timed_step(self, clock) -> float:
        """One step with its commitment sum and optimiser timed into ``clock``; its CPU seconds."""
        _sync(self.device)
        c0 = time.process_time()
        loss = F.cross_entropy(self.model(self.x), self.y)
        if self.nws and self.beta:
            t = time.process_time()
            loss = loss + self.beta * commitment_loss(self.model)
            clock.parts["straight_through"] += time.process_time() - t
        t = time.process_time()
        self.opt.zero_grad(set_to_none=True)
        opt_s = time.process_time() - t
        loss.backward()
        t = time.process_time()
        self.opt.step()
        _sync(self.device)
        clock.parts["optimiser"] += opt_s + time.process_time() - t
        return time.process_time() - c0


def step_breakdown(plain: _Trainer, nws: _Trainer, steps: int) -> dict:
    """Each part's CPU time per step (``breakdown.PARTS``), plain and NWS steps alternating."""
    with timers(plain.model) as cp, timers(nws.model) as cn:
        tp = tn = 0.0
        for _ in range(steps):
            tp += plain.timed_step(cp)
            tn += nws.timed_step(cn)
    return {"steps": steps, "plain": summarise(cp, tp, steps), "nws": summarise(cn, tn, steps)}


def _paired_steps(plain: _Trainer, nws: _Trainer, steps: int, warmup: int) -> dict:
    """Plain and NWS steps alternate, so that a change in the machine's speed (other tenants,
    clock) hits both alike; the ratio is the median over pairs, beside the ratio of medians."""
    pairs = [(plain.step(), nws.step()) for _ in range(warmup + steps)][warmup:]
    p_wall, p_cpu = [p[0] for p, _ in pairs], [p[1] for p, _ in pairs]
    n_wall, n_cpu = [n[0] for _, n in pairs], [n[1] for _, n in pairs]
    return {"plain_step_s": {"wall": _median(p_wall), "cpu": _median(p_cpu)},
            "nws_step_s": {"wall": _median(n_wall), "cpu": _median(n_cpu)},
            "step_ratio": {"wall": _median(n_wall) / _median(p_wall), "cpu": _median(n_cpu) / _median(p_cpu),
                           "wall_paired": _median([n / p for p, n in zip(p_wall, n_wall)])},
            "search_share": _median([n[2] / n[0] for _, n in pairs]),
            "rescored_per_step": _median([n[3][0] for _, n in pairs]),
            "searched_per_step": _median([n[3][1] for _, n in pairs])}


def _brute_force(w, pool, chunk=8192):
    return torch.cat([exact_rows(w[s: s + chunk], pool) for s in range(0, w.shape[0], chunk)])


def check_exactness(model, x, y, steps, lr, beta) -> dict:
    """Real training at a high LR; after every forward, each layer's indices vs float64 brute force."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    mismatches, changed = 0, 0
    prev = {n: m.indices.clone() for n, m in nws_layers(model)}
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y) + beta * commitment_loss(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for n, m in nws_layers(model):  # weights are those the forward searched (no step yet)
            ref = _brute_force(m.vectors().detach().cpu(), m.pool.cpu())
            mismatches += int((m.indices.cpu() != ref).sum())
            changed += int((m.indices != prev[n]).sum())
            prev[n] = m.indices.clone()
        opt.step()
    return {"steps": steps, "lr": lr, "kernels_checked_per_step": sum(m.num_vectors for _, m in nws_layers(model)),
            "mismatches": mismatches, "index_changes": changed}


@torch.no_grad()
def _eval_throughput(models, x, batches, device) -> list[float]:
    """Images/s of each model, batches interleaved so that machine load hits them alike."""
    for m in models:
        m.eval()
        m(x)
    times = [[] for _ in models]
    for _ in range(batches):
        for i, m in enumerate(models):
            _sync(device)
            t = time.perf_counter()
            m(x)
            _sync(device)
            times[i].append(time.perf_counter() - t)
    return [x.shape[0] / _median(ts) for ts in times]


def _artifact_split(path: Path, model: nn.Module) -> dict:
    header, blobs = read_container(path)
    bn_prefixes = tuple(n + "." for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    head = head_name(model) + "."
    split = {"codes": 0, "bn": 0, "head": 0, "other_state": 0}
    for name, data in blobs.items():
        if name.startswith("idx/"):
            split["codes"] += len(data)
        elif name.startswith("state/"):
            key = name[len("state/"):]
            part = "bn" if key.startswith(bn_prefixes) else "head" if key.startswith(head) else "other_state"
            split[part] += len(data)
    total = path.stat().st_size
    split["header"] = total - sum(len(d) for d in blobs.values())
    split["total"] = total
    return split


def _code_stats(path: Path, model: nn.Module, codec: str) -> dict:
    header, blobs = read_container(path)
    layers, tot_bits, tot_h, tot_n = [], 0, 0.0, 0
    for name, m in nws_layers(model):
        data = blobs[f"idx/{name}"]
        idx = m.indices.cpu().numpy()
        h = order0_entropy_bits(idx, m.pool_size)
        row = {"layer": name, "n": int(idx.size), "K": m.pool_size, "bytes": len(data),
               "bits_per_index": 8 * len(data) / max(idx.size, 1), "entropy_bits_per_index": h / max(idx.size, 1)}
        split = getattr(CODECS.get(codec), "split", None)
        if split is not None:
            parts = split(data, m.pool_size)
            row.update(table_bytes=parts["table"], stream_bits_per_index=8 * parts["stream"] / max(idx.size, 1),
                       mode=parts["mode"])
        row["overhead_vs_entropy"] = (8 * len(data) / h - 1) if h > 0 else None
        layers.append(row)
        tot_bits += 8 * len(data)
        tot_h += h
        tot_n += idx.size
    return {"codec": codec, "layers": layers, "total": {
        "n": tot_n, "bytes": tot_bits // 8, "bits_per_index": tot_bits / max(tot_n, 1),
        "entropy_bits_per_index": tot_h / max(tot_n, 1),
        "overhead_vs_entropy": (tot_bits / tot_h - 1) if tot_h > 0 else None}}


def measure(cfg: PerfConfig, device: str = "cpu", large: bool = False) -> dict:
    """All figures for one device (and one image size)."""
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    plain = build_arch(cfg.arch, cfg.num_classes, cfg.in_channels)
    tables = sample_pools(plain, cfg.pool_size, cfg.seed)
    nws = copy.deepcopy(plain)
    clock = time.perf_counter
    searches: list[_TimedSearch] = []
    base = SEARCHES.get(cfg.search)

    def factory(pool):
        s = _TimedSearch(base(pool), clock)
        searches.append(s)
        return s

    nwsify(nws, tables, True, search_factory=factory)
    plain.to(dev)
    nws.to(dev)
    for _, m in nws_layers(nws):  # pools moved with the module: searchers follow
        m.reset_search()
    live = [m.search for _, m in nws_layers(nws)]
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.batch_size, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g).to(dev)
    y = torch.randint(cfg.num_classes, (cfg.batch_size,), generator=g).to(dev)
    out = {"device": str(dev), "image_size": cfg.image_size, "batch_size": cfg.batch_size,
           "threads": torch.get_num_threads(), "search": cfg.search,
           "vectors_per_step": sum(m.num_vectors for _, m in nws_layers(nws))}
    trainers = (_Trainer(plain, x, y, cfg.lr, cfg.beta, False, dev),
                _Trainer(nws, x, y, cfg.lr, cfg.beta, True, dev, live))
    out.update(_paired_steps(*trainers, cfg.steps, cfg.warmup))
    # timed apart from the ratio's steps: the timers themselves cost a little
    out["breakdown_cpu_s"] = step_breakdown(*trainers, max(1, min(cfg.steps, 5)))
    if large:
        return out
    out["exactness"] = check_exactness(nws, x, y, cfg.check_steps, cfg.check_lr, cfg.beta)
    for _, m in nws_layers(nws):
        m.assign()
    nws.cpu()
    pools = PoolSet(cfg.arch, layer_specs(build_arch(cfg.arch, cfg.num_classes, cfg.in_channels)), tables)
    fp, digest = pools.fingerprint, pools.digest
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "task000.nwst"
        save_nws_task(path, nws, task=0, arch=cfg.arch, num_classes=cfg.num_classes, pool_fingerprint=fp,
                      pool_digest=digest, codec=cfg.codec)

        def build(num_classes):
            m = build_arch(cfg.arch, num_classes, cfg.in_channels)
            return nwsify(m, tables, True, search_factory=base, search_now=False)

        times = []
        for _ in range(cfg.switch_repeats):
            t = time.perf_counter()
            rebuilt = load_nws_task(path, build, fp, digest)
            times.append(time.perf_counter() - t)
        ref = _eval_state(nws)
        got = rebuilt.state_dict()
        same = set(ref) == set(got) and all(torch.equal(got[k], ref[k]) for k in ref)
        out["task_switch_s"] = {"median": _median(times), "min": min(times), "bit_identical": same}
        # a deployed switch loads a task into the resident network instead of building a new one
        resident = build(cfg.num_classes)
        times = []
        for _ in range(cfg.switch_repeats):
            t = time.perf_counter()
            load_nws_task(path, build, fp, digest, into=resident)
            times.append(time.perf_counter() - t)
        got = resident.state_dict()
        same = set(ref) == set(got) and all(torch.equal(got[k], ref[k]) for k in ref)
        out["task_switch_resident_s"] = {"median": _median(times), "min": min(times), "bit_identical": same}
        out["storage"] = _code_stats(path, nws, cfg.codec)
        out["artifact_bytes"] = _artifact_split(path, nws)
        rebuilt.to(dev)
        plain.to(dev)
        rt, pt = _eval_throughput([rebuilt, plain], x, cfg.eval_batches, dev)
        out["eval_images_per_s"] = {"rebuilt": rt, "plain": pt, "ratio": rt / pt}
    return out


def _eval_state(model) -> dict:
    """The state a rebuild must reproduce: NWS weights are the kernels their indices select."""
    state = dict(model.state_dict())
    for name, layer in nws_layers(model):
        state[f"{name}.weight"] = layer.pool[layer.indices].view_as(layer.weight)
    return state


def config_dict(cfg: PerfConfig) -> dict:
    return asdict(cfg)
