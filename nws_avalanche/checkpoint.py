"""Per-task checkpoints: an interrupted run resumes at its next task with the same results.

After every task the runner writes ``<run>/checkpoint.pt`` (atomically): the strategy's
``checkpoint_state`` (model and optimiser state_dicts, Avalanche's clock, method state such as
the NWS plugin's ``tasks_seen``), the LR scheduler's state, the RNG states (python, numpy, torch),
the accuracy matrix so far, per-task summaries, train times, the files each task wrote and the
next task index. State_dicts rather than pickled strategies: Avalanche's own ``save_checkpoint``
cannot pickle a strategy that holds a torch optimiser.

Exactness does not rely on restoring the RNG states: the runner reseeds every RNG from
``(seed, task)`` before each task (``task_seed``), so the remaining tasks see the same batches
whether or not the process was restarted. The saved RNG states are restored anyway so that code
drawing random numbers outside a task (evaluation, callbacks) continues the same sequence.
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write_bytes
from .errors import ArtifactError

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def task_seed(seed: int, task: int) -> int:
    """The seed every RNG gets before task ``task`` (stable, distinct per task)."""
    return (int(seed) * 1_000_003 + 7919 * (int(task) + 1)) % (2 ** 31 - 1)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


@dataclass
class Progress:
    """What a run has finished so far; ``next_task`` is where it continues."""
    num_tasks: int
    next_task: int = 0
    acc: list = field(default_factory=list)
    task_files: list = field(default_factory=list)  # per task: file names inside artifacts/
    summaries: list = field(default_factory=list)
    train_seconds: list = field(default_factory=list)

    def __post_init__(self):
        if not self.acc:
            self.acc = [[None] * self.num_tasks for _ in range(self.num_tasks)]


def _scheduler_state(strategy) -> dict | None:
    for p in getattr(strategy, "plugins", []):
        sched = getattr(p, "sched", None)
        if sched is not None and hasattr(sched, "state_dict"):
            return sched.state_dict()
    return None


def save_checkpoint(run_dir: Path, strategy, progress: Progress, config_yaml: str) -> Path:
    t = progress.next_task - 1
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config_yaml,
        "progress": vars(progress),
        "strategy": strategy.checkpoint_state(t),
        # the LR schedule restarts at every task; kept so the file describes the run fully
        "scheduler": _scheduler_state(strategy),
        "rng": rng_state(),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(Path(run_dir) / CHECKPOINT_NAME, buf.getvalue())


def load_checkpoint(run_dir: Path) -> dict | None:
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        # our own file, holding RNG tuples and numpy states next to tensors
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
        raise ArtifactError(f"{path} cannot be read ({e}); delete it to restart this run from task 0") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{path} is not a checkpoint of format {CHECKPOINT_FORMAT}; delete it to restart "
                            f"this run from task 0")
    return payload


def restore(payload: dict, strategy) -> Progress:
    strategy.restore_checkpoint_state(payload["strategy"])
    set_rng_state(payload["rng"])
    return Progress(**payload["progress"])
