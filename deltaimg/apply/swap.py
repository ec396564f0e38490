"""Recreating an update's containers onto a target image, all or nothing (Docker Compose's
recreate is the model).

The set is surveyed and planned first (:mod:`deltaimg.apply.plan`: ``--rm`` containers left out,
dependents joined, recreated on their own image after what they depend on). Then each container in turn is renamed aside, recreated from
:func:`deltaimg.apply.recreate.create_body`, started and waited on until it runs (and is
healthy, when it has a healthcheck), and put back in its state: running stays running, paused
is paused again, exited or created is created and not started. The old containers stay aside,
stopped, until every new one is ready; only then are they removed. A failure of any container
puts that one back, then every container before it (newest first): the whole update is undone.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

from deltaimg.apply import compose
from deltaimg.apply.plan import SIDE_SUFFIX, SwapResult, describe, find_image, plan, plan_compose, short, survey
from deltaimg.apply.readiness import wait_ready
from deltaimg.apply.rollback import by_hand, old_gone, pause_if_running, restore_state, undo_ready, undo_swap
from deltaimg.engine.interface import Engine
from deltaimg.errors import EngineError, SwapFailedNotRolledBack, SwapFailedRolledBack, UsageError, printable

__all__ = ["SIDE_SUFFIX", "SwapObserver", "SwapResult", "swap_containers", "swap_images"]


class SwapObserver(Protocol):
    """Told what a swap is about to do and has done, so a journal can record it (deltaimg.journal).

    ``step`` is called with ``begin`` before a container is touched, then after the engine did each
    of ``stopped`` (only for a running container), ``renamed``, ``created``, ``started`` (idem),
    ``ready`` (the new container passed its check and is in its state). Once every container is
    ready, ``removed`` for each (its old container is gone); if one fails instead, ``rolled-back``
    for each container put back. An exception from the observer before the removals rolls the
    update back like any failure.
    """

    def planned(self, plans: list[SwapResult]) -> None: ...

    def step(self, plan: SwapResult, step: str) -> None: ...


class _Silent:
    def planned(self, plans: list[SwapResult]) -> None:
        pass

    def step(self, plan: SwapResult, step: str) -> None:
        pass


def swap_containers(
    engine: Engine,
    base_image_id: str,
    target_image_id: str,
    *,
    names: list[str] | None = None,
    target_tags: list[str] | None = None,
    grace: float = 10.0,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    observer: SwapObserver | None = None,
) -> list[SwapResult]:
    """Recreate the containers of ``base_image_id`` (all of them, or those in ``names``) on
    ``target_image_id``, created from one of ``target_tags`` (the bundle's) where one names it,
    and their dependents on their own images (:func:`swap_images` with one image)."""
    return swap_images(engine, [(base_image_id, target_image_id, target_tags or [])], names=names, grace=grace,
                       dry_run=dry_run, log=log, observer=observer)


def swap_images(
    engine: Engine,
    images: list[tuple[str, str, list[str]]],
    *,
    names: list[str] | None = None,
    grace: float = 10.0,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    observer: SwapObserver | None = None,
) -> list[SwapResult]:
    """Recreate the containers of every base image of ``images`` (base ID, target ID, target tags),
    or those in ``names``, each on its base's target, and their dependents on their own images:
    one set, in one order, all or nothing.

    Everything is checked and planned before any container is touched. A failure rolls every
    container of the update back and raises :class:`SwapFailedRolledBack`
    (:class:`SwapFailedNotRolledBack` if a rollback fails too).
    """
    by_base: dict[str, tuple[dict, dict, list[str]]] = {}
    for base_image_id, target_image_id, target_tags in images:
        base_image = find_image(engine, base_image_id, "base")
        target_image = find_image(engine, target_image_id, "target")
        if base_image["Id"] == target_image["Id"]:
            raise UsageError(f"the base and the target image are the same ({short(base_image['Id'])}); nothing to swap")
        by_base[base_image["Id"]] = (base_image, target_image, target_tags)
    found = survey(engine, tuple(by_base), names, {base: tags or [] for base, (_, _, tags) in by_base.items()})
    for skipped in found.skipped:
        log(printable(f"{skipped['name']}: skipped: {skipped['reason']}"))
    set_names = found.names()
    plans: list[SwapResult] = []
    for info in found.ordered:
        unit = found.compose.get(info["Id"])
        if unit is not None:  # compose recreates the service: one step for all its containers
            if not any(p.compose is unit for p in plans):
                own = info["Image"] if info["Id"] in found.dependents else by_base[info["Image"]][1]["Id"]
                plans.append(plan_compose(info, unit, own, set_names))
        elif info["Id"] in found.dependents:  # recreated on the image it runs
            own = find_image(engine, info["Image"], f"container {printable(set_names[info['Id']])}'s")
            plans.append(plan(engine, info, own, own, [], set_names))
        else:
            plans.append(plan(engine, info, *by_base[info["Image"]], set_names))
    if not plans:
        log(f"no container to swap uses image {', '.join(short(base) for base in by_base)}; nothing to swap")
    if dry_run:
        for position, planned in enumerate(plans, 1):
            line = (compose.describe(planned.compose, planned.started, planned.paused, grace, position, len(plans))
                    if planned.compose else describe(planned, grace, position, len(plans)))
            log(printable(line))
        return plans
    observer = observer or _Silent()
    observer.planned(plans)
    ready: list[SwapResult] = []
    try:
        for planned in plans:
            swap_one = _swap_compose if planned.compose else _swap_one
            ready.append(swap_one(engine, planned, grace, log, observer))
    except _Failed as failed:
        error = _roll_back_set(engine, plans, ready, failed, log, observer)
        if failed.interrupted and not isinstance(error, SwapFailedNotRolledBack):
            raise KeyboardInterrupt from None  # Ctrl-C, SIGTERM: rolled back, and the run ends as interrupted (130)
        raise error from None
    except KeyboardInterrupt:  # between two containers
        error = _roll_back_set(engine, plans, ready, None, log, observer)
        if isinstance(error, SwapFailedNotRolledBack):
            raise error from None
        raise
    for result in ready:
        _remove_old(engine, result, log, observer)
    return ready


class _Failed(Exception):
    """One container's swap failed; its own steps are undone (``failures``: what could not be), its
    old container's state is not put back yet."""

    def __init__(self, plan: SwapResult, reason: str, failures: list[str], interrupted: bool = False) -> None:
        super().__init__(reason)
        self.plan, self.reason, self.failures, self.interrupted = plan, reason, failures, interrupted


def _swap_one(
    engine: Engine, plan: SwapResult, grace: float, log: Callable[[str], None], observer: SwapObserver
) -> SwapResult:
    """Swap one container up to ready; its old container stays aside, stopped."""
    name, old_id = plan.name, plan.old_container_id
    side = name + SIDE_SUFFIX
    renamed = stopping = False
    new_id: str | None = None
    observer.step(plan, "begin")
    try:
        if plan.started:
            log(printable(f"{name}: stopping {short(old_id)} (up to {plan.stop_timeout} s)"))
            stopping = True
            if plan.paused:
                engine.unpause(old_id)  # a frozen process cannot handle its stop signal
            engine.stop(old_id, plan.stop_timeout)
            stopping = False
            observer.step(plan, "stopped")
        engine.rename(old_id, side)
        renamed = True
        observer.step(plan, "renamed")
        new_id = engine.create_container(plan.config, name)
        observer.step(plan, "created")
        for net, endpoint in plan.networks.items():
            engine.connect_network(new_id, net, endpoint)
        got = (engine.inspect_container(new_id) or {}).get("Image", "(none: the container is gone)")
        if got != plan.target_image_id:  # the name in the create body was moved to another image meanwhile
            raise EngineError(f"the new container got image {short(got)}, not {short(plan.target_image_id)}")
        log(printable(f"{name}: created {short(new_id)} on {plan.config['Image']}"))
        if plan.started:
            engine.start(new_id)
            observer.step(plan, "started")
            wait_ready(engine, new_id, grace, log, printable(name))
        if plan.paused:
            pause_if_running(engine, new_id)
            log(printable(f"{name}: paused, as the old container was"))
        observer.step(plan, "ready")
    except (Exception, KeyboardInterrupt) as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else _reason(exc)
        log(printable(f"{name}: failed ({reason}); rolling back"))
        raise _Failed(plan, reason, undo_swap(engine, plan, new_id, renamed, stopping),
                      isinstance(exc, KeyboardInterrupt)) from None
    return dataclasses.replace(plan, new_container_id=new_id)


def _swap_compose(
    engine: Engine, plan: SwapResult, grace: float, log: Callable[[str], None], observer: SwapObserver
) -> SwapResult:
    """Swap one compose service up to ready: compose recreates its containers (the old ones are
    gone then; a rollback has compose recreate them on the old image)."""
    unit = plan.compose
    assert unit is not None
    observer.step(plan, "begin")
    try:
        log(printable(f"{plan.name}: compose recreates service {unit.service} of project {unit.project.name}"
                      + (f" from {unit.image_ref}" if unit.image_ref else " on its own image")))
        new_ids = compose.swap(engine, unit, plan.target_image_id, plan.started, lambda step: observer.step(plan, step))
        log(printable(f"{plan.name}: compose created {' '.join(short(i) for i in new_ids)}"))
        for new_id in new_ids if plan.started else []:
            wait_ready(engine, new_id, grace, log, printable(plan.name))
            if plan.paused:
                pause_if_running(engine, new_id)
        observer.step(plan, "ready")
    except (Exception, KeyboardInterrupt) as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else _reason(exc)
        log(printable(f"{plan.name}: failed ({reason}); rolling back"))
        raise _Failed(plan, reason, compose.retag_back(engine, unit), isinstance(exc, KeyboardInterrupt)) from None
    return dataclasses.replace(plan, new_container_id=new_ids[0])


def _roll_back_set(engine: Engine, plans: list[SwapResult], ready: list[SwapResult], failed: _Failed | None,
                   log: Callable[[str], None], observer: SwapObserver) -> SwapFailedRolledBack | SwapFailedNotRolledBack:
    """Put back the container that failed and every one swapped before it: undo newest first, then
    restore the old containers' states in swap order (dependencies first); a compose service is
    recreated then, and so is any compose service of the update that depends on one recreated.
    The error to raise."""
    failures: dict[str, list[str]] = {failed.plan.name: list(failed.failures)} if failed else {}
    for result in reversed(ready):
        log(printable(f"{result.name}: rolling back (a later container of the update failed)"))
        failures[result.name] = compose.retag_back(engine, result.compose) if result.compose else undo_ready(engine, result)
    back = {p.name: p for p in ready + ([failed.plan] if failed else [])}
    recreated: set[str] = set()
    for planned in plans:
        old = back.get(planned.name)
        if planned.compose and (old or recreated.intersection(planned.compose.needs)):
            failures.setdefault(planned.name, [])
            failures[planned.name] += compose.recreate_old(engine, planned.compose, planned.started, planned.paused)
            recreated.update(planned.compose.containers)
        elif old:
            failures[old.name] += restore_state(engine, old)
        if old and not failures[old.name]:
            observer.step(old, "rolled-back")
    too = printable(", ".join(r.name for r in ready))
    if any(failures.values()):
        broken = " | ".join(printable(f"{p.name}: {'; '.join(failures[p.name])}; by hand: "
                                      + (p.compose.by_hand() if p.compose else
                                         by_hand(p.name, p.old_container_id, old_gone(engine, p.old_container_id))))
                            for p in plans if failures.get(p.name))
        what = f"{failed.plan.name}: swap failed ({failed.reason})" if failed else "interrupted"
        return SwapFailedNotRolledBack(printable(f"{what} and the rollback failed too ({broken})"))
    if failed is None:
        return SwapFailedRolledBack("interrupted")
    message = f"{failed.plan.name}: swap failed ({failed.reason}); the old container is back ({failed.plan.state})"
    if ready:
        message += f"; rolled back too: {too} (every container of the update is on its old container again)"
    return SwapFailedRolledBack(printable(message))


def _remove_old(engine: Engine, result: SwapResult, log: Callable[[str], None], observer: SwapObserver) -> None:
    old_id = result.old_container_id
    if result.compose:  # compose removed the old containers itself
        observer.step(result, "removed")
        return
    try:
        engine.remove_container(old_id)
        log(printable(f"{result.name}: removed the old container {short(old_id)} (volumes kept)"))
        observer.step(result, "removed")
    except EngineError as exc:
        log(printable(f"{result.name}: warning: cannot remove the old container ({exc.reason}); "
                      f"run docker rm {result.name}{SIDE_SUFFIX}"))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EngineError):
        return exc.reason
    return " ".join(str(exc).split()) or type(exc).__name__
