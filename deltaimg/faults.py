"""Test-only crash injection, so the crash-safety tests can kill a real run at a chosen step.

``DELTAIMG_TEST_KILL_AT=<step>`` makes the process SIGKILL itself when it reaches that step, as
a power cut or ``kill -9`` would: no ``finally`` block, no journal record, no cleanup runs. The
steps, in the order an apply reaches them: ``verify`` (payloads being hashed), ``rebuild`` (base
layers exported, the new image's archive not yet written), ``load`` (``docker load`` half sent),
``stop``, ``rename``, ``create``, ``start`` (each right after the engine did it) and ``cleanup``
(the new container passed its check, the old one is not yet removed).
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "DELTAIMG_TEST_KILL_AT"


def killpoint(step: str) -> None:
    """Die here, at once and without cleanup, when the test switch names this step."""
    if os.environ.get(KILL_AT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
