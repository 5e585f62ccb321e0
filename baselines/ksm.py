"""KSM: Kernel-wise Soft Mask (Yang, He, Zhang & Fan, CVPR 2021), as the authors' code computes it.

Reference: GitHub ``LYang-666/CVPR_2021_KSM``, ``src/modnets/layers.py`` (``GroupWiseConv2d``
with ``mask='kernel_wise'``, ``soft=True``, ``_gumbel_sigmoid`` without noise), ``src/main.py``
(optimisers) and ``src/scripts/run.sh`` (settings). The pretrained backbone ``W`` is frozen and
shared. Task ``t`` learns one real value ``m`` per kernel (one ``(out, in)`` pair) of every
conv, stem and shortcuts included, initialised at ``mask_init`` = 1e-2:

    x        = (m - threshold) * beta                     threshold 5e-3, beta 1200
    training: soft = sigmoid(x / temperature)             temperature 100 (slope 12 on m - 5e-3)
              hard = [soft >= 1/2] in the forward pass, gradient of ``soft`` (straight-through)
    eval:     hard = [x >= 0]
    a        = m * (1 - hard), detached (the dropped kernels' m; 0 where kept)
    a[a!=0]  = (a[a!=0] - min(a)) / (max(a) - min(a))     (min/max over the whole layer, zeros included)
    M        = 0.5 * a + hard                              W_t = W * M[:, :, None, None]

so a kept kernel is multiplied by exactly 1 and a dropped one by ``0.5 * minmax(m)`` (no
gradient reaches it). Where the reference would divide 0 by 0 (every kernel dropped with the
same ``m``) the soft part is 0 here instead of NaN. Masks and BatchNorm train with Adam at
``mask_lr`` = 2e-4 and no weight decay (the reference's ``optimizer_masks`` over
``model.shared``); the head keeps the run's common optimiser settings (the NWS paper shares
them across methods; the reference trains it with Adam at 2e-4). The run's LR schedule applies
to both (the paper shares the scheduler too); ``schedule=cosine`` gives both the reference's
per-iteration cosine instead (``utils.step_lr_cos``, epochs counted from 1 as its loop does):
``lr = base * (1 + cos(pi * (i + e * N) / (E * N))) / 2``, ``i`` the iteration in epoch ``e``,
``N`` iterations per epoch, ``E`` the run's epochs (the reference's 30). Each task starts from the
pretrained BatchNorm and ``m = mask_init``, as each reference run starts from the pretrained net.

Stored: ``ksm.backbone`` once (assist: every frozen conv weight, fp32) and per task
``taskNNN.ksm``: per layer the binary part ``hard`` (entropy-coded with the run's integer codec,
alphabet 2) and the multiplier ``M`` of each dropped kernel (fp32, in kernel order): exactly
what rebuilding ``W * M`` needs; plus the task's BatchNorm state and head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from nws_avalanche.common.errors import ArtifactError, ConfigError
from nws_avalanche.nets.models import build_arch, set_head
from nws_avalanche.storage import paper_memory as paper
from nws_avalanche.storage.codecs import CODECS, DEFAULT_CODEC
from nws_avalanche.common.schema import Int, List, Obj, Str
from nws_avalanche.storage.record import CLASSES, F32, Ints, State, read_record, write_record
from nws_avalanche.strategies.methods import METHODS
from nws_avalanche.strategies.task_incremental import TaskIncrementalStrategy, state_copy
from nws_avalanche.strategies.training import build_optimizer

from .chained_optim import ChainedOptimizer
from .surgery import bn_state, layers_of, replace_layers

BACKBONE_FILE = "ksm.backbone"
KSM_TASK = Obj({"arch": Str(), "num_classes": CLASSES,
                "layers": List(Obj({"name": Str(), "shape": List(Int(0, 1 << 24), min_len=2, max_len=4)}))})
SCHEDULES = ("common", "cosine")


@dataclass
class KSMOptions:
    mask_lr: float = 2e-4      # Adam lr of masks and BatchNorm (reference run.sh: LR_MASK)
    mask_init: float = 1e-2    # initial m (reference: --mask_scale 1e-2)
    threshold: float = 5e-3    # kept iff m >= threshold (reference: DEFAULT_THRESHOLD)
    beta: float = 1200.0       # reference: self.Beta
    temperature: float = 100.0  # reference: self.temperature; the straight-through slope is beta / temperature
    codec: str = DEFAULT_CODEC  # how the binary masks are stored (nws_avalanche.storage.codecs)
    schedule: str = "common"    # common: the run's milestones | cosine: the reference's per-iteration cosine

    def __post_init__(self):  # checked by the runner before anything is written
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"ksm.schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        if self.temperature <= 0 or self.beta <= 0:
            raise ConfigError(f"ksm.beta and ksm.temperature must be > 0 (got {self.beta}, {self.temperature}); "
                              f"the reference uses 1200 and 100")
        if self.mask_lr <= 0:
            raise ConfigError(f"ksm.mask_lr must be > 0 (got {self.mask_lr}); the reference uses 2e-4")
        if self.codec not in CODECS:
            raise ConfigError(f"ksm.codec must be one of {', '.join(CODECS.names())} (got {self.codec!r})")


def binary_part(m: torch.Tensor, threshold: float, beta: float, temperature: float, training: bool) -> torch.Tensor:
    """``hard``: 0/1 in value; in training its gradient is that of ``sigmoid(x / temperature)``."""
    x = (m - threshold) * beta
    if not training:
        return (x >= 0).to(m.dtype)
    soft = torch.sigmoid(x / temperature)
    return ((soft >= 0.5).to(m.dtype) - soft).detach() + soft


def soft_part(m: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """``0.5 * minmax(m)`` on dropped kernels, 0 on kept ones; no gradient."""
    a = m.detach() * (1 - hard.detach())
    lo, hi = a.min(), a.max()
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))  # the reference divides 0 by 0 here
    return 0.5 * torch.where(a != 0, (a - lo) / span, a)


def reference_cosine_lr(base: float, epoch: int, iteration: int, num_iter: int, epochs: int) -> float:
    """The reference's ``utils.step_lr_cos``; ``epoch`` counts from 1, as its training loop passes it."""
    return base * (1 + math.cos(math.pi * (iteration + epoch * num_iter) / (epochs * num_iter))) * 0.5


