"""Running the CLI with its own peak memory measured (kernel rusage; no wall-clock anything)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Iterator


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int


# A process's peak RSS (ru_maxrss) starts at that of the process it was forked from: Linux carries
# the parent's high-water mark over the fork and the exec. So the command is started by a small
# launcher, and the launcher's os.wait4 on it gives the command's own peak, not pytest's. The
# launcher also enforces the time cap: a command still running after it is killed (and so is
# not left behind eating memory), and the launcher says so.
LAUNCHER = """
import os, subprocess, sys, threading
timeout = float(sys.argv[2])
with open(sys.argv[1], "wb") as out:
    child = subprocess.Popen(sys.argv[3:], stdout=out)
    timer = threading.Timer(timeout, child.kill)
    timer.start()
    _, status, usage = os.wait4(child.pid, 0)
    timer.cancel()
killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024, int(killed))
"""

MINUTE = 60  # the time cap of a command given hostile input: a cap, never a timing assertion


class TimedOut(AssertionError):
    """The command was still running at its time cap (and was killed)."""


def measured(*args: str, timeout: float = 600, env: dict | None = None) -> Outcome:
    """Run ``deltaimg ARGS``; its exit code, output and peak RSS in bytes. Raises TimedOut if it
    is still running after ``timeout`` seconds."""
    command = [sys.executable, "-m", "deltaimg", *args]
    with tempfile.NamedTemporaryFile() as stdout:
        launched = subprocess.run([sys.executable, "-c", LAUNCHER, stdout.name, str(timeout), *command],
                                  capture_output=True, text=True, timeout=timeout + 60,
                                  env={**os.environ, **(env or {})})
        returncode, peak, killed = map(int, launched.stdout.split())
        if killed:
            raise TimedOut(f"deltaimg {' '.join(args)} was still running after {timeout} s")
        return Outcome(returncode, stdout.read().decode(), launched.stderr, peak)


class OverCap(AssertionError):
    """A case run in this process went past its time or memory cap."""


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OverCap("no VmSize in /proc/self/status")


@contextlib.contextmanager
def capped(seconds: int = MINUTE, memory: int = 512 << 20) -> Iterator[None]:
    """Run a block in this process (a fuzz case) under caps: interrupted after ``seconds`` (SIGALRM),
    and allowed ``memory`` bytes of address space beyond what the process holds now (RLIMIT_AS), so
    an allocation past it fails and the case with it. Caps, never timing assertions."""
    def interrupt(signum, frame):
        raise OverCap(f"the case was still running after its {seconds} s cap")

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + memory
    previous = signal.signal(signal.SIGALRM, interrupt)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    signal.alarm(seconds)
    try:
        yield
    except MemoryError:
        raise OverCap(f"the case needed more than {memory >> 20} MiB beyond what the process held") from None
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, previous)
