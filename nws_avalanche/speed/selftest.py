"""The device checks behind ``nws-bench selftest``: what a user runs on their own machine before
trusting a long run there. Each check returns ``Row``s (check, figure, holds); ratios are
measured and printed, never judged (a row of figures holds when they were measured).

- search: the exact search on the device against the float64 reference (on the CPU, distances
  from differences, lowest index on ties) on every layer kind at ResNet-18's real sizes, with exact ties and near-ties constructed
  on purpose, over a few simulated training steps;
- step: NWS/plain training-step time and peak-memory ratio, paired in one process;
- amp: under bf16 (and fp16 on CUDA) autocast the search sees float32 weights and answers as in
  float32;
- nccl: two-process pool pretraining gives identical pools on both ranks (needs 2 GPUs).

The short NWS task on the embedded stream lives in ``runner.selftest_task`` (it builds a run).
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..method.layers import NWSConv2d
from ..method.nwsify import nwsify
from ..method.search import DEFAULT_SEARCH, SEARCHES
from ..nets.models import build_arch
from .perf_measure import _paired_steps, _Trainer, sample_pools

POOL_K = 512  # the paper's pool size


@dataclass
class Row:
    check: str
    figure: str
    holds: bool | None  # None: skipped (``skipped`` says why)
    skipped: str = ""
    data: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.holds is None:
            return f"skipped: {self.skipped}"
        return "holds" if self.holds else "does not hold"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def failed_row(check: str, err: BaseException) -> Row:
    """A check that raised: it does not hold, and the row says why (one line)."""
    msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return Row(check, f"raised {type(err).__name__}: {msg}"[:200], False)


# -- search on the device vs the float64 reference --------------------------------------------
def layer_kinds(quick: bool) -> list[tuple[str, int, int]]:
    """(layer, vectors n, d) at ResNet-18's sizes (``quick``: its smaller stages)."""
    if quick:
        return [("conv1 7x7 stem", 64 * 3, 49), ("layer2 3x3 128x128", 128 * 128, 9),
                ("layer2 1x1 shortcut 128x64", 128 * 64, 1), ("layer2 1x1 shortcut gs=4", 128 * 64 // 4, 4),
                ("fc head 512->10", 10 * 512, 1)]
    return [("conv1 7x7 stem", 64 * 3, 49), ("layer4 3x3 512x512", 512 * 512, 9),
            ("layer4 1x1 shortcut 512x256", 512 * 256, 1), ("layer4 1x1 shortcut gs=4", 512 * 256 // 4, 4),
            ("fc head 512->100", 100 * 512, 1)]


def _exact_dist(w: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    # from differences, not cdist's ||w||^2 - 2 w.p + ||p||^2 form: a GEMM may round two equal
    # distances (a duplicated pool row) differently, and the lowest-index rule needs them equal
    return torch.cdist(w.double(), pool.double(), compute_mode="donot_use_mm_for_euclid_dist")


def _reference(w: torch.Tensor, pool: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Float64 distances + ``argmin`` on the CPU (lowest index on ties): ``exact_rows`` with the
    distances taken from differences (the GEMM form breaks exact ties between duplicate rows)."""
    w, pool = w.detach().cpu(), pool.detach().cpu()
    return torch.cat([_exact_dist(w[s: s + chunk], pool).argmin(dim=1) for s in range(0, w.shape[0], chunk)])


def _exact_ties(w: torch.Tensor, pool: torch.Tensor, chunk: int = 16384) -> int:
    """Rows whose two nearest pool rows are at exactly the same float64 distance."""
    p64, n = pool.double(), 0
    for s in range(0, w.shape[0], chunk):
        top2 = _exact_dist(w[s: s + chunk], p64).topk(2, dim=1, largest=False).values
        n += int((top2[:, 0] == top2[:, 1]).sum())
    return n


def _tie_rows(pool: torch.Tensor, count: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact midpoints between pool rows and their nearest other row (exact ties: the pool's
    values are multiples of 2^-12, so the midpoints are exact in float32), and the same midpoints
    moved one step of 2^-24 towards either row (near-ties for float32's GEMM)."""
    p64 = pool.double()
    dist = torch.cdist(p64, p64)
    dist.fill_diagonal_(float("inf"))
    dist[dist == 0] = float("inf")  # duplicate rows are no neighbours
    pick = torch.randint(pool.shape[0], (count,), generator=gen)
    nb = dist[pick].argmin(1)
    a, b = pool[pick], pool[nb]
    mid = (a + b) / 2
    step = torch.sign(b - a) * 2.0 ** -24
    sign = torch.where(torch.rand(count, 1, generator=gen) < 0.5, -1.0, 1.0)
    near = mid + sign * step
    return mid, near


def _layer_case(n: int, d: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaiming-scaled weights [n, d] and a pool [K, d] of K of them rounded to 2^-12, one row
    duplicated (ties between copies go to the lower index)."""
    w = torch.randn(n, d, generator=gen) * 0.03  # about kaiming's std for ResNet-18's 3x3 kernels
    k = min(POOL_K, n)
    pool = w[torch.randperm(n, generator=gen)[:k]].clone()
    if k < POOL_K:
        pool = torch.cat([pool, torch.randn(POOL_K - k, d, generator=gen) * w.std()])
    pool = torch.round(pool * 4096) / 4096
    pool[-1] = pool[3]
    return w, pool


def check_search(device: torch.device, quick: bool, seed: int = 0) -> list[Row]:
    """Per layer kind: the default search on ``device`` over 4 calls (fresh weights; small drift;
    large jumps of 10% of the rows; new ties), each answer compared with the float64 reference."""
    rows = []
    search_cls = SEARCHES.get(DEFAULT_SEARCH)
    for name, n, d in layer_kinds(quick):
        gen = torch.Generator().manual_seed(seed + n + d)
        w, pool = _layer_case(n, d, gen)
        ties = min(n // 4, 4096)
        mid, near = _tie_rows(pool, ties, gen)
        w[:ties // 2] = mid[:ties // 2]
        w[ties // 2: ties] = near[ties // 2:]
        w[ties: ties + 64] = pool[torch.arange(64) % POOL_K]  # exactly on pool rows (a duplicate among them)
        search = search_cls(pool.to(device))
        mismatches, checked, exact_ties = 0, 0, 0
        steps = []
        for step in range(4):
            if step == 1:
                w[ties + 64:] += torch.randn(n - ties - 64, d, generator=gen) * 1e-3 * w.std()
            elif step == 2:
                jump = torch.randperm(n, generator=gen)[: max(n // 10, 1)]
                w[jump] += torch.randn(len(jump), d, generator=gen) * w.std()
            elif step == 3:
                mid, near = _tie_rows(pool, ties, gen)
                w[n - ties: n - ties // 2] = mid[: ties - ties // 2]
                w[n - ties // 2:] = near[: ties // 2]
            got = search(w.to(device)).cpu()
            ref = _reference(w, pool)
            bad = int((got != ref).sum())
            mismatches += bad
            checked += n
            steps.append(bad)
        exact_ties = _exact_ties(w, pool)
        rows.append(Row(f"search = float64 reference: {name} (d={d})",
                        f"{mismatches} mismatches in {checked} answers ({n} vectors x 4 calls, K={POOL_K}; "
                        f"{exact_ties} exact ties at the last call)",
                        mismatches == 0, data={"layer": name, "n": n, "d": d, "K": POOL_K, "mismatches_per_call": steps,
                                               "exact_ties_last_call": exact_ties}))
    return rows


# -- NWS/plain training step: time and peak memory --------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_step_memory(trainer: _Trainer, device: torch.device, steps: int = 2) -> int:
    _sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps):
        trainer.step()
    _sync(device)
    return int(torch.cuda.max_memory_allocated(device))


def check_step(device: torch.device, quick: bool, seed: int = 0) -> list[Row]:
    """ResNet-18 (K=512 pools drawn from its own kernels): paired plain/NWS SGD steps on one
    fixed batch (``perf_measure``), at 32x32 batch 32 and, unless ``quick``, 224x224 batch 32.
    Peak memory: ``torch.cuda.max_memory_allocated`` of each model's steps, the other model off
    the GPU (CUDA only: the CPU allocator has no peak counter)."""
    rows = []
    sizes = [32] if quick else [32, 224]
    # --quick on a CPU: ResNet-18's layout at a quarter of the width (a full one takes seconds a step)
    arch = "resnet18-narrow" if quick and device.type == "cpu" else "resnet18"
    for size in sizes:
        torch.manual_seed(seed)
        plain = build_arch(arch, 100, 3)
        nws = nwsify(copy.deepcopy(plain), sample_pools(plain, POOL_K, seed), True)
        plain.to(device)
        nws.to(device)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(32, 3, size, size, generator=g).to(device)
        y = torch.randint(100, (32,), generator=g).to(device)
        tp = _Trainer(plain, x, y, 0.01, 0.5, False, device)
        tn = _Trainer(nws, x, y, 0.01, 0.5, True, device)
        small_cpu = device.type == "cpu" and (quick or size > 32)
        steps, warmup = (2, 1) if small_cpu else (5, 2)
        r = _paired_steps(tp, tn, steps, warmup)
        ratio = r["step_ratio"]
        ok = all(math.isfinite(v) and v > 0 for v in ratio.values())
        rows.append(Row(f"NWS/plain step time, {arch} {size}x{size} b32",
                        f"x{ratio['wall']:.2f} wall (plain {1e3 * r['plain_step_s']['wall']:.0f} ms, "
                        f"NWS {1e3 * r['nws_step_s']['wall']:.0f} ms), x{ratio['cpu']:.2f} CPU time; "
                        f"median of {steps} paired steps", ok, data=r))
        if device.type == "cuda":
            # one model resident at a time, so each peak is that model's step alone
            nws.cpu()
            peak_plain = _peak_step_memory(tp, device)
            plain.cpu()
            nws.to(device)
            peak_nws = _peak_step_memory(tn, device)
            rows.append(Row(f"NWS/plain peak memory, {arch} {size}x{size} b32",
                            f"x{peak_nws / peak_plain:.2f} (plain {peak_plain / 2**20:.0f} MiB, "
                            f"NWS {peak_nws / 2**20:.0f} MiB; torch.cuda.max_memory_allocated)", True,
                            data={"plain_bytes": peak_plain, "nws_bytes": peak_nws}))
        else:
            rows.append(Row(f"NWS/plain peak memory, {arch} {size}x{size} b32", "-", None,
                            "the CPU allocator keeps no peak counter (measured on CUDA only)"))
        del plain, nws, tp, tn
    return rows


# -- mixed precision -------------------------------------------------------------------------
class _Recorder:
    """Wraps a searcher and records the dtype it is given and whether autocast was on inside."""

    def __init__(self, pool):
        self.inner = SEARCHES.get(DEFAULT_SEARCH)(pool)
        self.pool = self.inner.pool
        self.seen: list[tuple[torch.dtype, bool]] = []

    def __call__(self, w):
        self.seen.append((w.dtype, torch.is_autocast_enabled(w.device.type)))
        return self.inner(w)

    def __getattr__(self, name):  # the searcher's counters; never ``inner`` itself (copies)
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def check_amp(device: torch.device, quick: bool, seed: int = 0) -> list[Row]:
    """An NWS conv of ResNet-18's layer3 (256x256 3x3, K=512) in training mode: a forward under
    autocast gives the same indices as in float32 and as the float64 reference; its search was
    handed float32 weights with autocast off; the commitment stays float32 while the convolution
    runs in the low precision. For scale, how many answers a GEMM in that precision would change."""
    rows = []
    c = 128 if quick else 256
    for dtype in (torch.bfloat16, torch.float16):
        label = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        check = f"{label} autocast: search in float32, same indices"
        if dtype == torch.float16 and device.type != "cuda":
            rows.append(Row(check, "-", None, "fp16 autocast is run on CUDA only"))
            continue
        torch.manual_seed(seed)
        conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        kernels = conv.weight.detach().reshape(-1, 9)
        pool = kernels[torch.randperm(kernels.shape[0], generator=torch.Generator().manual_seed(seed))[:POOL_K]]
        layer = NWSConv2d(c, c, 3, pool, padding=1, search_factory=_Recorder).to(device)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
        ref_layer = copy.deepcopy(layer).train()
        layer.train()
        x = torch.randn(4, c, 8, 8, generator=torch.Generator().manual_seed(seed)).to(device)
        with torch.autocast(device.type, dtype=dtype):
            out = layer(x)
        ref_layer(x)
        got, f32 = layer.indices.cpu(), ref_layer.indices.cpu()
        ref = _reference(layer.vectors(), pool)
        dtype_in, autocast_inside = layer.search.seen[-1]
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
            w = layer.vectors().detach()
            p = layer.pool
            low = torch.addmm((p * p).sum(1).unsqueeze(0), w, p.t(), beta=1.0, alpha=-2.0).argmin(1).cpu()
        low_diff = int((low != ref).sum())
        diff32, diff64 = int((got != f32).sum()), int((got != ref).sum())
        ok = (diff32 == 0 and diff64 == 0 and dtype_in == torch.float32 and not autocast_inside
              and out.dtype == dtype and layer.commitment.dtype == torch.float32)
        rows.append(Row(check, f"{diff32} of {got.numel()} indices differ from float32, {diff64} from float64; "
                               f"search got {str(dtype_in).replace('torch.', '')} with autocast "
                               f"{'on' if autocast_inside else 'off'}; conv out {str(out.dtype).replace('torch.', '')}, "
                               f"commitment {str(layer.commitment.dtype).replace('torch.', '')} "
                               f"(a {label} GEMM would change {low_diff})", ok,
                        data={"differ_float32": diff32, "differ_float64": diff64, "low_precision_gemm_differs": low_diff}))
    return rows


# -- two-process nccl pool pretraining --------------------------------------------------------
def _image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 12) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(0)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray((rng.rand(size, size, 3) * 90 + c * 70).astype("uint8")).save(d / f"{i}.png")
    return root


def _nccl_worker(rank: int, world: int, port: int, cfg, out_dir: str) -> None:
    from ..pools.pretrain import pretrain

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    summary = pretrain(cfg)
    torch.save({k: v.cpu() for k, v in summary["pools"].items()}, os.path.join(out_dir, f"pools-rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def check_nccl(device: torch.device) -> list[Row]:
    check = "2-process nccl pool pretraining: same pools on both ranks"
    n = torch.cuda.device_count() if device.type == "cuda" else 0
    if n < 2:
        return [Row(check, "-", None, "needs 2 GPUs")]
    import socket

    import torch.multiprocessing as mp

    from ..pools.pretrain import PretrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = _image_folder(tmp / "imgs")
        cfg = PretrainConfig(data=str(data), out=str(tmp / "out"), arch="resnet-tiny", epochs=2, batch_size=8,
                             pool_size=8, image_size=12, augment=False, workers=0, device="cuda", progress=False,
                             lr=0.05)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_nccl_worker, args=(2, port, cfg, str(tmp)), nprocs=2, join=True, start_method="spawn")
        r0, r1 = (torch.load(tmp / f"pools-rank{r}.pt") for r in (0, 1))
    differ = sorted(k for k in r0 if not torch.equal(r0[k], r1.get(k, torch.empty(0))))
    return [Row(check, f"{len(differ)} of {len(r0)} layers' pools differ between ranks", not differ and set(r0) == set(r1),
                data={"differ": differ})]


CHECKS = {"search": check_search, "step": check_step, "amp": check_amp}
