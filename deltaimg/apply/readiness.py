"""Waiting for a started container to be ready: healthy when it has a healthcheck, else up for a grace time."""

from __future__ import annotations

import time
from typing import Callable

from deltaimg.engine.interface import Engine

POLL = 0.5
NS = 1e9
# The engine's healthcheck defaults, used for fields a healthcheck leaves at 0.
HEALTH_INTERVAL, HEALTH_TIMEOUT, HEALTH_RETRIES = 30.0, 30.0, 3


class NotReady(Exception):
    """The started container did not become healthy or stable."""


def wait_ready(engine: Engine, container_id: str, grace: float, log: Callable[[str], None], name: str) -> None:
    """Return once the started container is healthy (with a healthcheck) or has stayed up ``grace`` s."""
    info = _inspect(engine, container_id)
    started_at = info["State"].get("StartedAt")
    check = info["Config"].get("Healthcheck") or {}
    has_health = bool(check.get("Test")) and check["Test"][0] != "NONE"
    budget = max(grace, health_budget(check)) if has_health else grace
    log(f"{name}: started; waiting up to {budget:g} s for it to be " + ("healthy" if has_health else "stable"))
    deadline = time.monotonic() + budget
    while True:
        info = _inspect(engine, container_id)
        state = info["State"]
        if not state.get("Running") or state.get("Restarting"):
            raise NotReady(f"it exited with code {state.get('ExitCode')}{_last_output(engine, container_id)}")
        if info.get("RestartCount") or state.get("StartedAt") != started_at:
            raise NotReady(f"it restarted{_last_output(engine, container_id)}")
        health = (state.get("Health") or {}).get("Status")
        if has_health and health == "healthy":
            log(f"{name}: healthy")
            return
        if has_health and health == "unhealthy":
            probes = (state.get("Health") or {}).get("Log") or [{}]
            output = " ".join(str(probes[-1].get("Output", "")).split())[:200]
            raise NotReady(f"it is unhealthy{': ' + output if output else ''}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if has_health:
                raise NotReady(f"it did not become healthy within {budget:g} s")
            log(f"{name}: up for {grace:g} s")
            return
        time.sleep(min(POLL, remaining))


def health_budget(check: dict) -> float:
    """Seconds after which the engine must have called a container healthy or unhealthy."""
    interval = check.get("Interval", 0) / NS or HEALTH_INTERVAL
    timeout = check.get("Timeout", 0) / NS or HEALTH_TIMEOUT
    retries = check.get("Retries", 0) or HEALTH_RETRIES
    return check.get("StartPeriod", 0) / NS + (interval + timeout) * (retries + 1)


def _inspect(engine: Engine, container_id: str) -> dict:
    info = engine.inspect_container(container_id)
    if info is None:
        raise NotReady("it was removed")
    return info


def _last_output(engine: Engine, container_id: str) -> str:
    tail = engine.last_output(container_id)
    return f" (last output: {tail})" if tail else ""
