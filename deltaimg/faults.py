"""Test-only crash injection, so the crash-safety tests can kill a real run at a chosen step.

``DELTAIMG_TEST_KILL_AT=<step>`` makes the process SIGKILL itself when it reaches that step, as
a power cut or ``kill -9`` would: no ``finally`` block, no journal record, no cleanup runs.
``<step>#<n>`` kills the n-th time the step is reached instead (``stop#2``: at the second
container's stop). The steps, in the order an apply reaches them: ``recover`` (an interrupted
attempt's container settled by the recovery, the attempt not yet closed), ``verify`` (payloads
being hashed), ``rebuild`` (base layers exported, the target image's archive not yet written),
``load`` (``docker load`` at least half sent, not all of it), ``stop``, ``rename``, ``create``,
``start`` (each right after the engine did it) and ``cleanup`` (the new container passed its
check, the old one is not yet removed).
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "DELTAIMG_TEST_KILL_AT"

_reached: dict[str, int] = {}


def killpoint(step: str) -> None:
    """Die here, at once and without cleanup, when the test switch names this step (and count)."""
    wanted = os.environ.get(KILL_AT_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition("#")
    if name != step:
        return
    _reached[step] = _reached.get(step, 0) + 1
    if _reached[step] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
