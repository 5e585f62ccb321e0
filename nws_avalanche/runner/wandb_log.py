"""A small wandb logger: one wandb run per (benchmark, method, seed[, sweep point]).

Avalanche's ``WandBLogger`` breaks with wandb 0.31 (``wandb.util.generate_id`` and ``wandb.viz``
are gone), and its metrics come from Avalanche's evaluation, not from the models rebuilt from
artifacts that this harness reports; so this logger is a runner callback instead.

- grouped by benchmark, ``job_type`` = method, the resolved config as wandb config;
- after every task: ``acc/task<j>`` for every seen task, ``acc/average``, ``memory/task_mib``,
  ``memory/total_mib``, with ``task`` as the step;
- at the end: the accuracy matrix and the memory per task as ``wandb.Table``s, and this run's
  report figures as ``wandb.Image``s.

Mode: ``cfg.wandb["mode"]`` (online | offline | disabled), else ``WANDB_MODE``, else disabled. The
wandb run id is kept in the run folder (``wandb_id.txt``) so a resumed run continues the same
wandb run. If wandb cannot start (no network, no login) the run continues with a warning.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

from ..common.atomic import atomic_write_text
from ..common.errors import ConfigError
from ..common.untrusted import read_text

MODES = ("online", "offline", "disabled")
KNOWN_KEYS = {"mode", "project", "entity", "dir", "tags"}
ID_FILE = "wandb_id.txt"


def wandb_mode(cfg) -> str:
    section = dict(cfg.wandb or {})
    unknown = set(section) - KNOWN_KEYS
    if unknown:
        raise ConfigError(f"unknown wandb option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KNOWN_KEYS))}")
    mode = section.get("mode") or os.environ.get("WANDB_MODE") or "disabled"
    if mode not in MODES:
        raise ConfigError(f"wandb mode must be one of {', '.join(MODES)} (got {mode!r}); set wandb.mode or WANDB_MODE")
    return mode


class WandbRun:
    """Runner callback (``on_task``) plus ``finish(results)``; does nothing if wandb failed to start."""

    def __init__(self, cfg, run_dir: Path, sweep: dict | None = None):
        self.cfg, self.run_dir, self.sweep = cfg, Path(run_dir), dict(sweep or {})
        self.run = None
        self._started = False

    def _start(self):
        if self._started:
            return self.run
        self._started = True
        section = dict(self.cfg.wandb or {})
        mode = wandb_mode(self.cfg)
        try:
            import wandb

            self.run_dir.mkdir(parents=True, exist_ok=True)
            id_path = self.run_dir / ID_FILE
            run_id = read_text(id_path, "W&B run id", "delete it (a new run id is made)", limit=256).strip() \
                if id_path.is_file() else None
            if run_id is None:
                run_id = _new_id()
                atomic_write_text(id_path, run_id + "\n")
            point = ",".join(f"{k}={v}" for k, v in self.sweep.items())
            name = f"{self.cfg.benchmark}-{self.cfg.method}{'-' + point if point else ''}-seed{self.cfg.seed}"
            wdir = Path(section.get("dir") or self.run_dir)
            wdir.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=section.get("project", "nws-avalanche"), entity=section.get("entity"), mode=mode,
                dir=str(wdir), id=run_id, resume="allow", name=name, group=self.cfg.benchmark,
                job_type=self.cfg.method, tags=section.get("tags"),
                config={**self.cfg.to_dict(), "sweep": self.sweep},
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
        except Exception as e:  # noqa: BLE001 - logging must never stop a run
            warnings.warn(f"wandb could not start ({type(e).__name__}: {e}); the run continues without wandb")
            self.run = None
        return self.run

    def on_task(self, t, acc, strategy, memory) -> None:
        run = self._start()
        if run is None:
            return
        row = [a for a in acc[t][: t + 1]]
        data = {f"acc/task{j}": a for j, a in enumerate(row)}
        data.update({"task": t, "acc/average": sum(row) / len(row), "memory/task_mib": memory["per_task"][t],
                     "memory/total_mib": memory["total"], "memory/assist_mib": memory["assist"]})
        self._safe(run.log, data, step=t)

    def finish(self, results: dict) -> None:
        run = self._start()
        if run is None:
            return
        import wandb

        acc = results["accuracy_matrix"]
        T = len(acc)
        acc_table = wandb.Table(columns=["after task", *[f"task {j}" for j in range(T)]],
                                data=[[i, *[a if a is not None else float("nan") for a in r]] for i, r in enumerate(acc)])
        mem = results["memory_mib"]
        mem_table = wandb.Table(columns=["task", "MiB"], data=[[i, m] for i, m in enumerate(mem["per_task"])])
        payload = {"tables/accuracy_matrix": acc_table, "tables/memory_per_task": mem_table}
        with tempfile.TemporaryDirectory() as tmp:
            from reports.figures import run_figures

            for key, png in run_figures(results, Path(tmp)).items():
                payload[f"figures/{key}"] = wandb.Image(str(png))
            self._safe(run.log, payload, step=T)
        run.summary.update({"average_accuracy": results["average_accuracy"], "memory_total_mib": mem["total"],
                            "memory_assist_mib": mem["assist"]})
        self._safe(run.finish)

    @staticmethod
    def _safe(fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"wandb logging failed ({type(e).__name__}: {e}); the run continues")


def _new_id() -> str:
    import secrets

    return secrets.token_hex(4)


def wandb_callbacks(cfg, run_dir: Path, sweep: dict | None = None) -> list:
    """The logger for one run, or nothing (wandb disabled, or the run is already finished)."""
    if wandb_mode(cfg) == "disabled" or (Path(run_dir) / "results.json").is_file():
        return []
    return [WandbRun(cfg, run_dir, sweep)]


BLOCK = 32768
HEADER = 7  # crc32 (4), length (2), type (1)


def read_wandb_records(path: Path):
    """The ``Record`` protos of a ``.wandb`` file (an offline run's log), without ``wandb sync``.

    The file is a LevelDB-style log: a 7-byte file header (``:W&B``, magic, version), then 32 KiB
    blocks of records, each with a 7-byte header; a record split over blocks comes as
    FIRST/MIDDLE/LAST pieces.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb log file")
    pos, pending = 7, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec
            pending = b""
