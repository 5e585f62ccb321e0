"""The paper's memory accounting, computed from what a run stores (the second memory column).

Our files store every integer payload with one entropy codec and every float raw (``codecs``,
``container``). The NWS paper's numbers come from the authors' own files instead
(JianJiangKCL/NeuralWeightSearch ``main.py``, ``models/NWS.py``, ``models/quantizer.py``,
``visualization/calculate_memory.py``), which this module reproduces byte for byte in form:

- integer codes (NWS indices, AQD integer weights): all layers flattened as int16, then
  ``lzma.compress`` written through ``lzma.open`` (so compressed twice, as ``save_model_codes``);
- masks (KSM kernel masks, PackNet/CPG owner ids): one uint8 per element, ``torch.save``-d;
- BatchNorm: a list of ``nn.BatchNorm2d`` modules, ``torch.save``-d (pickled modules);
- kernel pools: one ``Quantize``-like module per layer with the EMA buffers the authors keep
  (``embed``, ``embed_avg``, ``acum_embed_sum`` of ``d x K``, ``cluster_size``,
  ``acum_embed_onehot_sum`` of ``K``): about 3x the pool itself;
- any other float tensors (heads, backbones, step sizes): a ``torch.save``-d state dict.

Everything is serialised into memory only (nothing here writes or reads a pickle file).
"""
from __future__ import annotations

import io
import lzma

import numpy as np
import torch
import torch.nn as nn


def lzma_int16_bytes(codes: list[np.ndarray]) -> int:
    """Size of the authors' code file: the layers' codes flattened, int16, LZMA-compressed twice."""
    flat = np.concatenate([np.asarray(c).reshape(-1) for c in codes]) if codes else np.zeros(0)
    return len(lzma.compress(lzma.compress(flat.astype(np.int16).tobytes())))


def torch_save_bytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def uint8_masks_bytes(masks: dict[str, np.ndarray]) -> int:
    """A dict of masks saved as uint8 tensors (KSM's per-kernel masks, CPG's ``masks``)."""
    return torch_save_bytes({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.uint8)) for k, v in masks.items()})


def batchnorm_prefixes(state: dict[str, torch.Tensor]) -> list[str]:
    """Module prefixes of the BatchNorm entries in a flat state dict (those with running statistics)."""
    return [k[: -len("running_mean")] for k in state if k.endswith("running_mean")]


def split_batchnorm(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(BatchNorm entries, everything else) of a flat state dict."""
    prefixes = tuple(batchnorm_prefixes(state))
    bn = {k: v for k, v in state.items() if prefixes and k.startswith(prefixes)}
    return bn, {k: v for k, v in state.items() if k not in bn}


def pickled_batchnorm_bytes(state: dict[str, torch.Tensor]) -> int:
    """The authors' ``task<t>_bns.pt``: the BatchNorm layers as a pickled list of modules."""
    modules = []
    for prefix in batchnorm_prefixes(state):
        c = state[prefix + "running_mean"].numel()
        bn = nn.BatchNorm2d(c)
        bn.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=False)
        modules.append(bn)
    return torch_save_bytes(modules) if modules else 0


class _PaperQuantize(nn.Module):
    """Stand-in for the authors' ``Quantize``: the pool plus the EMA buffers their file keeps."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        K, d = table.shape
        self.dim, self.n_embed, self.decay, self.eps = d, K, 0.99, 1e-5
        embed = table.detach().cpu().float().t().contiguous()
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.zeros(K))
        self.register_buffer("embed_avg", embed.clone())
        self.register_buffer("acum_embed_sum", torch.zeros_like(embed))
        self.register_buffer("acum_embed_onehot_sum", torch.zeros(K))


def pools_with_ema_bytes(tables: dict[str, torch.Tensor]) -> int:
    """The authors' ``shared_kernel_pools.pt``: a pickled list of Quantize modules in layer order."""
    return torch_save_bytes([_PaperQuantize(t) for t in tables.values()])


def float_state_bytes(state: dict[str, torch.Tensor]) -> int:
    """Other float tensors as one ``torch.save``-d state dict (0 when there are none)."""
    return torch_save_bytes({k: v.detach().cpu() for k, v in state.items()}) if state else 0


def bn_and_rest_bytes(state: dict[str, torch.Tensor]) -> int:
    """A task's float state the paper's way: pickled BatchNorm modules + the rest as a state dict."""
    bn, rest = split_batchnorm(state)
    return pickled_batchnorm_bytes(bn) + float_state_bytes(rest)
