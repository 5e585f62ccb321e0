"""Launchers: run a grid of ``RunSpec``s here (``inline``), as local processes (``local``, submitit's
LocalExecutor) or as a Slurm job array (``slurm``, submitit's SlurmExecutor).

Every job is one (benchmark, method, seed[, sweep point]) and calls ``run_single``, which skips a
finished run and resumes an unfinished one; so a job that is preempted, requeued (``RunJob`` is
submitit-``Checkpointable``) or simply submitted again continues at its next task.

Slurm options come from the config section ``slurm`` (``--set slurm.partition=gpu``); see
``SlurmOptions`` for the keys and defaults.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..common.errors import ConfigError
from ..common.registry import Registry

LAUNCHERS: Registry = Registry("launcher")
# the folder that holds the nws_avalanche package (put on the jobs' PYTHONPATH)
PROJECT_ROOT = Path(importlib.util.find_spec("nws_avalanche").submodule_search_locations[0]).resolve().parent


@dataclass
class SlurmOptions:
    partition: str | None = None
    time_min: int = 240             # per job; a job past it is requeued and resumes
    gpus_per_node: int = 0
    cpus_per_task: int = 4
    mem_gb: float | None = None
    array_parallelism: int = 16     # jobs of the array running at once (also the local limit)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = field(default_factory=list)  # shell lines before the job (module load ...)
    job_name: str = "nws-bench"

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> "SlurmOptions":
        from ..common.typed_options import build_options

        opts = build_options("slurm", section or {}, cls)  # unknown keys and wrong types named
        if opts.array_parallelism < 1 or opts.time_min < 1:
            raise ConfigError(f"slurm.array_parallelism and slurm.time_min must be >= 1 (got {asdict(opts)})")
        return opts

    def executor_parameters(self) -> dict[str, Any]:
        """Parameters for ``submitit.SlurmExecutor.update_parameters``."""
        params: dict[str, Any] = {"time": self.time_min, "cpus_per_task": self.cpus_per_task,
                                  "array_parallelism": self.array_parallelism, "job_name": self.job_name,
                                  "ntasks_per_node": 1, "nodes": 1,
                                  "setup": [f"export PYTHONPATH={PROJECT_ROOT}:$PYTHONPATH", *self.setup]}
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        optional = {"partition": self.partition, "mem": f"{self.mem_gb}GB" if self.mem_gb else None,
                    "account": self.account, "qos": self.qos, "constraint": self.constraint}
        params.update({k: v for k, v in optional.items() if v is not None})
        return params


try:
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # submitit is only needed by the local and slurm launchers
    _Checkpointable = object


class RunJob(_Checkpointable):
    """The callable each job runs; on preemption/timeout submitit requeues it and it resumes."""

    def __init__(self, spec, out: str, overwrite: bool = False, progress: bool | None = None, verify: bool = True):
        # progress None: bars on a terminal, one line per epoch/task in a job's log file
        self.spec, self.out, self.overwrite, self.progress = spec, str(out), overwrite, progress
        self.verify = verify  # check a finished run's artifacts before skipping it

    def __call__(self) -> dict:
        from .run import run_single
        from .wandb_log import wandb_callbacks

        spec = self.spec
        cbs = wandb_callbacks(spec.cfg, spec.run_dir(self.out), spec.sweep)
        result = run_single(spec.cfg, Path(self.out), overwrite=self.overwrite, progress=self.progress,
                            callbacks=cbs, sweep=spec.sweep, verify=getattr(self, "verify", True),
                            **({"options": spec.options} if spec.resolved else {}))
        for cb in cbs:
            cb.finish(result)
        per_task = result["memory_mib"]["per_task"]
        return {"run": spec.name, "average_accuracy": result["average_accuracy"],
                "mib_per_task": sum(per_task) / len(per_task), "total_mib": result["memory_mib"]["total"]}

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        # the requeued job must resume, never delete what this one wrote
        return DelayedSubmission(RunJob(self.spec, self.out, overwrite=False, verify=getattr(self, "verify", True)))


@dataclass
class Outcome:
    name: str
    ok: bool
    summary: dict | None = None
    error: str | None = None


@LAUNCHERS.register("inline")
def launch_inline(specs, out: Path, overwrite: bool, opts: SlurmOptions, verify: bool = True) -> list[Outcome]:
    """In this process, one run after the other; an error stops the grid (the CLI reports it)."""
    outcomes = []
    for spec in specs:
        print(f"== {spec.name}", flush=True)
        summary = RunJob(spec, out, overwrite, progress=None, verify=verify)()  # progress bars on a terminal
        print(f"   average accuracy {summary['average_accuracy']:.2f} %, memory total {summary['total_mib']:.3f} MiB",
              flush=True)
        outcomes.append(Outcome(spec.name, True, summary))
    return outcomes


def _executor(kind: str, out: Path):
    import submitit

    folder = Path(out) / "_submitit" / "%j"
    if kind == "local":
        # submitit loads <folder>/<job id>_0_result.pkl (a pickle) once the job ends, and local job ids
        # are pids, which repeat: a folder of its own per launch means it only ever loads what its
        # own jobs wrote, never a stale or planted file from an earlier launch or a copied tree
        import uuid

        return submitit.LocalExecutor(folder=Path(out) / "_submitit" / f"local-{uuid.uuid4().hex[:12]}" / "%j")
    return submitit.SlurmExecutor(folder=folder)


def _collect(specs, jobs) -> list[Outcome]:
    outcomes = []
    for spec, job in zip(specs, jobs):
        try:
            outcomes.append(Outcome(spec.name, True, job.result()))
        except Exception as e:  # noqa: BLE001 - one failed run must not hide the others
            lines = str(e).strip().splitlines()
            outcomes.append(Outcome(spec.name, False, error="\n".join(lines[-8:])))
    return outcomes


@LAUNCHERS.register("local")
def launch_local(specs, out: Path, overwrite: bool, opts: SlurmOptions, verify: bool = True) -> list[Outcome]:
    """One subprocess per run (submitit LocalExecutor), at most ``array_parallelism`` at a time."""
    ex = _executor("local", out)
    ex.update_parameters(timeout_min=opts.time_min, gpus_per_node=opts.gpus_per_node)
    # the job processes must import this checkout, whatever the working directory
    os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    # parallel jobs share this machine's cores: one thread each unless the user chose otherwise
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // opts.array_parallelism)))
    jobs: list = []
    pending = list(specs)
    while pending or any(not j.done() for j in jobs):
        running = sum(not j.done() for j in jobs)
        while pending and running < opts.array_parallelism:
            spec = pending.pop(0)
            jobs.append(ex.submit(RunJob(spec, out, overwrite, verify=verify)))
            print(f"== {spec.name}: local job {jobs[-1].job_id}", flush=True)
            running += 1
        time.sleep(0.5)
    return _collect(specs, jobs)


def slurm_executor(out: Path, opts: SlurmOptions, dry_run: bool = False):
    import shutil

    import submitit

    if dry_run:
        class _Preview(submitit.SlurmExecutor):
            @classmethod
            def affinity(cls) -> int:  # builds the sbatch file on machines without Slurm too
                return 1
        ex = _Preview(folder=Path(out) / "_submitit" / "%j")
    else:
        if shutil.which("srun") is None or shutil.which("sbatch") is None:
            raise ConfigError("--launcher slurm needs Slurm's sbatch and srun on PATH (run it on the cluster's "
                              "login node); --dry-run prints the sbatch file anywhere")
        ex = _executor("slurm", out)
    ex.update_parameters(**opts.executor_parameters())
    return ex


def sbatch_script(specs, out: Path, opts: SlurmOptions) -> str:
    """The sbatch file the slurm launcher submits for ``specs`` (for --dry-run and tests)."""
    from submitit.slurm.slurm import _make_sbatch_string

    ex = slurm_executor(out, opts, dry_run=True)
    params = dict(ex.parameters)
    if len(specs) > 1:
        params["map_count"] = len(specs)
    return _make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder, **params)


@LAUNCHERS.register("slurm")
def launch_slurm(specs, out: Path, overwrite: bool, opts: SlurmOptions, verify: bool = True) -> list[Outcome]:
    """One job array, one array task per run; returns at once (follow with ``nws-bench status``)."""
    ex = slurm_executor(out, opts)
    with ex.batch():
        jobs = [ex.submit(RunJob(spec, out, overwrite, verify=verify)) for spec in specs]
    for spec, job in zip(specs, jobs):
        print(f"== {spec.name}: slurm job {job.job_id}", flush=True)
    return [Outcome(spec.name, True, {"job_id": job.job_id}) for spec, job in zip(specs, jobs)]


def launch(name: str, specs, out: Path, overwrite: bool = False, verify: bool = True) -> list[Outcome]:
    fn = LAUNCHERS.get(name)
    opts = SlurmOptions.from_config(specs[0].cfg.slurm if specs else {})
    if name != "inline" and "submitit" not in sys.modules:
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ConfigError(f"--launcher {name} needs submitit: pip install submitit") from None
    return fn(specs, Path(out), overwrite, opts, verify=verify)
