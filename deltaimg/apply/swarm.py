"""On a Swarm manager, the services on the bundle's base image are moved onto the target by Swarm's
own rolling update: each service's spec gets the target's tag as its image, the rest of the spec
(its ``UpdateConfig``: parallelism, delay, monitor, failure action; its ``RollbackConfig``) is kept,
and deltaimg waits for the update to end. A service whose update Swarm rolled back or paused
fails the apply with :class:`SwarmError`, after the others were waited for.

The image must be on every node that runs a task (deltaimg applied there too) or in a registry
they pull from; Swarm's own tasks are never swapped as plain containers (apply/plan leaves them out).
"""

from __future__ import annotations

import time
from typing import Callable

from deltaimg.engine import swarm as engine_swarm
from deltaimg.apply.rebuild import Rebuild
from deltaimg.errors import SwarmError, printable

TIMEOUT = 900.0  # seconds for every service's update to end, however its UpdateConfig paces it
POLL = 1.0
ENDED = {"completed": "updated", "rollback_completed": "rolled back", "paused": "paused",
         "rollback_paused": "rollback paused"}


def on_base(services: list[dict], rebuild: Rebuild, base_tags: list[str], digests: tuple[str, ...] = ()) -> list[dict]:
    """The services whose image is the base: one of its tags, or its ID (a digest pinned after it
    ignored), or pinned to one of the base manifest's ``digests`` (in a registry)."""
    names = {_normal(tag) for tag in base_tags} | {rebuild.base_id}
    return [s for s in services if _normal(str(_image(s))) in names
            or "@" in str(_image(s)) and str(_image(s)).rsplit("@", 1)[1] in digests]


def update_services(engine: object, rebuild: Rebuild, base_tags: list[str], dry_run: bool,
                    log: Callable[[str], None], timeout: float = TIMEOUT, image: str | None = None,
                    digests: tuple[str, ...] = ()) -> list[dict]:
    """Update every service on the base onto the target (``image``, by default its first tag); one
    record per service (name, id, outcome)."""
    manager = engine_swarm.manager(engine)
    if manager is None:
        return []
    services = on_base(manager.services(), rebuild, base_tags, digests)
    image = image or (rebuild.target_tags[0] if rebuild.target_tags else rebuild.target_id)
    for service in services:
        verb = "would update" if dry_run else "updating"
        log(printable(f"{verb} Swarm service {_name(service)} ({_image(service)}) onto {image} with its rolling update"))
    if dry_run or not services:
        return [{"name": _name(s), "id": s["ID"], "outcome": "planned"} for s in services]
    for service in services:
        manager.set_image(service, image)
    results = _wait(manager, services, timeout, log)
    failed = [r for r in results if r["outcome"] != "updated"]
    if failed:
        raise SwarmError(printable("; ".join(f"Swarm service {r['name']} {r['outcome']}: {r['message']}" for r in failed)
                                   + f" (docker service ps {failed[0]['name']}; fix the image and apply again)"))
    return results


def _wait(manager: engine_swarm.SwarmManager, services: list[dict], timeout: float,
          log: Callable[[str], None]) -> list[dict]:
    deadline = time.monotonic() + timeout
    pending = {s["ID"]: s for s in services}
    results: dict[str, dict] = {}
    while pending:
        for service_id in list(pending):
            current = manager.inspect(service_id)
            status = current.get("UpdateStatus") or {}
            if status.get("State") in ENDED:
                outcome = ENDED[status["State"]]
                results[service_id] = {"name": _name(current), "id": service_id, "outcome": outcome,
                                       "message": str(status.get("Message") or "")}
                log(printable(f"Swarm service {_name(current)} {outcome}: {status.get('Message') or ''}".rstrip(": ")))
                del pending[service_id]
        if pending and time.monotonic() > deadline:
            for service in pending.values():
                results[service["ID"]] = {"name": _name(service), "id": service["ID"], "outcome": "timed out",
                                          "message": f"its update did not end in {timeout:.0f} s"}
            break
        if pending:
            time.sleep(POLL)
    return [results[s["ID"]] for s in services]


def _image(service: dict) -> object:
    return ((service.get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec", {}).get("Image")


def _name(service: dict) -> str:
    return str((service.get("Spec") or {}).get("Name") or service.get("ID", "?")[:12])


def _normal(image: str) -> str:
    """``repo:tag`` without a pinned digest, ``:latest`` added to a bare repository name."""
    image = image.split("@", 1)[0]
    if image.startswith("sha256:"):
        return image
    return image if ":" in image.rsplit("/", 1)[-1] else image + ":latest"
