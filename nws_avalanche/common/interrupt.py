"""SIGTERM and SIGINT stop a command cleanly: ``Interrupted`` (a ``KeyboardInterrupt``) is raised in
the main thread, the runner records ``status.json`` as "interrupted" with the command that resumes,
and the CLI prints that one line and exits 128 + the signal (143 for SIGTERM, 130 for SIGINT).

Every file the harness writes is written atomically (``common.atomic``) and every lock and temp file
is released by ``finally`` blocks, so the point where the exception lands is a safe point: a
half-written file never replaces a whole one, and the rerun resumes after the last finished task.
Further signals while the first one unwinds are ignored, so that cleanup itself is not cut short.
"""
from __future__ import annotations

import shlex
import signal
import threading
from contextlib import contextmanager

_command: list[str] = []


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum
        self.signame = signal.Signals(signum).name


def set_command(argv: list[str]) -> None:
    """The command line the user ran (``nws-bench`` + ``argv``), quoted in the resume advice."""
    _command[:] = ["nws-bench", *argv]


def resume_advice() -> str:
    cmd = shlex.join(_command) if _command else "the same command"
    return f"rerun {cmd} to resume after the last finished task"


def interrupted_message(e: BaseException) -> str:
    name = e.signame if isinstance(e, Interrupted) else "SIGINT"
    return f"interrupted by {name}; finished tasks and files already written are kept: {resume_advice()}"


@contextmanager
def stop_on_signals():
    """Within the block (main thread only), SIGTERM and SIGINT raise ``Interrupted``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)  # the first signal wins; cleanup runs to its end
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
