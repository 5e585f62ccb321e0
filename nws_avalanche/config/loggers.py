"""Avalanche loggers chosen by name (``RunConfig.loggers``), and a wandb logger for Avalanche.

Names: ``interactive`` (progress on stdout), ``text`` (``<run>/avalanche_log.txt``), ``csv``
(``<run>/csv/``), ``tensorboard`` (``<run>/tensorboard/``), ``wandb`` (Avalanche's metrics into
the run's wandb run; needs ``wandb.mode`` online/offline). Avalanche's own ``WandBLogger`` does
not work with wandb 0.31 (see ``wandb_log``); ``WandbMetricsLogger`` is the replacement and
works from a plain script too: ``EvaluationPlugin(..., loggers=[WandbMetricsLogger(project="x")])``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from avalanche.logging import BaseLogger

from ..common.errors import ConfigError

LOGGERS = ("interactive", "text", "csv", "tensorboard", "wandb")


class WandbMetricsLogger(BaseLogger):
    """Sends every scalar Avalanche metric to a wandb run.

    ``run``: a wandb run, or a callable returning one (or None: nothing is logged); without it,
    ``wandb.init(**init_kwargs)`` on first use. ``commit=False`` attaches the metrics to the run's
    next committed step (the runner's per-task log) instead of making steps of their own.
    """

    def __init__(self, run=None, commit: bool = True, **init_kwargs):
        super().__init__()
        self._run, self._init, self.commit = run, init_kwargs, commit
        self._failed = False

    def _get_run(self):
        if callable(self._run) and not hasattr(self._run, "log"):
            return self._run()
        if self._run is None and not self._failed:
            try:
                import wandb

                self._run = wandb.init(**self._init)
            except Exception as e:  # noqa: BLE001 - logging must never stop training
                warnings.warn(f"wandb could not start ({type(e).__name__}: {e}); metrics are not sent")
                self._failed = True
        return self._run

    def log_single_metric(self, name, value, x_plot):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, (int, float)):
            return  # images, matrices: not scalar metrics
        run = self._get_run()
        if run is not None:
            try:
                run.log({name: value}, commit=self.commit)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"wandb logging failed ({type(e).__name__}: {e})")


def check_logger_names(names) -> None:
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ConfigError(f"unknown logger(s) {', '.join(map(repr, unknown))}; choose from {', '.join(LOGGERS)} "
                          f"(--set loggers=[text,csv])")


def make_loggers(names, run_dir: Path, wandb_run=None) -> list:
    """Avalanche loggers for ``names``, writing under ``run_dir``; ``wandb_run``: a callable giving
    the run's wandb run (or None)."""
    from avalanche.logging import CSVLogger, InteractiveLogger, TensorboardLogger, TextLogger

    check_logger_names(names)
    run_dir = Path(run_dir)
    out = []
    for name in names:
        if name == "interactive":
            out.append(InteractiveLogger())
        elif name == "text":
            out.append(TextLogger(open(run_dir / "avalanche_log.txt", "a", buffering=1)))  # noqa: SIM115 - lives with the run
        elif name == "csv":
            out.append(CSVLogger(log_folder=str(run_dir / "csv")))
        elif name == "tensorboard":
            out.append(TensorboardLogger(tb_log_dir=str(run_dir / "tensorboard")))
        elif name == "wandb":
            out.append(WandbMetricsLogger(run=wandb_run or (lambda: None), commit=False))
    return out
