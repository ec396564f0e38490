"""Progress bars on a terminal (rich), silence everywhere else (cron, pipes, --quiet, --json)."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator


@contextlib.contextmanager
def bar(description: str, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield a callback taking a number of bytes done."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
