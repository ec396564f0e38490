"""One apply at a time per host: an exclusive ``flock`` on ``<state dir>/lock``.

flock is released by the kernel when its holder dies, however it dies, so a run killed with
``kill -9`` never leaves a stale lock behind. The file itself stays (removing a lock file while
another process may be opening it is a race); it holds the pid of the run that has it, for the
message the next run prints.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from deltaimg.errors import OutputError, RunLockedError

POLL = 0.2  # seconds between attempts while waiting
# Even without --wait a run tries this long: ``deltaimg status`` holds a shared lock for an instant
# to see whether a run is in progress, and a run starting in that instant must not be refused.
SETTLE = 1.0


class RunLock:
    """``with RunLock(path, wait):`` holds the lock for the block or raises :class:`RunLockedError`."""

    def __init__(self, path: str, wait: float = 0.0) -> None:
        self.path = path
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = _open(self.path)
        deadline = time.monotonic() + max(self.wait, SETTLE)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_pid(fd)
                    os.close(fd)
                    who = f"another deltaimg run (pid {holder})" if holder else "another deltaimg run"
                    waited = f" after waiting {self.wait:g} s" if self.wait > 0 else ""
                    raise RunLockedError(f"{who} holds {self.path}{waited}; try again later or pass --wait SECONDS") from None
                time.sleep(POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _open(path: str) -> int:
    """The lock file, opened for writing only if it is a plain file of its own: a symlink or hard
    link planted in its place must not have its target truncated and overwritten with a pid."""
    clear = f"remove it (deltaimg creates {path} itself, as a plain file) and run again"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(f"the lock file {path} is a symbolic link; {clear}") from None
        raise OutputError(f"cannot open the lock file {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "not a plain file" if not stat.S_ISREG(info.st_mode) else "a hard link to another file"
        raise OutputError(f"the lock file {path} is {what}; {clear}")
    return fd


def holder(path: str) -> int | None:
    """The pid of the run holding the lock now (0 if unknown), or None when nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd) or 0
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
