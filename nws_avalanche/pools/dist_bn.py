"""BatchNorm over the global batch of a distributed run, also on CPU (gloo).

torch's ``SyncBatchNorm`` only runs on accelerators; ``DistBatchNorm2d`` computes the batch mean
and variance over all ranks with differentiable all-reduces, so a run on N processes normalises
exactly as one process on the global batch would (up to float summation order). Same parameters
and buffers as ``nn.BatchNorm2d``, so state_dicts are interchangeable.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        dist.all_reduce(g)
        return g


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(x)


class DistBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        C = x.shape[1]
        count = all_reduce(torch.tensor([x.numel() / C], dtype=torch.float32, device=x.device))
        mean = all_reduce(x.float().sum((0, 2, 3))) / count
        centred = x.float() - mean[None, :, None, None]
        var = all_reduce(centred.pow(2).sum((0, 2, 3))) / count  # biased, as BatchNorm normalises
        with torch.no_grad():
            if self.track_running_stats:
                self.num_batches_tracked.add_(1)
                mom = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - mom).add_(mean.detach(), alpha=mom)
                unbiased = var.detach() * count / (count - 1).clamp(min=1)
                self.running_var.mul_(1 - mom).add_(unbiased, alpha=mom)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """Global-batch BatchNorm for a distributed run: torch's SyncBatchNorm on GPU, ours on CPU."""
    if device_type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, m in list(model.named_modules()):
        if type(m) is nn.BatchNorm2d:
            new = DistBatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            new.load_state_dict(m.state_dict())
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model
