"""Putting the host back in order after a run that was killed (power cut, ``kill -9``, OOM).

Every run starts here, holding the lock, before it looks at any bundle. An update is all or
nothing, and so is its recovery: for each attempt the journal shows as begun and never closed,
one rule, from what the journal says and what the engine shows, settles every container of it
whose swap had begun and not finished:

- every container of the update had passed its check (``ready``): roll forward, remove each old
  container (it sits under ``<name>-deltaimg-old``) if it is still there;
- otherwise roll every one of them back, those that were ready too (their old container is still
  aside, as the swap removes old containers only once all are ready): remove the new container if
  one was created (found by the container's name, and only if it runs the bundle's target image:
  nothing else is ours to remove), give the old one its name back, and start it if it was running
  before (and pause it again if it was paused). Containers are put back newest first, and started
  again oldest first, in the update's order (dependencies first).

No volume the old container mounts is removed (``v=False``): its anonymous volumes are the ones
the new container had reattached. A new container that is removed takes with it only the
anonymous volumes the engine made for it alone (a ``VOLUME`` only the target image declares).
A compose service (deltaimg.apply.compose) is settled by compose: rolled forward, nothing is
left to remove (compose removed its old containers); rolled back, its tag is put back on the image
its old containers ran and compose recreates it (and any compose service of the update that shares
its namespace), dependencies first.
Images are left alone: a target that got loaded stays, and the next apply of the same bundle
finds it there. Temporary files are the state directory's ``work/``, which every run empties. Recovery is idempotent: killed half way, it is redone.
Then the attempt is closed with a ``recovered`` record, and the run goes on; a bundle still
given is applied again from the start.
"""

from __future__ import annotations

from typing import Callable

from deltaimg import faults
from deltaimg.apply import compose
from deltaimg.apply.journal import Attempt, Journal
from deltaimg.apply.plan import SIDE_SUFFIX
from deltaimg.apply.rollback import pause_if_running, remove_new_container
from deltaimg.bundle.manifest import image_name
from deltaimg.engine.interface import Engine
from deltaimg.errors import EngineError, RecoveryError, printable

Outcome = Callable[[str, dict, str], None]


def recover(engine: Engine, journal: Journal, outcome: Outcome) -> None:
    """Settle every interrupted attempt; report each with ``outcome("recovered", record, text)``."""
    for attempt in journal.attempts():
        if not attempt.interrupted:
            continue
        target_id = attempt.begin.get("to", {}).get("image_id", "")
        actions = []
        forward = _all_ready(attempt)
        touched = _touched(attempt)
        for container in reversed(touched):  # newest first, then their states oldest first: dependencies first
            actions.append(_settle(engine, container, attempt, container.get("image") or target_id, forward))
            faults.killpoint("recover")
        actions.reverse()
        back = {c.get("name") for c, action in zip(touched, actions) if action["action"] == "rolled-back"}
        recreated: set[str] = set()
        for container in attempt.containers:
            unit = compose.Unit.from_json(container["compose"]) if isinstance(container.get("compose"), dict) else None
            if unit and (container.get("name") in back or recreated.intersection(unit.needs)):
                _recreate(engine, container, unit, attempt)
                recreated.update(unit.containers)
            elif container.get("name") in back:
                _restore(engine, container, attempt)
        record = journal.append({"type": "recovered", "id": attempt.id, "outcome": "recovered",
                                 "bundle": attempt.begin.get("bundle"), "from": attempt.begin.get("from"),
                                 "to": attempt.begin.get("to"), "containers": actions})
        event = {key: record[key] for key in ("id", "bundle", "from", "to", "containers")}
        event["started"] = attempt.begin.get("time")
        outcome("recovered", event, _describe(attempt, actions))


def _touched(attempt: Attempt) -> list[dict]:
    """The containers whose swap had begun and not finished."""
    touched = []
    for container in attempt.containers:
        steps = attempt.steps.get(str(container.get("name")), set())
        if "begin" in steps and "done" not in steps:
            touched.append(container)
    return touched


def _all_ready(attempt: Attempt) -> bool:
    """Whether every container of the attempt passed its check and none was rolled back since."""
    steps = [attempt.steps.get(str(c.get("name")), set()) for c in attempt.containers]
    return all(("ready" in s or "done" in s) and "rolled-back" not in s for s in steps)


