"""Per-task checkpoints: an interrupted run resumes at its next task with the same results.

After every task the runner writes ``<run>/checkpoint.pt`` (atomically): the strategy's
``checkpoint_state`` (model and optimiser state_dicts, Avalanche's clock, method state such as
the NWS plugin's ``tasks_seen``), the LR scheduler's state, the RNG states (python, numpy, torch),
the accuracy matrix so far, per-task summaries, train times, the files each task wrote and the
next task index. State_dicts rather than pickled strategies: Avalanche's own ``save_checkpoint``
cannot pickle a strategy that holds a torch optimiser.

The file holds tensors and plain values only (dicts, lists, tuples, str, numbers, bools, None;
the RNG states as tensors), is checked for that when written, and is read with
``torch.load(weights_only=True)``: a crafted or foreign ``checkpoint.pt`` in a copied run folder
cannot run code, it is refused with a message (exit 2), like one missing a key.

Exactness does not rely on restoring the RNG states: the runner reseeds every RNG from
``(seed, task)`` before each task (``task_seed``), so the remaining tasks see the same batches
whether or not the process was restarted. The saved RNG states are restored anyway so that code
drawing random numbers outside a task (evaluation, callbacks) continues the same sequence.
"""
from __future__ import annotations

import io
import pickle
import random
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..common.atomic import atomic_write_bytes
from ..storage.torch_file import check_tensors
from ..common.errors import ArtifactError

CHECKPOINT_NAME = "checkpoint.pt"
PROGRESS_NAME = "progress.json"  # the record of finished tasks, written beside it (recovery.py)
CHECKPOINT_FORMAT = 2  # 2: tensors and plain values only (format 1 pickled RNG tuples and numpy arrays)
REQUIRED = {"format": int, "config": str, "progress": dict, "strategy": dict, "rng": dict}
PROGRESS_KEYS = ("num_tasks", "next_task", "acc", "task_files", "summaries", "train_seconds")


def task_seed(seed: int, task: int) -> int:
    """The seed every RNG gets before task ``task`` (stable, distinct per task)."""
    return (int(seed) * 1_000_003 + 7919 * (int(task) + 1)) % (2 ** 31 - 1)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The python, numpy and torch RNG states as tensors and plain numbers."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python_version": int(version), "python_words": torch.tensor(words, dtype=torch.int64),
            "python_gauss": gauss, "numpy_kind": str(kind),
            "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "numpy_pos": int(pos),
            "numpy_has_gauss": int(has_gauss), "numpy_cached_gaussian": float(cached),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(int(w) for w in state["python_words"].tolist()),
                     state["python_gauss"]))
    np.random.set_state((state["numpy_kind"], state["numpy_keys"].numpy().astype(np.uint32),
                         state["numpy_pos"], state["numpy_has_gauss"], state["numpy_cached_gaussian"]))
    torch.set_rng_state(state["torch"])


