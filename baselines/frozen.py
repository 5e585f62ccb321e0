"""Frozen: the pretrained backbone frozen and shared; per task only BatchNorm and the head train.

The control the other methods are read against: a method that learns kernels (Finetune, NWS,
KSM's masks) must beat it wherever the pretrained features do not suffice. Each task starts from
the pretrained BatchNorm (parameters and statistics) and, like Finetune (it restarts from the
pretrained network), from the pretrained head under the common head rule (``task_head``).

Stored: ``frozen.backbone`` once (assist: every other entry of the pretrained state_dict, i.e.
the conv weights, fp32; every task writes the same bytes) and per task ``taskNNN.frozen``: the
task's BatchNorm parameters and statistics and its head. The paper's accounting of the same
content (``memory_mib.paper``): BatchNorm as pickled modules, head and backbone as state dicts.
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from nws_avalanche.common.errors import ArtifactError
from nws_avalanche.nets.models import build_arch, head_name, set_head
from nws_avalanche.storage import paper_memory as paper
from nws_avalanche.storage.record import TASK_HEADER, State, read_record, write_record
from nws_avalanche.strategies.methods import METHODS
from nws_avalanche.strategies.task_incremental import TaskIncrementalStrategy

from .surgery import bn_state

BACKBONE_FILE = "frozen.backbone"


@METHODS.register("frozen")
class Frozen(TaskIncrementalStrategy):
    name = "frozen"

    def __init__(self, *, model, optimizer, criterion=None, **kw):
        super().__init__(model=model, optimizer=optimizer, criterion=criterion, **kw)
        self._freeze()

    def _task_keys(self) -> set[str]:
        """state_dict keys a task owns: every BatchNorm entry and the head."""
        state = self.model.state_dict()
        head = f"{head_name(self.model)}."
        return set(bn_state(state, self.model)) | {k for k in state if k.startswith(head)}

    def _freeze(self) -> None:
        own = self._task_keys()
        for name, p in self.model.named_parameters():
            p.requires_grad_(name in own)

    def prepare_task(self, t, num_classes):
        self.model.load_state_dict(bn_state(self.assets.pretrained_state, self.model), strict=False)
        if t > 0:
            set_head(self.model, self.task_head(t, num_classes))  # restarts: from the pretrained head
        self._freeze()

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def shared_state_keys(self):  # the frozen backbone; per task: BatchNorm and head
        return set(self.model.state_dict()) - self._task_keys()

    # -- storage ----------------------------------------------------------------------------
    def export_task(self, t, directory):
        own = self._task_keys()
        state = self.model.state_dict()
        write_record(Path(directory) / BACKBONE_FILE, "frozen-backbone",
                     State({k: v for k, v in state.items() if k not in own}, prefix=""), header={"arch": self.cfg.arch})
        path = self.task_file(directory, t, "frozen")
        write_record(path, "frozen-task", State({k: v for k, v in state.items() if k in own}), task=t,
                     header={"arch": self.cfg.arch, "num_classes": self.task_classes[t]})
        return [path]

    def _read_backbone(self, directory) -> dict:
        return read_record(Path(directory) / BACKBONE_FILE, "frozen-backbone", state_prefix="").state

    def rebuild_task(self, t, directory):
        backbone = self._read_backbone(directory)
        rec = read_record(self.task_file(directory, t, "frozen"), "frozen-task", schema=TASK_HEADER)
        header = rec.header
        model: nn.Module = build_arch(header["arch"], header["num_classes"], self.assets.in_channels)
        try:
            model.load_state_dict({**backbone, **rec.state})
        except RuntimeError as e:
            raise ArtifactError(f"task {t}: frozen artifact does not fit {header['arch']}: {e}") from None
        return model.eval()

    def assist_files(self, directory):
        return [Path(directory) / BACKBONE_FILE]

    # -- the paper's accounting of the same content (memory_mib.paper) ---------------------------
    def paper_bytes(self, t, directory) -> int:
        """Pickled BatchNorm modules + the head as a state dict."""
        return paper.bn_and_rest_bytes(read_record(self.task_file(directory, t, "frozen"), "frozen-task").state)

    def paper_assist_bytes(self, directory) -> int:
        return paper.float_state_bytes(self._read_backbone(directory))
