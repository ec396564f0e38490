"""Progress bars on a terminal (rich, on stderr), silence everywhere else (cron, pipes, --quiet, --json).

A command opens one :func:`bar` per long step and passes the callback it yields down to the code
doing the work, which calls it with each number of bytes done. Code that streams through a
``write`` callable (apply's layer rebuild) wraps it with :func:`metered`.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

Advance = Callable[[int], None]


@contextlib.contextmanager
def bar(description: str, total: int | None, enabled: bool) -> Iterator[Advance]:
    """Yield a callback taking a number of bytes done; a bar shows bytes, rate and time left while
    ``enabled`` and stderr is a terminal. ``total`` None: the size is not known, the bar only counts."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def metered(write: Callable[[bytes], object], advance: Advance) -> Callable[[bytes], None]:
    """``write`` that also reports the length of every block it writes to ``advance``."""
    def counted(data: bytes) -> None:
        write(data)
        advance(len(data))
    return counted