def plain(obj, where: str = "checkpoint"):
    """``obj`` with numpy scalars made Python numbers and dict subclasses (Counter, ...) plain
    dicts; anything that is not a tensor or a plain value is a bug in the caller (TypeError),
    caught when the checkpoint is written rather than when it is read."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        items = ((k if isinstance(k, (str, int)) else str(k), plain(v, f"{where}.{k}")) for k, v in obj.items())
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, (list, tuple)):
        out = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(out) if isinstance(obj, tuple) else out
    raise TypeError(f"{where}: {type(obj).__name__} is neither a tensor nor a plain value; "
                    f"checkpoints hold only those (they are read with weights_only=True)")


@dataclass
class Progress:
    """What a run has finished so far; ``next_task`` is where it continues."""
    num_tasks: int
    next_task: int = 0
    acc: list = field(default_factory=list)
    task_files: list = field(default_factory=list)  # per task: file names inside artifacts/
    summaries: list = field(default_factory=list)
    train_seconds: list = field(default_factory=list)
    digests: dict = field(default_factory=dict)  # file name in artifacts/ -> sha256 (recovery.py)

    def __post_init__(self):
        if not self.acc:
            self.acc = [[None] * self.num_tasks for _ in range(self.num_tasks)]

    def truncated(self, k: int) -> "Progress":
        """The record of tasks ``0..k-1`` only (where a run resumes when task ``k``'s files are gone)."""
        if k >= self.next_task:
            return self
        acc = [list(row) if t < k else [None] * self.num_tasks for t, row in enumerate(self.acc)]
        kept = {n for files in self.task_files[:k] for n in files}
        dropped = {n for files in self.task_files[k:] for n in files} - kept
        return Progress(self.num_tasks, k, acc, self.task_files[:k], self.summaries[:k], self.train_seconds[:k],
                        {n: d for n, d in self.digests.items() if n not in dropped})


def _scheduler_state(strategy) -> dict | None:
    for p in getattr(strategy, "plugins", []):
        sched = getattr(p, "sched", None)
        if sched is not None and hasattr(sched, "state_dict"):
            return sched.state_dict()
    return None


def save_checkpoint(run_dir: Path, strategy, progress: Progress, config_yaml: str) -> Path:
    t = progress.next_task - 1
    payload = plain({
        "format": CHECKPOINT_FORMAT,
        "config": config_yaml,
        "progress": vars(progress),
        "strategy": strategy.checkpoint_state(t),
        # the LR schedule restarts at every task; kept so the file describes the run fully
        "scheduler": _scheduler_state(strategy),
        "rng": rng_state(),
    })
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(Path(run_dir) / CHECKPOINT_NAME, buf.getvalue())


def _refuse(path: Path, why: str) -> ArtifactError:
    # without progress.json (runs of older versions) the files alone do not say how far the run got
    where = ("its last finished task" if (path.parent / PROGRESS_NAME).is_file()
             else f"task 0 (there is no {PROGRESS_NAME} recording its finished tasks)")
    return ArtifactError(
        f"{path}: {why}. Nothing was loaded from it and the finished tasks' files are untouched; "
        f"delete {path.name} to restart the run from {where}, or rerun with --overwrite "
        f"to start the run again")


def load_checkpoint(run_dir: Path) -> dict | None:
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refused, truncated or not a torch file: same advice
        found = re.search(r"GLOBAL (\S+)", str(e))
        if isinstance(e, pickle.UnpicklingError) and found:  # weights_only refused an object: never retried
            raise _refuse(path, f"it holds objects other than tensors and plain values ({found.group(1)}): "
                                f"written by an older version or not by this program; refused unread, since "
                                f"loading it could run code") from None
        first = str(e).strip().split(".")[0][:160]
        raise _refuse(path, f"not a readable checkpoint (truncated or not a torch file: {type(e).__name__}: {first})") from None
    if not isinstance(payload, dict):
        raise _refuse(path, "not a checkpoint (no mapping at its top)")
    try:  # every tensor no larger than its storage in the file, of a real dtype (storage.torch_file)
        check_tensors(payload, str(path), "", error=ArtifactError)
    except ArtifactError as e:
        raise _refuse(path, str(e).removeprefix(f"{path}: ").removesuffix("; ")) from None
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise _refuse(path, f"checkpoint format {payload.get('format')!r}, this version reads {CHECKPOINT_FORMAT}")
    for key, kind in REQUIRED.items():
        if not isinstance(payload.get(key), kind):
            raise _refuse(path, f"the checkpoint lacks {key!r} (or it is not a {kind.__name__})")
    missing = [k for k in PROGRESS_KEYS if k not in payload["progress"]]
    missing += [f"strategy.{k}" for k in ("task", "model") if k not in payload["strategy"]]
    if missing:
        raise _refuse(path, f"the checkpoint lacks {', '.join(missing)}")
    return payload


def restore(payload: dict, strategy, path: Path | str = CHECKPOINT_NAME) -> Progress:
    try:
        strategy.restore_checkpoint_state(payload["strategy"])
        set_rng_state(payload["rng"])
        return Progress(**{k: payload["progress"][k] for k in PROGRESS_KEYS},
                        digests=dict(payload["progress"].get("digests", {})))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise _refuse(Path(path), f"does not fit this run ({type(e).__name__}: {str(e)[:200]})") from None
