"""The NWS layer: a convolution whose kernels are searched in a frozen pool.

Training: the temporary kernels ``weight`` (a Parameter) are cut into vectors of length
``d = group_size * kh * kw``; each vector is replaced by its nearest pool vector and the
gradient goes straight through to ``weight``. ``commitment`` holds the layer's commitment term
from the last forward pass, the mean over *every weight* of the layer (the authors'
``(sg(q) - w).pow(2).mean()``): ``mean_j ||sg(q_j) - w_j||^2 / d``, so every layer weighs the
same whatever its size or kernel length.
Eval: the layer is a plain convolution with weights ``pool[indices]`` (cached).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import cpu_loops
from .search import IncrementalSearch

def float32_search(w: torch.Tensor):
    """Autocast off for the search: under bf16/fp16 autocast its GEMM would run in the low precision
    and its float32 error bounds would not hold (the search stays float32, mixed precision or not)."""
    return torch.autocast(w.device.type, enabled=False)


SearchFactory = Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


class _StraightThrough(torch.autograd.Function):
    """``(w + sg(q - w), mean((sg(q) - w)^2))`` in one node (the mean over every weight).

    Autograd would keep a chain of weight-sized temporaries (difference, square, expanded
    gradients, negation, accumulation); this saves nothing new (``w`` and ``q`` exist anyway)
    and, on CPU, makes one fused pass each way (``cpu_loops``). Forward values and the gradient
    ``g - (c / N) (2 (q - w))`` (``N`` = number of weights) are bit-identical to the unfused expression (scaling by 2 and
    negating are exact); only the commitment *value* is summed in another order.
    """

    @staticmethod
    def forward(ctx, w, q):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w, q)
        if cpu_loops.usable(w, q):
            out, acc = cpu_loops.ste_forward(w, q)
            return out, torch.tensor(acc / w.numel(), dtype=w.dtype)
        diff = torch.sub(q, w)
        flat = diff.view(-1)
        return torch.add(w, diff), torch.dot(flat, flat) / flat.numel()

    @staticmethod
    def backward(ctx, g_out, g_commit):
        if g_commit is None:
            return g_out, None
        w, q = ctx.saved_tensors
        c = g_commit / w.numel()  # as autograd's mean backward: the same float32 division
        if g_out is not None and cpu_loops.usable(w, q, g_out):
            return cpu_loops.ste_backward(w, q, g_out, float(c)), None
        grad = torch.mul(torch.sub(q, w), c * -2)
        return (grad if g_out is None else grad.add_(g_out)), None


class _StraightThroughRows(torch.autograd.Function):
    """``_StraightThrough(w, pool[idx])`` on CPU with ``q`` read from the pool inside the fused
    loops: the same values and gradient bit for bit (and the commitment summed in the same
    order), without building, patching or keeping a weight-sized ``q`` each step."""

    @staticmethod
    def forward(ctx, w, idx, pool):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w, idx, pool)
        if not _rows_path(w, idx, pool):  # (the layer only comes here when it holds: kept total)
            diff = torch.sub(pool[idx], w)
            flat = diff.view(-1)
            return torch.add(w, diff), torch.dot(flat, flat) / flat.numel()
        out, acc = cpu_loops.ste_forward_rows(w, idx, pool)
        return out, torch.tensor(acc / w.numel(), dtype=w.dtype)

    @staticmethod
    def backward(ctx, g_out, g_commit):
        if g_commit is None:
            return g_out, None, None
        w, idx, pool = ctx.saved_tensors
        c = g_commit / w.numel()  # as autograd's mean backward: the same float32 division
        if g_out is not None and cpu_loops.usable(g_out) and _rows_path(w, idx, pool):
            return cpu_loops.ste_backward_rows(w, idx, pool, g_out, float(c)), None, None
        grad = torch.mul(torch.sub(pool[idx], w), c * -2)
        return (grad if g_out is None else grad.add_(g_out)), None, None


def _rows_path(w: torch.Tensor, idx: torch.Tensor, pool: torch.Tensor) -> bool:
    return (cpu_loops.usable(w, pool) and idx.dtype == torch.long and idx.device.type == "cpu"
            and idx.is_contiguous())


class NWSConv2d(nn.Module):
    """Conv2d (no bias by default) whose weight vectors are drawn from ``pool``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, pool: torch.Tensor,
                 stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = False,
                 group_size: int = 1, search_factory: SearchFactory | None = None,
                 padding_mode: str = "zeros"):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        cin = in_channels // groups
        if cin % group_size:
            raise ValueError(f"group_size={group_size} must divide the {cin} input channels per group")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.group_size = group_size
        if padding_mode != "zeros":  # nn.Conv2d's own rule: pad explicitly, then convolve unpadded
            if isinstance(padding, str):
                raise ValueError(f"padding={padding!r} with padding_mode={padding_mode!r}: give the padding as numbers")
            ph, pw = (padding, padding) if isinstance(padding, int) else tuple(padding)
            self._pad = (pw, pw, ph, ph)
        self.padding_mode = padding_mode
        self.d = group_size * kh * kw
        if pool.dim() != 2 or pool.shape[1] != self.d:
            raise ValueError(f"pool must be [K, {self.d}], got {list(pool.shape)}")
        self.weight = nn.Parameter(torch.empty(out_channels, cin, kh, kw))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("pool", pool.detach().clone().float())
        self.register_buffer("indices", torch.zeros(self.num_vectors, dtype=torch.long))
        self._search_factory = search_factory or IncrementalSearch  # exact, and fast
        self.search = self._search_factory(self.pool)
        self.commitment = torch.zeros(())
        self._cache_key = None
        self._cache_w = None
        self._q = self._q_idx = self._q_key = None
        self._q_calls = None

    # -- geometry ---------------------------------------------------------------------------
    @property
    def num_vectors(self) -> int:
        return self.weight.numel() // self.d

    @property
    def pool_size(self) -> int:
        return self.pool.shape[0]

    def vectors(self) -> torch.Tensor:
        return self.weight.reshape(-1, self.d)

    # -- search and rebuild -----------------------------------------------------------------
    @torch.no_grad()
    def assign(self) -> torch.Tensor:
        """Search the current temporary kernels and store the indices."""
        with float32_search(self.weight):
            self.indices.copy_(self.search(self.vectors()))
        return self.indices

    def rebuilt_weight(self) -> torch.Tensor:
        key = (self.indices._version, self.pool._version, id(self.indices))
        if self._cache_key != key or self._cache_w is None:
            self._cache_w = self.pool[self.indices].view_as(self.weight)
            self._cache_key = key
        return self._cache_w

    @torch.no_grad()
    def load_rebuilt_into_weight(self) -> None:
        """Temporary kernels := the kernels the current indices select."""
        # gathered straight into the parameter: no temporary of the layer's size
        torch.index_select(self.pool, 0, self.indices, out=self.weight.view(-1, self.d))

    def reset_search(self) -> None:
        self.search = self._search_factory(self.pool)

    def _conv(self, x, w):
        if self.padding_mode != "zeros":
            return F.conv2d(F.pad(x, self._pad, mode=self.padding_mode), w, self.bias, self.stride, 0,
                            self.dilation, self.groups)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _apply(self, fn, *args, **kwargs):
        # .to(device) makes new pool tensors: the searcher must not keep searching the old one
        out = super()._apply(fn, *args, **kwargs)
        if getattr(self.search, "pool", self.pool) is not self.pool:
            self.reset_search()
            self._q = self._q_key = None
        return out

    def __getstate__(self):
        # deepcopy/pickle after a training step: the commitment of the last forward is still
        # on the autograd graph, which cannot be copied; its value is all a copy needs
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state["commitment"] = state["commitment"].detach()
        return state

    @torch.compiler.disable  # the search (numba kernels, data-dependent updates) runs eagerly
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._conv(x, self.rebuilt_weight())
        w = self.vectors()
        with float32_search(w):
            idx = self.search(w.detach())
        with torch.no_grad():
            self.indices.copy_(idx)
        if _rows_path(w, idx, self.pool):  # CPU: q is read from the pool inside the fused loops
            w_st, self.commitment = _StraightThroughRows.apply(w, idx, self.pool)
        else:
            w_st, self.commitment = _StraightThrough.apply(w, self._quantised(idx))
        return self._conv(x, w_st.view_as(self.weight))

    @torch.no_grad()
    def _quantised(self, idx: torch.Tensor) -> torch.Tensor:
        """``pool[idx]``, updating only the rows whose index changed since the last call."""
        key = (id(self.pool), self.pool._version, self.pool.device, idx.shape)
        calls = (id(self.search), getattr(self.search, "calls", None))
        changed = getattr(self.search, "changed", None)
        if self._q_key != key or self._q is None:
            self._q, self._q_idx, self._q_key = self.pool[idx], idx.clone(), key
            self._q_calls = calls
            return self._q
        if changed is None or calls[1] is None or self._q_calls != (calls[0], calls[1] - 1):
            changed = torch.nonzero(idx != self._q_idx).flatten()  # the searcher cannot tell
        self._q_calls = calls
        if changed.numel():
            rows = idx[changed]
            self._q[changed] = self.pool[rows]
            self._q_idx[changed] = rows
        return self._q

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, K={self.pool_size}, d={self.d}, "
                f"gs={self.group_size}")


class NWSLinear(NWSConv2d):
    """A Linear layer as a 1x1 NWS convolution (the paper's classifier); accepts [N, C] input."""

    def __init__(self, in_features: int, out_features: int, pool: torch.Tensor, bias: bool = False,
                 group_size: int = 1, search_factory: SearchFactory | None = None):
        super().__init__(in_features, out_features, 1, pool, bias=bias, group_size=group_size,
                         search_factory=search_factory)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return super().forward(x[:, :, None, None]).flatten(1)
        # any other shape: nn.Linear's semantics (the last dimension holds the features)
        lead = x.shape[:-1]
        return super().forward(x.reshape(-1, x.shape[-1], 1, 1)).view(*lead, self.out_features)


def nws_layers(model: nn.Module) -> list[tuple[str, NWSConv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, NWSConv2d)]


def commitment_loss(model: nn.Module) -> torch.Tensor:
    """``sum_l mean((sg(q_l) - w_l)^2)`` over the NWS layers, from their last forward pass."""
    # .to: a layer that has not run a forward yet still holds its initial CPU zero
    terms = [m.commitment.to(m.pool.device) for _, m in nws_layers(model)]
    return torch.stack(terms).sum() if terms else torch.zeros(())
