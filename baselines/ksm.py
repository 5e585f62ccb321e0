"""KSM: Kernel-wise Soft Mask (Yang, He, Zhang & Fan, CVPR 2021), from the paper's description.

The pretrained backbone ``W`` is frozen and shared. Task ``t`` learns, for every conv and
every kernel (one ``(out, in)`` pair, shared by its ``kh x kw`` taps), a real-valued mask
``m`` (init ``mask_init`` = 1e-2) and a real-valued scaling ``s`` (init ``scale_init`` = 0):

    p   = sigmoid(m)                                    (logistic)
    B   = softmax([log p, log(1 - p)] / tau)[0]         (softmax trick, no straight-through;
                                                         equal to sigmoid(m / tau))
    M_t = B + s                                         (binary part + scaling part)
    W_t = W * M_t[:, :, None, None]

With a small temperature ``tau`` (1e-3) ``B`` is within ``exp(-|m|/tau)`` of 0 or 1, so the
forward pass is binary up to that margin while the gradient ``B (1 - B) / tau`` still reaches
``m``. In eval mode, and in what is stored, ``B = [m > 0]`` exactly (``sigmoid(m/tau) > 1/2``).
The masks train at ``mask_lr`` (2e-4, no weight decay); the per-task BatchNorm and head train
at the run's ``lr``. Each task starts from the pretrained BatchNorm, ``m = mask_init`` and
``s = scale_init``.

Stored: ``ksm.backbone`` once (assist: every frozen conv weight, fp32) and per task
``taskNNN.ksm``: the binary part as 1 bit per kernel, the scaling part as fp32 per kernel,
the task's BatchNorm state and head.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nws_avalanche.artifact import load_state_artifact, save_state_artifact
from nws_avalanche.config import method_options
from nws_avalanche.container import pack_state, read_container, unpack_state, write_container
from nws_avalanche.errors import ArtifactError, ConfigError
from nws_avalanche.methods import METHODS
from nws_avalanche.models import build_arch, set_head
from nws_avalanche.template import TaskIncrementalStrategy, pretrained_with_head

from .surgery import bn_state, layers_of, replace_layers

BACKBONE_FILE = "ksm.backbone"


@dataclass
class KSMOptions:
    mask_lr: float = 2e-4      # learning rate of the masks (appendix)
    mask_init: float = 1e-2    # initial real-valued mask m (appendix)
    scale_init: float = 0.0    # initial scaling part s (M_t starts at the binary part alone)
    temperature: float = 1e-3  # tau of the softmax trick

    def __post_init__(self):  # checked by the runner before anything is written
        if self.temperature <= 0:
            raise ConfigError(f"ksm.temperature must be > 0 (got {self.temperature}); default 1e-3")
        if self.mask_lr <= 0:
            raise ConfigError(f"ksm.mask_lr must be > 0 (got {self.mask_lr}); the appendix uses 2e-4")


def softmax_trick(m: torch.Tensor, tau: float) -> torch.Tensor:
    """Binary part from the real mask: a two-way softmax over log-probabilities at temperature tau."""
    logits = torch.stack([F.logsigmoid(m), F.logsigmoid(-m)], dim=-1) / tau
    return torch.softmax(logits, dim=-1)[..., 0]


class KSMConv2d(nn.Conv2d):
    """A conv with a frozen weight, modulated per kernel by ``B + s``."""

    def __init__(self, conv: nn.Conv2d, tau: float):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        shape = self.weight.shape[:2]
        self.mask_real = nn.Parameter(torch.zeros(shape))
        self.mask_scale = nn.Parameter(torch.zeros(shape))
        self.tau = tau

    def binary(self) -> torch.Tensor:
        if self.training:
            return softmax_trick(self.mask_real, self.tau)
        return (self.mask_real > 0).to(self.weight.dtype)

    def forward(self, x):
        return self._conv_forward(x, masked_weight(self.weight, self.binary(), self.mask_scale), self.bias)


def masked_weight(weight: torch.Tensor, binary: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return weight * (binary + scale)[:, :, None, None]


@METHODS.register("ksm")
class KSM(TaskIncrementalStrategy):
    name = "ksm"
    Options = KSMOptions

    def __init__(self, *, cfg, assets, task_classes, progress=None):
        opts = method_options(cfg, "ksm", KSMOptions)
        model = pretrained_with_head(assets, task_classes[0], cfg.seed, cfg.head_init)
        replace_layers(model, nn.Conv2d, lambda name, conv: KSMConv2d(conv, opts.temperature))
        super().__init__(cfg=cfg, assets=assets, task_classes=task_classes, model=model, options=opts,
                         progress=progress)

    def mask_layers(self) -> list[tuple[str, KSMConv2d]]:
        return list(layers_of(self.model, KSMConv2d))

    def prepare_task(self, t, num_classes):
        with torch.no_grad():
            for _, m in self.mask_layers():
                m.mask_real.fill_(self.opts.mask_init)
                m.mask_scale.fill_(self.opts.scale_init)
        self.model.load_state_dict(bn_state(self.assets.pretrained_state, self.model), strict=False)
        if t > 0:
            set_head(self.model, self.task_head(t, num_classes))  # the pretrained backbone: its head

    def make_optimizer(self, **kwargs):
        masks = [p for _, m in self.mask_layers() for p in (m.mask_real, m.mask_scale)]
        ids = {id(p) for p in masks}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "weight_decay": self.cfg.weight_decay},
                  {"params": masks, "lr": self.opts.mask_lr, "weight_decay": 0.0}]
        if self.cfg.optimizer == "adam":
            self.optimizer = torch.optim.Adam(groups, lr=self.cfg.lr)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum,
                                             nesterov=self.cfg.nesterov and self.cfg.momentum > 0)
        self.optimized_param_id = {}

    # -- storage ----------------------------------------------------------------------------
    def _write_backbone(self, directory: Path) -> Path:
        path = Path(directory) / BACKBONE_FILE
        # Frozen, so every task writes the same bytes: one file, counted once.
        weights = {f"{n}.{k}": v for n, m in self.mask_layers()
                   for k, v in (("weight", m.weight), ("bias", m.bias)) if v is not None}
        metas, blobs = pack_state(weights)
        return write_container(path, {"kind": "ksm-backbone", "format": 1, "arch": self.cfg.arch, "state": metas},
                               blobs)

    def export_task(self, t, directory):
        self._write_backbone(directory)
        masks, layers = {}, []
        for name, m in self.mask_layers():
            bits = (m.mask_real.detach() > 0).cpu().numpy().reshape(-1)
            masks[f"bin/{name}"] = np.packbits(bits.astype(np.uint8), bitorder="little").tobytes()
            layers.append({"name": name, "shape": list(m.mask_real.shape)})
        mask_keys = {f"{n}.{leaf}" for n, _ in self.mask_layers() for leaf in ("weight", "bias", "mask_real")}
        state = {k: v for k, v in self.model.state_dict().items() if k not in mask_keys}
        path = self.task_file(directory, t, "ksm")
        save_state_artifact(path, state, kind="ksm-task", task=t, extra_blobs=masks,
                            header={"arch": self.cfg.arch, "num_classes": self.task_classes[t], "layers": layers})
        return [path]

    def rebuild_task(self, t, directory):
        bheader, bblobs = read_container(Path(directory) / BACKBONE_FILE)
        if bheader.get("kind") != "ksm-backbone":
            raise ArtifactError(f"{directory}/{BACKBONE_FILE}: not a KSM backbone (kind={bheader.get('kind')!r})")
        backbone = unpack_state(bheader["state"], bblobs)
        header, state, blobs = load_state_artifact(self.task_file(directory, t, "ksm"), "ksm-task")
        model = build_arch(header["arch"], header["num_classes"], self.assets.in_channels)
        plain = {}
        for layer in header["layers"]:
            name, shape = layer["name"], layer["shape"]
            n = shape[0] * shape[1]
            raw = np.unpackbits(np.frombuffer(blobs[f"bin/{name}"], dtype=np.uint8), bitorder="little")
            if raw.size < n:
                raise ArtifactError(f"task {t}: binary mask of {name!r} has {raw.size} bits, needs {n}")
            binary = torch.from_numpy(raw[:n].astype(np.float32)).view(shape)
            plain[f"{name}.weight"] = masked_weight(backbone[f"{name}.weight"], binary,
                                                    state.pop(f"{name}.mask_scale"))
            if f"{name}.bias" in backbone:
                plain[f"{name}.bias"] = backbone[f"{name}.bias"]
        plain.update(state)
        try:
            model.load_state_dict(plain)
        except RuntimeError as e:
            raise ArtifactError(f"task {t}: KSM artifact does not fit {header['arch']}: {e}") from None
        return model.eval()

    def assist_files(self, directory):
        return [Path(directory) / BACKBONE_FILE]

    def task_summary(self, t):
        kept = [float((m.mask_real > 0).float().mean()) for _, m in self.mask_layers()]
        return {"kernels_kept": sum(kept) / max(len(kept), 1)}
