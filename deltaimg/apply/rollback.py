"""Putting an old container back: after one swap failed half way, and for every container of the
update already on the target image when a later one fails (an update is all or nothing).

Undoing is done newest first (remove the new container, give the old one its name back), then
the old containers' states are put back oldest first, dependencies first: a container that
shares another's network namespace can only start once that one runs.

An old container someone removed while the update ran cannot come back: then the new container
is left under the name, as it is, and the rollback reports that, never the engine's "no such
container" for a step that cannot be done."""

from __future__ import annotations

from typing import Callable

from deltaimg.apply.plan import SwapResult, short
from deltaimg.engine.interface import Engine
from deltaimg.errors import EngineError

Step = tuple[str, Callable[[], object]]


def undo_swap(engine: Engine, plan: SwapResult, new_id: str | None, renamed: bool, stopping: bool) -> list[str]:
    """Undo the steps of one swap done so far; what could not be undone (empty: all of it).

    Every step is tried even when one fails, so the old container can run again if at all possible
    (under its side name if it cannot get its own back). A container that was running is started
    (:func:`restore_state`) whether or not its stop went through: starting a running container is a
    no-op. So when the stop call itself was cut short (``stopping``: SIGTERM, a timeout), the engine
    may still be stopping it: the stop is waited out first, else the container would end up stopped.
    """
    old_id = plan.old_container_id
    if old_gone(engine, old_id):
        return [kept_new(plan.name, old_id, new_id)]
    steps: list[Step] = []
    if new_id is not None:
        steps.append(("remove the new container", lambda: remove_new_container(engine, new_id, old_id)))
    if renamed:
        steps.append((f"rename the old one back to {plan.name}", lambda: engine.rename(old_id, plan.name)))
    if stopping:
        steps.append(("finish stopping the old one", lambda: engine.stop(old_id, plan.stop_timeout)))
    return _run(steps)


def undo_ready(engine: Engine, result: SwapResult) -> list[str]:
    """Undo a swap that went through (its old container is still aside, stopped) because a later
    container of the same update failed."""
    assert result.new_container_id is not None
    new_id = result.new_container_id
    if old_gone(engine, result.old_container_id):
        return [kept_new(result.name, result.old_container_id, new_id)]
    steps: list[Step] = [
        ("remove the new container", lambda: remove_new_container(engine, new_id, result.old_container_id)),
        (f"rename the old one back to {result.name}", lambda: engine.rename(result.old_container_id, result.name)),
    ]
    return _run(steps)


def old_gone(engine: Engine, old_id: str) -> bool:
    """Whether the old container is gone; when the engine cannot tell, the rollback tries its steps."""
    try:
        return engine.inspect_container(old_id) is None
    except EngineError:
        return False


def kept_new(name: str, old_id: str, new_id: str | None) -> str:
    held = f"the new container {short(new_id)} keeps the name {name}" if new_id else f"no container has the name {name}"
    return f"the old container {short(old_id)} is gone (removed outside deltaimg during the update); {held}"


def by_hand(name: str, old_id: str, gone: bool = False) -> str:
    if gone:
        return (f"docker logs {name} shows why the new container failed; fix that, or recreate {name} on the base "
                "image (its old container cannot come back)")
    return f"docker rm -f any new {name}, docker rename {short(old_id)} {name}, docker start {name}"


def restore_state(engine: Engine, plan: SwapResult) -> list[str]:
    """Start the old container again if it ran, and pause it if it was paused; what failed. A gone
    old container is skipped: the undo reported it."""
    if old_gone(engine, plan.old_container_id):
        return []
    steps: list[Step] = []
    if plan.started:
        steps.append(("start the old one", lambda: engine.start(plan.old_container_id)))
    if plan.paused:
        steps.append(("pause the old one", lambda: pause_if_running(engine, plan.old_container_id)))
    return _run(steps)


def pause_if_running(engine: Engine, container_id: str) -> None:
    state = (engine.inspect_container(container_id) or {}).get("State") or {}
    if state.get("Running") and not state.get("Paused"):
        engine.pause(container_id)


def _run(steps: list[Step]) -> list[str]:
    failures = []
    for what, step in steps:
        try:
            step()
        except EngineError as exc:
            failures.append(f"cannot {what}: {exc.reason}")
    return failures


def remove_new_container(engine: Engine, new_id: str, old_id: str) -> None:
    """Remove a new container that is not kept, and the anonymous volumes the engine made for it
    alone (a ``VOLUME`` only the target image declares): they would be left behind, dangling. A
    volume the old container mounts is never removed, and none is when the old one is gone."""
    new = engine.inspect_container(new_id) or {}
    engine.remove_container(new_id, force=True)
    old = engine.inspect_container(old_id)
    if old is None:
        return
    kept = {m.get("Name") for m in old.get("Mounts") or []}
    for mount in new.get("Mounts") or []:
        if mount.get("Type") == "volume" and mount.get("Name") not in kept:
            engine.remove_volume(mount["Name"])
