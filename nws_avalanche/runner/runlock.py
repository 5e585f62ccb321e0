"""One process per run folder: an exclusive ``flock`` on ``<run folder's parent>/.<name>.lock``.

The lock file sits beside the run folder (not in it) so that ``--overwrite`` deleting the folder
does not delete a held lock. The kernel drops a ``flock`` when its process dies, however it dies,
so a lock file left by a killed run is simply taken over. The holder writes its pid and host into
the file, which is how a refused run names it. Released (and the file removed) on exit. The lock
is opened with ``O_NOFOLLOW``: a symbolic link (or any non-regular file) in its place is refused by
name and its target is never opened, truncated or written.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import socket
from contextlib import contextmanager
from pathlib import Path

from ..common.errors import ConfigError


def lock_path(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


def _holder(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            text = os.read(fd, 256).decode("utf-8", "replace").strip()
        finally:
            os.close(fd)
    except OSError:
        text = ""
    pid, _, host = text.partition(" ")
    return f"process {pid} on {host or 'an unknown host'}" if pid else "another process"


def _missing_dirs(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    out = []
    while not folder.exists() and folder.parent != folder:
        out.append(folder)
        folder = folder.parent
    return out


def _not_a_lock(path: Path) -> ConfigError:
    return ConfigError(f"lock file {path} is a symbolic link or not a regular file; it was left untouched and "
                       f"nothing was written through it: remove it (rm {path}) and rerun")


@contextmanager
def run_folder_lock(run_dir: Path):
    """Hold ``run_dir``'s lock for the block; a second holder gets a ConfigError (exit 2). Folders
    created only to hold the lock are removed again if still empty (a run refused for bad data
    leaves nothing behind)."""
    path = lock_path(run_dir)
    created = _missing_dirs(path.parent)
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_NOFOLLOW: a symbolic link planted as the lock is refused, its target never truncated
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
        except FileNotFoundError:  # another run removed the empty folder meanwhile: make it again
            continue
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise _not_a_lock(path) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _not_a_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{run_dir} is in use by {_holder(path)} (lock {path}); wait for that run to end "
                              f"or stop it, then rerun (it resumes where that run stopped)") from None
        # the previous holder may have removed the file between our open and our lock: retry on the new one
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield path
    finally:
        try:
            os.unlink(path)  # while still held, so nobody locks a file that is about to vanish
        except FileNotFoundError:
            pass
        os.close(fd)
        for d in created:
            try:
                d.rmdir()
            except OSError:  # not empty (the run wrote there) or already gone
                break
