"""Progress feedback that works on a terminal and in a log file alike.

On a terminal: a tqdm bar. Anywhere else (a log file, a pipe, a Slurm job), where a bar prints
nothing useful: one plain line per step (epoch, task, figure group) on stdout, flushed at once.
``enabled``: ``None`` = decide by ``sys.stdout.isatty()``; ``True`` = a bar even off a terminal;
``False`` = silent (tests, library use).
"""
from __future__ import annotations

import sys
import time


def on_terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def say(message: str) -> None:
    print(message, file=sys.stdout, flush=True)


class Steps:
    """``total`` steps named ``desc``: a bar on a terminal, else a line per ``step(note)``."""

    def __init__(self, desc: str, total: int, enabled: bool | None = None):
        self.desc, self.total, self.done = desc, total, 0
        self.lines = enabled is None and not on_terminal()
        self.start = time.perf_counter()
        self.bar = None
        if enabled or (enabled is None and not self.lines):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def step(self, note: str = "", n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if note:
                self.bar.set_postfix_str(note, refresh=False)
        elif self.lines:
            secs = time.perf_counter() - self.start
            say(f"{self.desc} {self.done}/{self.total}{': ' + note if note else ''} ({secs:.1f} s)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
