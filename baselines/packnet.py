"""PackNet (Mallya & Lazebnik, CVPR 2018) with the CPG code's semantics.

Every conv weight has an owner: 0 = free, ``t + 1`` = task ``t``. For task ``t``:

1. every free weight is handed to task ``t`` (kept at zero, as PackNet/CPG leave pruned
   weights, or reset to the pretrained value with ``free_init=pretrained``) and the task
   trains on them for ``epochs``; weights of earlier tasks are visible but get no gradient
   and no weight decay. As in CPG (``utils/packnet_prune.py``,
   ``do_weight_decay_and_make_grads_zero``) the optimiser's own decay is off and decay is added
   by hand to the current task's conv weights only: BatchNorm and the head get none;
2. ``prune_ratio`` of the task's weights in each layer, the smallest by magnitude, are freed
   and zeroed (one shot); as in CPG every weight tied with the cutoff magnitude goes too;
3. the survivors are retrained for ``retrain_epochs`` at ``lr * retrain_lr_scale`` (a second
   Avalanche ``train`` pass over the same experience), the lr dropping x0.1 once at
   ``round(retrain_decay_at * retrain_epochs)`` (CPG ``packnet_cifar100_main_normal.py``: 30
   prune epochs at lr/10, x0.1 after epoch 25).

Each task's BatchNorm starts from task ``t-1``'s (CPG loads the previous task's checkpoint,
BatchNorm included); task 0's from the pretrained network.

Inference on task ``t`` uses only weights owned by tasks ``<= t`` plus task ``t``'s BatchNorm
(parameters and statistics) and head. The head is not pruned: heads are per task, so pruning
them frees nothing another task could use. Capacity left for task ``t`` (1-based) is
``(1 - r)^(t-1)`` of each layer, of which it keeps ``(1 - r)``: ``0.4 * 0.6^(t-1)`` at r = 0.6.

Stored: ``packnet.backbone`` (assist: every conv weight in fp32 and the owner ids, entropy-coded
with the run's integer codec over the alphabet ``0..T``; it is rewritten after each task, which
leaves earlier tasks' weights untouched) and per task ``taskNNN.packnet`` (its BatchNorm state,
biases and head). The final backbone also holds the training state after any task ``t`` (owners
``<= t + 1`` kept, every other weight free and zero), so a run retrains from any task whose later
files were deleted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from nws_avalanche.common.errors import ArtifactError, ConfigError
from nws_avalanche.nets.models import build_arch, get_head, set_head
from nws_avalanche.storage import paper_memory as paper
from nws_avalanche.storage.codecs import CODECS, DEFAULT_CODEC
from nws_avalanche.common.schema import Int, List, Obj, Str
from nws_avalanche.storage.record import MAX_TASKS, SHAPE, TASK_HEADER, F32, Ints, State, read_record, write_record
from nws_avalanche.strategies.methods import METHODS
from nws_avalanche.strategies.task_incremental import TaskIncrementalStrategy, state_copy
from nws_avalanche.strategies.training import EpochLRSchedule, build_optimizer

from .surgery import bn_state, layers_of, replace_layers

BACKBONE_FILE = "packnet.backbone"
PACKNET_BACKBONE = Obj({"tasks": Int(0, 255), "layers": List(Obj({"name": Str(), "shape": SHAPE}))})  # uint8 owners
PACKNET_TASK = Obj({**TASK_HEADER.fields, "owner": Int(0, 255)})
FREE_INITS = ("zero", "pretrained")


@dataclass
class PackNetOptions:
    prune_ratio: float = 0.6           # share of the current task's weights freed per layer
    retrain_epochs: int | None = None  # None: ceil(0.3 * epochs), i.e. CPG's 30 after 100 epochs
    retrain_lr_scale: float = 0.1      # retraining runs at lr * this (CPG: lr / 10)
    free_init: str = "zero"            # zero (PackNet/CPG) | pretrained: value of freed weights for a new task
    retrain_decay_at: float = 25 / 30  # retraining lr x0.1 after this share of its epochs (CPG: 25 of 30); 1 = never
    codec: str = DEFAULT_CODEC         # how owner ids are stored (nws_avalanche.storage.codecs)

    def __post_init__(self):  # checked by the runner before anything is written
        if not 0.0 <= self.prune_ratio < 1.0:
            raise ConfigError(f"packnet.prune_ratio must be in [0, 1) (got {self.prune_ratio}); the paper uses 0.6")
        if self.free_init not in FREE_INITS:
            raise ConfigError(f"packnet.free_init must be one of {', '.join(FREE_INITS)} (got {self.free_init!r})")
        if self.retrain_epochs is not None and self.retrain_epochs < 0:
            raise ConfigError(f"packnet.retrain_epochs must be >= 0 (got {self.retrain_epochs})")
        if self.retrain_lr_scale <= 0:
            raise ConfigError(f"packnet.retrain_lr_scale must be > 0 (got {self.retrain_lr_scale}); CPG uses 0.1")
        if not 0.0 <= self.retrain_decay_at <= 1.0:
            raise ConfigError(f"packnet.retrain_decay_at must be in [0, 1] (got {self.retrain_decay_at}); "
                              f"CPG drops the lr after 25 of 30 epochs (0.8333)")
        if self.codec not in CODECS:
            raise ConfigError(f"packnet.codec must be one of {', '.join(CODECS.names())} (got {self.codec!r})")


class OwnedConv2d(nn.Conv2d):
    """A conv whose weights each belong to a task; the forward sees owners ``1..view`` only."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        self.register_buffer("owner", torch.zeros(self.weight.shape, dtype=torch.uint8))
        self.view = 0

    def visible(self) -> torch.Tensor:
        return (self.owner > 0) & (self.owner <= self.view)

    def forward(self, x):
        return self._conv_forward(x, self.weight * self.visible().to(self.weight.dtype), self.bias)


