"""Trust what is on disk: the sha256 of every artifact, recorded as tasks finish and checked before
a run resumes, is skipped as finished, or is reported; and where a run resumes when files are gone.

After every task the runner writes ``<run>/progress.json`` (atomically): the accuracy matrix so
far, per-task summaries, train times, the files each task wrote and the sha256 of every file in
``artifacts/`` (task files and assist files). ``results.json`` repeats the digests
(``artifact_sha256``) so ``report`` can verify a finished run from it alone.

A rerun resumes at the first task whose files are missing (deleted by the user, as the error
messages advise) or at ``next_task``: from ``checkpoint.pt`` when it holds exactly the state after
the previous task, otherwise from the previous task's files (``restore_from_files``, every method
implements it). A file whose bytes differ from their digest stops the run (exit 2) naming it and
saying what to delete. The finished tasks' records and files are never rewritten before that.
"""
from __future__ import annotations

from pathlib import Path

from ..common.atomic import atomic_write_json
from ..common.errors import ArtifactError
from ..common.schema import MAX_TASKS, AnyOf, Float, Int, List, Map, Name, Null, Obj, Str
from ..common.untrusted import read_json
from ..storage.container import file_sha256
from .checkpoint import PROGRESS_KEYS, PROGRESS_NAME, Progress, restore

POOLS_FILE = "pools.nwsp"
_ACC = AnyOf((Float(), Null()))
PROGRESS_SCHEMA = Obj({
    "num_tasks": Int(1, MAX_TASKS), "next_task": Int(0, MAX_TASKS),
    "acc": List(List(_ACC, max_len=MAX_TASKS), max_len=MAX_TASKS),
    "task_files": List(List(Name()), max_len=MAX_TASKS), "summaries": List(lambda v, w: v, max_len=MAX_TASKS),
    "train_seconds": List(AnyOf((Float(), Null())), max_len=MAX_TASKS),
    "digests": Map(Str(max_len=64), key=Name()),
}, optional=frozenset({"digests"}))  # copied from the benchmark's _assist cache when missing


def artifact_digests(art: Path, task_files: list[list[str]], assist: list[Path]) -> dict[str, str]:
    names = [n for files in task_files for n in files] + [Path(p).name for p in assist]
    return {n: file_sha256(Path(art) / n) for n in dict.fromkeys(names)}


def write_progress(rdir: Path, progress: Progress) -> Path:
    return atomic_write_json(Path(rdir) / PROGRESS_NAME, vars(progress))


def read_progress(rdir: Path, num_tasks: int) -> Progress | None:
    path = Path(rdir) / PROGRESS_NAME
    if not path.is_file():
        return None
    data = read_json(path, "progress record", "rerun with --overwrite to start the run again", PROGRESS_SCHEMA,
                     error=ArtifactError)
    prog = Progress(**{k: data[k] for k in PROGRESS_KEYS}, digests=dict(data.get("digests", {})))
    if prog.num_tasks != num_tasks:
        raise ArtifactError(f"{path} describes {prog.num_tasks} tasks, the run has {num_tasks}; "
                            f"rerun with --overwrite to start the run again")
    return prog


def _advice(name: str, task: int | None) -> str:
    if task is not None:
        return (f"delete it and rerun the same command: the run retrains from task {task} "
                f"(tasks before it are kept)")
    if name == POOLS_FILE:
        return "delete it and rerun the same command: it is copied again from the benchmark's _assist cache"
    return "it holds what all tasks share: rerun with --overwrite to redo the run"


def check_files(art: Path, digests: dict[str, str], task_files: list[list[str]],
                pools_missing_ok: bool = False) -> int:
    """Index of the first task with a missing file (``len(task_files)`` if none is missing).
    A file whose bytes differ from its recorded digest, or a missing shared file (but the pool
    file, when ``pools_missing_ok``: the runner copies it again), is an ``ArtifactError`` naming
    it and what to do."""
    owner = {n: t for t, files in enumerate(task_files) for n in files}
    first_missing = len(task_files)
    for name, digest in digests.items():
        path = Path(art) / name
        task = owner.get(name)
        if not path.is_file():
            if task is None and not (pools_missing_ok and name == POOLS_FILE):
                raise ArtifactError(f"{path}: file not found; {_advice(name, None)}")
            if task is not None:
                first_missing = min(first_missing, task)
        elif file_sha256(path) != digest:
            raise ArtifactError(f"{path}: its sha256 differs from the one recorded when it was written "
                                f"(corrupted or replaced); {_advice(name, task)}")
    return first_missing


def needs_rebuild(results_path: Path, results: dict) -> bool:
    """Check a finished run's artifacts against ``results.json`` before a rerun skips it: True
    when files were deleted (as the messages advise) and the run must rebuild them."""
    digests = results.get("artifact_sha256")
    if not digests:
        return False
    art = Path(results_path).parent / "artifacts"
    task_files = results.get("memory_mib", {}).get("files", {}).get("per_task", [])
    k = check_files(art, digests, task_files, pools_missing_ok=True)
    return k < len(task_files) or (POOLS_FILE in digests and not (art / POOLS_FILE).is_file())


def verify_results(results_path: Path, results: dict) -> None:
    """Check a finished run's artifacts against ``results.json``; a missing file is an error too."""
    digests = results.get("artifact_sha256")
    if not digests:  # written before digests were recorded: nothing to check against
        return
    art = Path(results_path).parent / "artifacts"
    task_files = results.get("memory_mib", {}).get("files", {}).get("per_task", [])
    k = check_files(art, digests, task_files)
    if k < len(task_files):
        missing = next(n for n in task_files[k] if not (art / n).is_file())
        raise ArtifactError(f"{art / missing}: file not found (recorded in {results_path}); rerun the run "
                            f"with the same command: it retrains from task {k}")


def resume_point(rdir: Path, art: Path, strategy, num_tasks: int, ckpt: dict | None, ckpt_path: Path) -> Progress:
    """The progress a (re)run continues from, with ``strategy`` put in the state after the last
    task kept. Task files and shared files are checked against their recorded digests first."""
    record = read_progress(rdir, num_tasks)
    if record is None and ckpt is not None:  # progress.json lost: the checkpoint has the same record
        record = Progress(**{k: ckpt["progress"][k] for k in PROGRESS_KEYS},
                          digests=dict(ckpt["progress"].get("digests", {})))
    if record is None:
        return Progress(num_tasks=num_tasks)
    k = min(record.next_task, check_files(art, record.digests, record.task_files[: record.next_task]))
    if k == 0:
        return Progress(num_tasks=num_tasks)
    if ckpt is not None and ckpt["strategy"].get("task") == k - 1:
        restore(ckpt, strategy, ckpt_path)  # exact state, optimiser and RNG included
    else:  # a later task's files were deleted, or the checkpoint was: rebuild from task k-1's files
        strategy.restore_from_files(k - 1, art)
    return record.truncated(k)
