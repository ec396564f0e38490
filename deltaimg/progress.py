"""Progress bars on a terminal (on stderr), silence everywhere else (cron, pipes, --quiet, --json).

A command opens one :func:`bar` per long step and passes the callback it yields down to the code
doing the work, which calls it with each number of bytes done. Code that streams through a
``write`` callable (apply's layer rebuild) wraps it with :func:`metered`.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from typing import Callable, Iterator, TextIO

Advance = Callable[[int], None]


REDRAW_EVERY = 0.1  # seconds between redraws: a bar costs nothing next to the bytes it counts
UNITS = ((10**9, "GB"), (10**6, "MB"), (10**3, "kB"), (1, "B"))


@contextlib.contextmanager
def bar(description: str, total: int | None, enabled: bool) -> Iterator[Advance]:
    """Yield a callback taking a number of bytes done; a bar shows bytes, rate and time left while
    ``enabled`` and stderr is a terminal. ``total`` None: the size is not known, the bar only counts.
    The bar is one line redrawn in place and erased at the end, as curl and pip draw theirs."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    drawn = _Bar(description, total, sys.stderr)
    try:
        yield drawn.advance
    finally:
        drawn.close()


class _Bar:
    def __init__(self, description: str, total: int | None, stream: TextIO) -> None:
        self.description, self.total, self.stream = description, total, stream
        self.done = 0
        self.started = self.last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= REDRAW_EVERY:
            self.last = now
            self._draw(now)

    def close(self) -> None:
        self._draw(time.monotonic())
        self.stream.write("\r\x1b[K")
        self.stream.flush()

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = round(fraction * 30)
            left = (self.total - self.done) / rate if rate > 0 else None
            line = (f"{self.description}  [{'#' * filled}{'.' * (30 - filled)}] {_bytes(self.done, self.total)}"
                    f"  {_amount(rate)}/s  {_clock(left)} left")
        else:
            line = f"{self.description}  {_amount(self.done)}  {_amount(rate)}/s"
        width = shutil.get_terminal_size().columns - 1
        self.stream.write("\r" + line[:width] + "\x1b[K")
        self.stream.flush()


def _unit(size: float) -> tuple[int, str]:
    return next((scale, name) for scale, name in UNITS if size >= scale or scale == 1)


def _amount(size: float) -> str:
    """``size`` bytes in decimal units: 950 B, 1.2 kB, 3.4 MB."""
    scale, name = _unit(size)
    return f"{size:.0f} B" if scale == 1 else f"{size / scale:.1f} {name}"


def _bytes(done: int, total: int) -> str:
    """``done/total`` in the total's unit: 2.0/3.0 MB."""
    scale, name = _unit(total)
    return f"{done}/{total} B" if scale == 1 else f"{done / scale:.1f}/{total / scale:.1f} {name}"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def metered(write: Callable[[bytes], object], advance: Advance) -> Callable[[bytes], None]:
    """``write`` that also reports the length of every block it writes to ``advance``."""
    def counted(data: bytes) -> None:
        write(data)
        advance(len(data))
    return counted