def visible_weight(weight: torch.Tensor, owner: torch.Tensor, view: int) -> torch.Tensor:
    """The weights task ``view - 1`` uses: the same product the training forward computes."""
    return weight * ((owner > 0) & (owner <= view)).to(weight.dtype)


@METHODS.register("packnet")
class PackNet(TaskIncrementalStrategy):
    name = "packnet"
    Options = PackNetOptions

    def __init__(self, *, model, optimizer, criterion=None, task_classes, options: PackNetOptions | None = None,
                 pretrained_state=None, train_epochs: int = 1, **kw):
        opts = options or PackNetOptions()
        if len(task_classes) >= 255:
            raise ConfigError(f"packnet keeps owner ids in 8 bits: at most 254 tasks (got {len(task_classes)})")
        self.retrain_epochs = (opts.retrain_epochs if opts.retrain_epochs is not None
                               else math.ceil(0.3 * train_epochs))
        pretrained_state = pretrained_state if pretrained_state is not None else state_copy(model)
        replace_layers(model, nn.Conv2d, lambda name, conv: OwnedConv2d(conv))
        self.phase = "train"
        self.current = 0  # owner id of the task being trained
        super().__init__(model=model, optimizer=optimizer, criterion=criterion, task_classes=task_classes, options=opts,
                         pretrained_state=pretrained_state, train_epochs=train_epochs, **kw)

    # -- training ---------------------------------------------------------------------------
    def owned_layers(self) -> list[tuple[str, OwnedConv2d]]:
        return list(layers_of(self.model, OwnedConv2d))

    def prepare_task(self, t, num_classes):
        if self.phase == "retrain":
            return  # same task, second pass: keep everything
        self.current = t + 1
        with torch.no_grad():
            for name, m in self.owned_layers():
                free = m.owner == 0
                m.owner[free] = self.current
                if self.opts.free_init == "pretrained":
                    pre = self.assets.pretrained_state[f"{name}.weight"].to(m.weight.device)
                    m.weight[free] = pre[free]
                m.view = self.current
        # BatchNorm is left as task t-1 ended it: CPG chains it from the previous task's checkpoint
        if t > 0:
            set_head(self.model, self.task_head(t, num_classes, get_head(self.model)))  # carried over

    def make_optimizer(self, **kwargs):
        # The optimiser's decay is off: it would shrink frozen weights; optimizer_step adds it by hand.
        scale = self.opts.retrain_lr_scale if self.phase == "retrain" else 1.0
        cfg = replace(self.cfg, lr=self.cfg.lr * scale, weight_decay=0.0)
        self.optimizer = build_optimizer(cfg, self.model.parameters())
        self.optimized_param_id = {}

    def optimizer_step(self):
        # CPG: decay by hand on the current task's conv weights; BatchNorm and head get none
        wd = self.cfg.weight_decay
        with torch.no_grad():
            for _, m in self.owned_layers():
                if m.weight.grad is None:
                    continue
                mine = (m.owner == self.current).to(m.weight.dtype)
                m.weight.grad.mul_(mine).add_(m.weight * mine, alpha=wd)
        self.optimizer.step()

    def retrain_milestones(self) -> list[int]:
        """Retraining epochs after which the lr drops x0.1 (CPG: after 25 of 30)."""
        at = round(self.opts.retrain_decay_at * self.retrain_epochs)
        return [at] if 0 < at < self.retrain_epochs else []

    def prune_current(self) -> None:
        """Free the current task's weights per layer with ``|w| <=`` the ``round(prune_ratio * n)``-th
        smallest magnitude, as CPG's ``_pruning_mask``: ``prune_ratio`` of them, more on ties at the cutoff."""
        with torch.no_grad():
            for _, m in self.owned_layers():
                mine = (m.owner == self.current).flatten().nonzero().squeeze(1)
                k = int(round(self.opts.prune_ratio * mine.numel()))
                if k == 0:
                    continue
                mags = m.weight.detach().flatten()[mine].abs()
                drop = mine[mags <= mags.kthvalue(k).values]
                m.owner.view(-1)[drop] = 0
                m.weight.view(-1)[drop] = 0.0

    def train(self, experiences, eval_streams=None, **kwargs):
        self.phase = "train"
        super().train(experiences, eval_streams, **kwargs)
        self.prune_current()
        if self.retrain_epochs > 0:
            schedule = next(p for p in self.plugins if isinstance(p, EpochLRSchedule))
            saved = (self.train_epochs, schedule.milestones, schedule.gamma)
            self.train_epochs, self.phase = self.retrain_epochs, "retrain"
            schedule.milestones, schedule.gamma = self.retrain_milestones(), 0.1
            try:
                super().train(experiences, eval_streams, **kwargs)
            finally:
                self.train_epochs, schedule.milestones, schedule.gamma = saved
                self.phase = "train"

    # -- storage ----------------------------------------------------------------------------
    def _write_backbone(self, directory: Path) -> Path:
        K = len(self.task_classes) + 1
        layers, fields = [], {}
        for name, m in self.owned_layers():
            layers.append({"name": name, "shape": list(m.weight.shape)})
            fields[f"w/{name}"] = F32(m.weight)
            fields[f"own/{name}"] = Ints(m.owner.cpu().numpy(), K)
        return write_record(Path(directory) / BACKBONE_FILE, "packnet-backbone", fields, codec=self.opts.codec,
                            header={"tasks": len(self.task_classes), "arch": self.cfg.arch, "layers": layers})

    def export_task(self, t, directory):
        self._write_backbone(directory)
        conv_keys = {f"{n}.{leaf}" for n, _ in self.owned_layers() for leaf in ("weight", "owner")}
        state = {k: v for k, v in self.model.state_dict().items() if k not in conv_keys}
        path = self.task_file(directory, t, "packnet")
        write_record(path, "packnet-task", State(state), task=t,
                     header={"arch": self.cfg.arch, "num_classes": self.task_classes[t], "owner": t + 1})
        return [path]

    def read_backbone(self, directory) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """layer -> (fp32 weights, owner ids) as stored in ``packnet.backbone``."""
        rec = read_record(Path(directory) / BACKBONE_FILE, "packnet-backbone", schema=PACKNET_BACKBONE)
        K = rec.header["tasks"] + 1
        out = {}
        for layer in rec.header["layers"]:
            name, shape = layer["name"], layer["shape"]
            n = int(np.prod(shape))
            w = torch.from_numpy(rec.f32(f"w/{name}", n))
            own = rec.ints(f"own/{name}", n, K)
            out[name] = (w.view(shape), torch.from_numpy(own.astype(np.uint8)).view(shape))
        return out

    def read_task(self, t, directory):
        return read_record(self.task_file(directory, t, "packnet"), "packnet-task", schema=PACKNET_TASK)

    def rebuild_task(self, t, directory):
        backbone = self.read_backbone(directory)
        rec = self.read_task(t, directory)
        theader, state = rec.header, rec.state
        model = build_arch(theader["arch"], theader["num_classes"], self.assets.in_channels)
        with torch.no_grad():
            for name, (w, own) in backbone.items():
                model.get_submodule(name).weight.copy_(visible_weight(w, own, theader["owner"]))
        missing = set(model.state_dict()) - {f"{name}.weight" for name in backbone} - set(state)
        if missing:
            raise ArtifactError(f"task {t}: PackNet artifact lacks state entries {sorted(missing)[:5]}")
        model.load_state_dict(state, strict=False)
        return model.eval()

    def restore_from_files(self, t, directory):
        # Weights owned by tasks <= t are never changed by later tasks (no gradient, no decay), and
        # every weight a later task took was free, i.e. zero, after task t: the final backbone holds
        # the state after task t exactly. The next task carries over task t's BatchNorm (chained, as
        # CPG does) and head: both come from task t's own file.
        set_head(self.model, get_head(self.rebuild_task(t, directory)).to(self.device))
        self.model.load_state_dict(bn_state(self.read_task(t, directory).state, self.model), strict=False)
        with torch.no_grad():
            for name, (w, own) in self.read_backbone(directory).items():
                kept = (own > 0) & (own <= t + 1)
                conv = self.model.get_submodule(name)
                conv.owner.copy_(torch.where(kept, own, torch.zeros_like(own)))
                conv.weight.copy_(torch.where(kept, w, torch.zeros_like(w)))
                conv.view = t + 1
        self.current, self.phase = t + 1, "train"

    def assist_files(self, directory):
        return [Path(directory) / BACKBONE_FILE]

    # per-task state for Avalanche's evaluation: the backbone is shared, each task sees owners <= t + 1
    def shared_state_keys(self):
        return {f"{n}.{leaf}" for n, _ in self.owned_layers() for leaf in ("weight", "owner")}

    def task_extra(self):
        return self.current

    def load_task_extra(self, view):
        for _, m in self.owned_layers():
            m.view = view
    # -- the paper's accounting (nws_avalanche.storage.paper_memory) -----------------------------------
    def paper_bytes(self, t, directory) -> int:
        """CPG's ``shared_layer_info`` entry of the task: its BatchNorm, biases and head, pickled."""
        return paper.bn_and_rest_bytes(self.read_task(t, directory).state)

    def paper_assist_bytes(self, directory) -> int:
        """CPG's ``masks`` (one uint8 owner id per weight) + the backbone state dict, pickled."""
        backbone = self.read_backbone(directory)
        return (paper.uint8_masks_bytes({n: own.numpy() for n, (_, own) in backbone.items()})
                + paper.float_state_bytes({f"{n}.weight": w for n, (w, _) in backbone.items()}))

    def task_summary(self, t):
        owned = {name: float((m.owner == t + 1).float().mean()) for name, m in self.owned_layers()}
        free = {name: float((m.owner == 0).float().mean()) for name, m in self.owned_layers()}
        return {"owned_fraction": owned, "free_fraction": free, "retrain_epochs": self.retrain_epochs,
                "retrain_milestones": self.retrain_milestones()}