def kernel_multiplier(m: torch.Tensor, opts: KSMOptions, training: bool) -> torch.Tensor:
    hard = binary_part(m, opts.threshold, opts.beta, opts.temperature, training)
    return soft_part(m, hard) + hard


class KSMConv2d(nn.Conv2d):
    """A conv with a frozen weight, multiplied per kernel by the KSM mask ``M(m)``."""

    def __init__(self, conv: nn.Conv2d, opts: KSMOptions):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.mask_real = nn.Parameter(torch.full(self.weight.shape[:2], opts.mask_init))
        self.opts = opts

    def multiplier(self) -> torch.Tensor:
        return kernel_multiplier(self.mask_real, self.opts, self.training)

    def kept(self) -> torch.Tensor:
        """The binary part as the eval forward (and the stored file) has it."""
        return binary_part(self.mask_real.detach(), self.opts.threshold, self.opts.beta, self.opts.temperature,
                           False).bool()

    def forward(self, x):
        return self._conv_forward(x, masked_weight(self.weight, self.multiplier()), self.bias)


def masked_weight(weight: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
    return multiplier.reshape(weight.shape[0], weight.shape[1], 1, 1) * weight


@METHODS.register("ksm")
class KSM(TaskIncrementalStrategy):
    name = "ksm"
    Options = KSMOptions

    def __init__(self, *, model, optimizer, criterion=None, options: KSMOptions | None = None,
                 pretrained_state=None, **kw):
        opts = options or KSMOptions()
        pretrained_state = pretrained_state if pretrained_state is not None else state_copy(model)
        replace_layers(model, nn.Conv2d, lambda name, conv: KSMConv2d(conv, opts))
        super().__init__(model=model, optimizer=optimizer, criterion=criterion, options=opts,
                         pretrained_state=pretrained_state, **kw)

    def mask_layers(self) -> list[tuple[str, KSMConv2d]]:
        return list(layers_of(self.model, KSMConv2d))

    def prepare_task(self, t, num_classes):
        with torch.no_grad():
            for _, m in self.mask_layers():
                m.mask_real.fill_(self.opts.mask_init)
        self.model.load_state_dict(bn_state(self.assets.pretrained_state, self.model), strict=False)
        if t > 0:
            set_head(self.model, self.task_head(t, num_classes))  # the pretrained backbone: its head

    def make_optimizer(self, **kwargs):
        # reference (main.py): Adam(model.shared.parameters(), lr_mask): the masks and BatchNorm
        shared = [m.mask_real for _, m in self.mask_layers()]
        shared += [p for mod in self.model.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)
                   for p in mod.parameters(recurse=False) if p.requires_grad]
        ids = {id(p) for p in shared}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        masks_bn = torch.optim.Adam(shared, lr=self.opts.mask_lr)
        head = build_optimizer(self.cfg, rest) if rest else None
        self.optimizer = ChainedOptimizer([masks_bn, head])
        self.optimized_param_id = {}
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]

    def optimizer_step(self):
        if self.opts.schedule == "cosine":  # overrides the epoch schedule's lr at every step
            epoch, i = self.clock.train_exp_epochs + 1, self.clock.train_epoch_iterations
            for g, base in zip(self.optimizer.param_groups, self.base_lrs):
                g["lr"] = reference_cosine_lr(base, epoch, i, len(self.dataloader), self.train_epochs)
        self.optimizer.step()

    # -- storage ----------------------------------------------------------------------------
    def _write_backbone(self, directory: Path) -> Path:
        path = Path(directory) / BACKBONE_FILE
        # Frozen, so every task writes the same bytes: one file, counted once.
        weights = {f"{n}.{k}": v for n, m in self.mask_layers()
                   for k, v in (("weight", m.weight), ("bias", m.bias)) if v is not None}
        return write_record(path, "ksm-backbone", State(weights, prefix=""), header={"arch": self.cfg.arch})

    def export_task(self, t, directory):
        self._write_backbone(directory)
        mask_keys = {f"{n}.{leaf}" for n, _ in self.mask_layers() for leaf in ("weight", "bias", "mask_real")}
        fields, layers = {"state": State({k: v for k, v in self.model.state_dict().items() if k not in mask_keys})}, []
        with torch.no_grad():
            for name, m in self.mask_layers():
                kept = m.kept()
                mult = kernel_multiplier(m.mask_real.detach(), self.opts, training=False)
                fields[f"bin/{name}"] = Ints(kept.cpu().numpy(), 2)
                fields[f"soft/{name}"] = F32(mult[~kept])
                layers.append({"name": name, "shape": list(m.mask_real.shape)})
        path = self.task_file(directory, t, "ksm")
        write_record(path, "ksm-task", fields, task=t, codec=self.opts.codec,
                     header={"arch": self.cfg.arch, "num_classes": self.task_classes[t], "layers": layers})
        return [path]

    def _read_backbone(self, directory) -> dict[str, torch.Tensor]:
        return read_record(Path(directory) / BACKBONE_FILE, "ksm-backbone", state_prefix="").state

    def read_task(self, t, directory) -> tuple[dict, dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """(header, float state, layer -> (kept: bool per kernel, multiplier per kernel)) of task ``t``."""
        rec = read_record(self.task_file(directory, t, "ksm"), "ksm-task", schema=KSM_TASK)
        masks = {}
        for layer in rec.header["layers"]:
            name, shape = layer["name"], layer["shape"]
            n = shape[0] * shape[1]
            if int(np.prod(shape)) != n:
                raise ArtifactError(f"{rec.path}: layer {name!r} has mask shape {shape}, expected one kernel per "
                                    f"entry ([out, in, 1, 1]); delete it and rerun: the run retrains from task {t}")
            kept = rec.ints(f"bin/{name}", n, 2).astype(bool)
            soft = rec.f32(f"soft/{name}", int((~kept).sum()))
            mult = np.ones(n, dtype=np.float32)
            mult[~kept] = soft
            masks[name] = (torch.from_numpy(kept).view(shape), torch.from_numpy(mult).view(shape))
        return rec.header, rec.state, masks

    def rebuild_task(self, t, directory):
        backbone = self._read_backbone(directory)
        header, state, masks = self.read_task(t, directory)
        model = build_arch(header["arch"], header["num_classes"], self.assets.in_channels)
        plain = {}
        for name, (_, mult) in masks.items():
            plain[f"{name}.weight"] = masked_weight(backbone[f"{name}.weight"], mult)
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

    def shared_state_keys(self):  # the frozen backbone; per task: masks, BatchNorm, head
        return {f"{n}.{leaf}" for n, _ in self.mask_layers() for leaf in ("weight", "bias")}
    # -- the paper's accounting (nws_avalanche.storage.paper_memory) -----------------------------------
    def paper_bytes(self, t, directory) -> int:
        """uint8 mask per kernel + the dropped kernels' multipliers + pickled BatchNorm + head."""
        _, state, masks = self.read_task(t, directory)
        soft = {n: mult[~kept] for n, (kept, mult) in masks.items()}
        return (paper.uint8_masks_bytes({n: kept.numpy() for n, (kept, _) in masks.items()})
                + paper.float_state_bytes(soft) + paper.bn_and_rest_bytes(state))

    def paper_assist_bytes(self, directory) -> int:
        return paper.float_state_bytes(self._read_backbone(directory))

    def task_summary(self, t):
        kept = {name: float(m.kept().float().mean()) for name, m in self.mask_layers()}
        total = sum(m.mask_real.numel() for _, m in self.mask_layers())
        n_kept = sum(int(m.kept().sum()) for _, m in self.mask_layers())
        return {"kept_share": kept, "kept_total": n_kept / max(total, 1)}