def _settle(engine: Engine, container: dict, attempt: Attempt, target_id: str, forward: bool) -> dict:
    name, old_id = str(container.get("name")), str(container.get("old_container"))
    if isinstance(container.get("compose"), dict):  # compose removed its old containers: recreate or keep the new
        unit = compose.Unit.from_json(container["compose"])
        failed = [] if forward else compose.retag_back(engine, unit)
        if failed:
            raise RecoveryError(printable(f"{name}: cannot settle the update interrupted at {attempt.begin.get('time')} "
                                          f"({'; '.join(failed)}); by hand: {unit.by_hand()}"))
        return {"name": name, "action": "rolled-forward" if forward else "rolled-back",
                "image": target_id if forward else unit.old_image_id}
    try:
        old = engine.inspect_container(old_id)
        holder = engine.inspect_container(name)
        if holder is not None and holder["Name"].lstrip("/") != name:
            holder = None  # the engine matched an ID prefix: no container has that name
        new = holder if holder is not None and holder["Id"] != old_id else None
        if new is not None and new["Image"] != target_id:
            raise RecoveryError(f"{name}: an interrupted update left its old container as {name}{SIDE_SUFFIX}, and the "
                                f"container now named {name} is not on the update's image; {by_hand(name)}")
        if old is None:
            if new is None:
                raise RecoveryError(f"{name}: an interrupted update left neither the old container {old_id[:12]} nor a "
                                    f"new one; recreate {name} by hand")
            return {"name": name, "action": "rolled-forward", "container": new["Id"], "image": new["Image"]}
        if forward and new is not None:
            engine.remove_container(old_id, force=True)
            return {"name": name, "action": "rolled-forward", "container": new["Id"], "image": new["Image"]}
        if new is not None:
            remove_new_container(engine, new["Id"], old_id)
        if old["Name"].lstrip("/") != name:
            engine.rename(old_id, name)
        return {"name": name, "action": "rolled-back", "container": old_id, "image": old["Image"]}
    except EngineError as exc:
        raise RecoveryError(f"{name}: cannot settle the update interrupted at {attempt.begin.get('time')} "
                            f"({exc.reason}); {by_hand(name)}") from None


def _recreate(engine: Engine, container: dict, unit: compose.Unit, attempt: Attempt) -> None:
    """Let compose recreate a compose service of the update on its old image, in its old state."""
    failed = compose.recreate_old(engine, unit, bool(container.get("started")), bool(container.get("paused")))
    if failed:
        raise RecoveryError(printable(f"{container.get('name')}: cannot put back the update interrupted at "
                                      f"{attempt.begin.get('time')} ({'; '.join(failed)}); by hand: {unit.by_hand()}"))


def _restore(engine: Engine, container: dict, attempt: Attempt) -> None:
    """Start a rolled-back old container again if it ran, and pause it if it was paused."""
    name, old_id = str(container.get("name")), str(container.get("old_container"))
    try:
        if container.get("started") and not (engine.inspect_container(old_id) or {}).get("State", {}).get("Running"):
            engine.start(old_id)
        if container.get("paused"):
            pause_if_running(engine, old_id)
    except EngineError as exc:
        raise RecoveryError(f"{name}: cannot start the old container again after the update interrupted at "
                            f"{attempt.begin.get('time')} ({exc.reason}); {by_hand(name)}") from None


def by_hand(name: str) -> str:
    return (f"by hand: keep one container named {name} (docker ps -a --filter name={name}), "
            f"docker rm the other, docker rename it to {name} if needed and docker start it")


def _describe(attempt: Attempt, actions: list[dict]) -> str:
    begin = attempt.begin
    what = f"{_name(begin['from'])} -> {_name(begin['to'])}" if begin.get("from") and begin.get("to") else "an update"
    settled = "; ".join(f"{a['name']} {'back on its old container' if a['action'] == 'rolled-back' else 'on the target image'}"
                        for a in actions) or "no container had been touched"
    return f"recovered the interrupted update {what} (begun {begin.get('time')}): {settled}"


def _name(image: dict) -> str:
    """How messages name an image the journal recorded."""
    return image_name(image.get("tags"), str(image.get("image_id")))
