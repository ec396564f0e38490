"""Ctrl-C and SIGTERM as KeyboardInterrupt, held back while a temporary file or folder is made or
removed, so that an interrupt never leaves one behind.

A KeyboardInterrupt raised between ``mkdtemp`` creating a folder and the code that removes it being
set up (``tempfile.TemporaryDirectory`` has such a gap) leaves the folder in $TMPDIR for good.
:func:`interrupt` is the handler the command line installs for both signals; inside :func:`held` it
only notes the signal, and the KeyboardInterrupt is raised as the outermost ``held`` block ends.
Handlers run in the main thread, so only the main thread holds interrupts back.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from typing import Iterator

_depth = 0
_pending = False


def interrupt(signum: int, frame: object) -> None:
    """The SIGINT and SIGTERM handler: KeyboardInterrupt now, or at the end of the :func:`held` block."""
    global _pending
    if _depth:
        _pending = True
        return
    raise KeyboardInterrupt


class held:
    """A block no interrupt cuts short (a signal that arrives in it is raised as it ends)."""

    def __enter__(self) -> None:
        global _depth
        if threading.current_thread() is threading.main_thread():
            _depth += 1

    def __exit__(self, *exc: object) -> None:
        global _depth, _pending
        if threading.current_thread() is not threading.main_thread():
            return
        _depth -= 1
        if not _depth and _pending:
            _pending = False
            raise KeyboardInterrupt


@contextmanager
def work_folder(prefix: str, directory: str | None = None) -> Iterator[str]:
    """A new private folder in ``directory`` (default $TMPDIR), removed with all it holds when the
    block ends, however it ends."""
    path = None
    try:
        with held():  # an interrupt while it is made is raised inside the try, with ``path`` set
            path = tempfile.mkdtemp(prefix=prefix, dir=directory)
        yield path
    finally:
        if path is not None:
            with held():
                shutil.rmtree(path, ignore_errors=True)


def remove(path: str) -> None:
    """Remove a temporary file, if it is still there, with no interrupt in the middle."""
    with held():
        if os.path.lexists(path):
            os.unlink(path)
