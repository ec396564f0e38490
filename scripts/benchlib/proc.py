"""Running commands: every failure ends the benchmark with one clear line; measured runs go
through ``/usr/bin/time -v`` for their peak resident memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Mapping, Sequence

_START = time.monotonic()
_PEAK = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


class StepFailed(Exception):
    """A step failed; the message says which and why, in one line."""


@dataclass(frozen=True)
class Cost:
    """Wall-clock seconds and peak resident memory (KiB; None when the work runs in dockerd)."""

    seconds: float
    peak_kib: int | None

    def __add__(self, other: Cost) -> Cost:
        peaks = [p for p in (self.peak_kib, other.peak_kib) if p is not None]
        return Cost(self.seconds + other.seconds, max(peaks) if peaks else None)


NO_COST = Cost(0.0, None)


def log(message: str) -> None:
    """A progress line on stderr, with the time since the benchmark started."""
    minutes, seconds = divmod(int(time.monotonic() - _START), 60)
    print(f"[{minutes:02d}:{seconds:02d}] {message}", file=sys.stderr, flush=True)


def _last_line(text: bytes) -> str:
    lines = [line.strip() for line in text.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _describe(cmd: Sequence[str]) -> str:
    text = " ".join(str(part) for part in cmd)
    return text if len(text) <= 100 else text[:97] + "..."


def run(cmd: Sequence[str], *, stdin: IO[bytes] | None = None, env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None) -> str:
    """Run ``cmd``; return its stdout; raise StepFailed with its last error line when it fails."""
    try:
        done = subprocess.run([str(part) for part in cmd], stdin=stdin, capture_output=True, env=env, cwd=cwd)
    except FileNotFoundError:
        raise StepFailed(f"{cmd[0]}: command not found") from None
    if done.returncode != 0:
        why = _last_line(done.stderr) if done.stderr.strip() else _last_line(done.stdout)
        raise StepFailed(f"`{_describe(cmd)}` exited {done.returncode}: {why}")
    return done.stdout.decode(errors="replace")


def succeeds(cmd: Sequence[str]) -> bool:
    """Whether ``cmd`` exits 0 (for questions, not steps)."""
    return subprocess.run([str(part) for part in cmd], capture_output=True).returncode == 0


def pipe(producer: Sequence[str], consumer: Sequence[str]) -> str:
    """``producer | consumer``; both must succeed. Returns the consumer's stdout."""
    with tempfile.TemporaryFile() as errors:
        with subprocess.Popen([str(p) for p in producer], stdout=subprocess.PIPE, stderr=errors) as source:
            assert source.stdout is not None
            out = run(consumer, stdin=source.stdout)
            source.stdout.close()
        if source.returncode != 0:
            errors.seek(0)
            raise StepFailed(f"`{_describe(producer)}` exited {source.returncode}: {_last_line(errors.read())}")
    return out


def measure(cmd: Sequence[str], *, env: Mapping[str, str] | None = None) -> tuple[Cost, str]:
    """Run ``cmd`` under ``/usr/bin/time -v``: its wall time, peak RSS and stdout."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        start = time.monotonic()
        out = run(["/usr/bin/time", "-v", "-o", report.name, *cmd], env=env)
        seconds = time.monotonic() - start
        peak = _PEAK.search(report.read())
    if peak is None:
        raise StepFailed(f"/usr/bin/time reported no peak memory for `{_describe(cmd)}`")
    return Cost(seconds, int(peak.group(1))), out
