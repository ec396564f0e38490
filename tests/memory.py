"""Running the CLI with its own peak memory measured (kernel rusage; no wall-clock anything)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int


# A process's peak RSS (ru_maxrss) starts at that of the process it was forked from: Linux carries
# the parent's high-water mark over the fork and the exec. So the command is started by a small
# launcher, and the launcher's os.wait4 on it gives the command's own peak, not pytest's.
LAUNCHER = """
import os, subprocess, sys
with open(sys.argv[1], "wb") as out:
    child = subprocess.Popen(sys.argv[2:], stdout=out)
    _, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)
"""


def measured(*args: str) -> Outcome:
    """Run ``deltaimg ARGS``; its exit code, output and peak RSS in bytes."""
    command = [sys.executable, "-m", "deltaimg", *args]
    with tempfile.NamedTemporaryFile() as stdout:
        launched = subprocess.run([sys.executable, "-c", LAUNCHER, stdout.name, *command], capture_output=True,
                                  text=True, timeout=600)
        returncode, peak = map(int, launched.stdout.split())
        return Outcome(returncode, stdout.read().decode(), launched.stderr, peak)
