"""Atomic file writes: a reader never sees a half-written file.

The temp file gets the mode a plain ``open(path, "w")`` would give: the existing file's mode, or
``0o666`` less the process umask for a new file (``mkstemp`` alone would leave 0600, unreadable
to collaborators on a shared machine). A write that fails for a reason the user fixes (no space,
quota, read-only file system, permission) removes the temp file, leaves ``path`` as it was and
raises ``OutputError`` naming the path and the cause (also when a writer such as ``torch.save``
wraps the OSError in its own error while the disk is full). A symbolic link or a non-regular file
at ``path`` is refused by name (``refuse_link``): nothing is ever written through a link.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from .errors import OutputError

# errno -> what the user sees; the cases a user fixes by freeing space or choosing another folder
USER_FIXABLE = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a component of the path is not a folder",
    errno.ENOENT: "a folder on the path does not exist and cannot be created",
    errno.EEXIST: "a file stands where a folder of the path should be",
    errno.EISDIR: "a folder stands where the file should be",
    errno.ELOOP: "a symbolic link loop on the path",
}
_umask_lock = threading.Lock()


def process_umask() -> int:
    """The current umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:  # portable fallback: set and restore
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(os.lstat(path).st_mode)
    except OSError:
        return 0o666 & ~process_umask()


def output_error(path, e: OSError) -> OutputError:
    cause = USER_FIXABLE.get(e.errno, e.strerror or type(e).__name__)
    return OutputError(f"cannot write {path}: {cause}; that file is unchanged and every file written before is "
                       f"kept. Free space (or fix the folder's permissions) and rerun the same command: it resumes "
                       f"after the last finished task")


def refuse_link(path: Path) -> None:
    """``path`` must be a regular file or absent: a symbolic link (or a folder, fifo, device) where
    the harness writes a file is refused by name, so no write ever lands in another file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError:
        return  # the write itself reports an unreadable folder
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(f"{path} is a symbolic link where the harness writes a regular file; it is left as it "
                          f"is and nothing was written through it: remove the link (rm {path}) and rerun")
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{path} is not a regular file (a folder or special file) where the harness writes one; "
                          f"move it away and rerun")


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write through ``write(fileobj)`` to a temp file beside ``path``, then rename over it."""
    path = Path(path)
    refuse_link(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp opens with O_CREAT | O_EXCL | O_NOFOLLOW: the temp file is always a new regular file
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if e.errno in USER_FIXABLE:
            raise output_error(path, e) from None
        raise
    try:
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # writers such as torch.save turn the OSError into their own error: judge by the disk itself,
        # before the temp file's blocks are given back
        full = isinstance(e, Exception) and not isinstance(e, OSError) and disk_full(path.parent)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno in USER_FIXABLE:
            raise output_error(path, e) from None
        if full:
            raise output_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None
        raise
    return path


def disk_full(folder, margin: int = 1 << 20) -> bool:
    """Less than ``margin`` bytes left for unprivileged writes on ``folder``'s file system."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin


def atomic_write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data), "wb")


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text), "w")


def atomic_write_json(path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_writable(folder: str | os.PathLike, probe_bytes: int = 64 * 1024) -> Path:
    """Write (then remove) a small probe file in ``folder``, or in its nearest existing ancestor when
    it does not exist yet (creating nothing), so that an unwritable, read-only or full output stops a
    run before any work, naming the folder and the cause."""
    folder = Path(folder)
    probe_dir = folder
    while not probe_dir.exists() and probe_dir.parent != probe_dir:
        probe_dir = probe_dir.parent
    try:
        if not probe_dir.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(probe_dir))
        fd, tmp = tempfile.mkstemp(prefix=".nws-write-probe.", dir=probe_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"\0" * probe_bytes)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            os.unlink(tmp)
    except OSError as e:
        cause = USER_FIXABLE.get(e.errno, e.strerror or type(e).__name__)
        where = "" if probe_dir == folder else f" ({probe_dir})"
        raise OutputError(f"cannot write to output folder {folder}{where}: {cause}; choose a writable --out "
                          f"(or free space there)") from None
    return folder
