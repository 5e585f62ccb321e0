"""Finetune: one independent copy of the pretrained network per task, every weight trained.

Each task stores its whole network in fp32 (the reference point for memory).
"""
from __future__ import annotations

from nws_avalanche import paper_memory as paper
from nws_avalanche.artifact import load_state_artifact, save_state_artifact
from nws_avalanche.methods import METHODS
from nws_avalanche.models import build_arch, set_head
from nws_avalanche.template import TaskIncrementalStrategy


@METHODS.register("finetune")
class Finetune(TaskIncrementalStrategy):
    name = "finetune"

    def __init__(self, model, optimizer, criterion=None, **kw):
        super().__init__(model, optimizer, criterion, **kw)

    def prepare_task(self, t, num_classes):
        if t == 0:
            return
        state = {k: v for k, v in self.assets.pretrained_state.items() if not k.startswith("fc.")}
        self.model.load_state_dict(state, strict=False)
        set_head(self.model, self.task_head(t, num_classes))  # restarts: from the pretrained head

    def export_task(self, t, directory):
        path = self.task_file(directory, t, "dense")
        save_state_artifact(path, self.model.state_dict(), kind="finetune-task", task=t,
                            header={"arch": self.cfg.arch, "num_classes": self.task_classes[t]})
        return [path]

    def rebuild_task(self, t, directory):
        header, state, _ = load_state_artifact(self.task_file(directory, t, "dense"), "finetune-task")
        model = build_arch(header["arch"], header["num_classes"], self.assets.in_channels)
        model.load_state_dict(state)
        return model.eval()

    def paper_bytes(self, t, directory) -> int:
        """The whole network pickled (BatchNorm as modules, the rest as a state dict)."""
        _, state, _ = load_state_artifact(self.task_file(directory, t, "dense"), "finetune-task")
        return paper.bn_and_rest_bytes(state)
