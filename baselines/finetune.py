"""Finetune: one independent copy of the pretrained network per task, every weight trained.

Each task stores its whole network in fp32 (the reference point for memory).
"""
from __future__ import annotations

from nws_avalanche.nets.models import build_arch, set_head
from nws_avalanche.storage import paper_memory as paper
from nws_avalanche.storage.record import TASK_HEADER, State, read_record, write_record
from nws_avalanche.strategies.methods import METHODS
from nws_avalanche.strategies.task_incremental import TaskIncrementalStrategy


@METHODS.register("finetune")
class Finetune(TaskIncrementalStrategy):
    name = "finetune"

    def __init__(self, *, model, optimizer, criterion=None, **kw):
        super().__init__(model=model, optimizer=optimizer, criterion=criterion, **kw)

    def prepare_task(self, t, num_classes):
        if t == 0:
            return
        state = {k: v for k, v in self.assets.pretrained_state.items() if not k.startswith("fc.")}
        self.model.load_state_dict(state, strict=False)
        set_head(self.model, self.task_head(t, num_classes))  # restarts: from the pretrained head

    def export_task(self, t, directory):
        path = self.task_file(directory, t, "dense")
        write_record(path, "finetune-task", State(self.model.state_dict()), task=t,
                     header={"arch": self.cfg.arch, "num_classes": self.task_classes[t]})
        return [path]

    def rebuild_task(self, t, directory):
        rec = read_record(self.task_file(directory, t, "dense"), "finetune-task", schema=TASK_HEADER)
        model = build_arch(rec.header["arch"], rec.header["num_classes"], self.assets.in_channels)
        model.load_state_dict(rec.state)
        return model.eval()

    def paper_bytes(self, t, directory) -> int:
        """The whole network pickled (BatchNorm as modules, the rest as a state dict)."""
        return paper.bn_and_rest_bytes(read_record(self.task_file(directory, t, "dense"), "finetune-task").state)
