"""Recreating containers onto a target image, with rollback (Docker Compose's recreate is the model).

Each container is checked first (no leftover side container, no ``--rm``), then in turn renamed
aside, recreated from :func:`deltaimg.apply.recreate.create_body`, started and waited on until it
runs (and is healthy, when it has a healthcheck); any failure puts the old container back.

Not handled: containers that share a target's namespaces (``--network container:...``) or use
``--volumes-from`` it keep pointing at the removed container; containers run with ``--rm`` are
refused (stopping one deletes it).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Protocol

from deltaimg.apply.recreate import create_body
from deltaimg.engine.interface import Engine
from deltaimg.errors import (
    EngineError,
    ImageReadError,
    SwapFailedNotRolledBack,
    SwapFailedRolledBack,
    UsageError,
)

SIDE_SUFFIX = "-deltaimg-old"
DEFAULT_STOP_TIMEOUT = 10  # seconds; the engine's own default
POLL = 0.5
NS = 1e9
# The engine's healthcheck defaults, used for fields a healthcheck leaves at 0.
HEALTH_INTERVAL, HEALTH_TIMEOUT, HEALTH_RETRIES = 30.0, 30.0, 3


@dataclasses.dataclass
class SwapResult:
    """One container's recreation, done or (dry run) planned."""

    name: str
    old_container_id: str
    new_container_id: str | None  # None in a dry run
    target_image_id: str
    started: bool  # the new container is (or would be) started: the old one was running
    config: dict  # the /containers/create body
    networks: dict[str, dict] = dataclasses.field(default_factory=dict)  # further networks: name -> EndpointConfig
    stop_timeout: int = DEFAULT_STOP_TIMEOUT


class SwapObserver(Protocol):
    """Told what a swap is about to do and has done, so a journal can record it (deltaimg.journal).

    ``step`` is called with ``begin`` before a container is touched, then after the engine did each
    of ``stopped`` (only for a running container), ``renamed``, ``created``, ``started`` (idem),
    ``ready`` (the new container passed its check) and ``removed`` (the old one is gone). An
    exception from the observer before ``removed`` rolls the container back like any failure.
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
    grace: float = 10.0,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    observer: SwapObserver | None = None,
) -> list[SwapResult]:
    """Recreate the containers of ``base_image_id`` (all of them, or those in ``names``) on ``target_image_id``.

    Everything is checked and planned before any container is touched. Containers are then
    swapped one at a time; a failure rolls that container back and raises
    :class:`SwapFailedRolledBack` (:class:`SwapFailedNotRolledBack` if the rollback fails too),
    leaving the containers swapped before it on the target image.
    """
    base_image = _image(engine, base_image_id, "base")
    target_image = _image(engine, target_image_id, "target")
    if base_image["Id"] == target_image["Id"]:
        raise UsageError(f"the base and the target image are the same ({_short(base_image['Id'])}); nothing to swap")
    plans = [_plan(engine, info, base_image, target_image) for info in _targets(engine, base_image["Id"], names)]
    if not plans:
        log(f"no container uses image {_short(base_image['Id'])}; nothing to swap")
    if dry_run:
        for plan in plans:
            log(_describe(plan, grace))
        return plans
    observer = observer or _Silent()
    observer.planned(plans)
    done: list[SwapResult] = []
    for plan in plans:
        try:
            done.append(_swap_one(engine, plan, grace, log, observer))
        except (SwapFailedRolledBack, SwapFailedNotRolledBack) as exc:
            if done:
                swapped = ", ".join(r.name for r in done)
                raise type(exc)(f"{exc} (already on the target image: {swapped})") from None
            raise
    return done


def _image(engine: Engine, image_id: str, which: str) -> dict:
    attrs = engine.find_image(image_id)
    if attrs is None:
        raise ImageReadError(f"the {which} image {image_id} is not in the engine (see docker images)")
    return attrs


def _targets(engine: Engine, image_id: str, names: list[str] | None) -> list[dict]:
    """Inspect data of the containers to swap: those named, or all (running or not) on ``image_id``."""
    if names is None:
        refs = [c["Id"] for c in engine.containers() if c.get("ImageID") == image_id]
    else:
        refs = list(dict.fromkeys(names))
    targets = []
    for ref in refs:
        info = engine.inspect_container(ref)
        if info is None:
            raise UsageError(f"no container named {ref} (see docker ps -a)")
        targets.append(info)
    for info in targets:
        name = info["Name"].lstrip("/")
        if info["Image"] != image_id:
            raise UsageError(
                f"container {name} runs image {_short(info['Image'])}, not {_short(image_id)}; "
                "leave it out of the names"
            )
    return targets


def _plan(engine: Engine, info: dict, base_image: dict, target_image: dict) -> SwapResult:
    """Check one container can be swapped and work out its create body."""
    name = info["Name"].lstrip("/")
    side = name + SIDE_SUFFIX
    if name.endswith(SIDE_SUFFIX):
        raise UsageError(
            f"container {name} is left over from an interrupted swap; remove it (docker rm {name}) or "
            f"rename it back (docker rename {name} {name.removesuffix(SIDE_SUFFIX)}) first"
        )
    if info["HostConfig"].get("AutoRemove"):
        raise UsageError(f"container {name} runs with --rm, so stopping it deletes it; recreate it without --rm first")
    if engine.inspect_container(side) is not None:
        raise UsageError(f"a container named {side} already exists; remove or rename it first")
    image_ref = _image_ref(engine, info["Config"].get("Image", ""), target_image["Id"])
    config, others = create_body(info, base_image.get("Config") or {}, image_ref)
    return SwapResult(
        name=name,
        old_container_id=info["Id"],
        new_container_id=None,
        target_image_id=target_image["Id"],
        started=bool(info["State"].get("Running")),
        config=config,
        networks=others,
        stop_timeout=info["Config"].get("StopTimeout") or DEFAULT_STOP_TIMEOUT,
    )


def _image_ref(engine: Engine, user_ref: str, target_image_id: str) -> str:
    """The user's image name when it now names the target image (``docker ps`` stays readable), else the ID."""
    attrs = engine.find_image(user_ref) if user_ref and not user_ref.startswith("sha256:") else None
    return user_ref if attrs is not None and attrs["Id"] == target_image_id else target_image_id


def _describe(plan: SwapResult, grace: float) -> str:
    config, host = plan.config, plan.config["HostConfig"]
    kept = [k for k in config if k not in ("Image", "HostConfig", "NetworkingConfig")]
    mounts = [b.split(":")[1] for b in host.get("Binds") or [] if ":" in b]
    mounts += [m["Target"] for m in host.get("Mounts") or []]
    networks = list((config.get("NetworkingConfig") or {}).get("EndpointsConfig", {})) + list(plan.networks)
    side = plan.name + SIDE_SUFFIX
    if plan.started:
        first = f"would stop {_short(plan.old_container_id)} and rename it {side}"
        after = f"start it and wait until healthy or {grace:g} s up"
    else:
        first, after = f"would rename {_short(plan.old_container_id)} (stopped) {side}", "leave it stopped"
    return (
        f"{plan.name}: {first}, "
        f"create {plan.name} on {config['Image']} keeping {', '.join(kept) or 'no Config overrides'}, "
        f"mounts {' '.join(mounts) or 'none'}, networks {' '.join(networks) or 'none'}; {after}; "
        "then remove the old container (volumes kept)"
    )


def _swap_one(
    engine: Engine, plan: SwapResult, grace: float, log: Callable[[str], None], observer: SwapObserver
) -> SwapResult:
    name, old_id = plan.name, plan.old_container_id
    side = name + SIDE_SUFFIX
    renamed = stopping = False
    new_id: str | None = None
    observer.step(plan, "begin")
    try:
        if plan.started:
            log(f"{name}: stopping {_short(old_id)} (up to {plan.stop_timeout} s)")
            stopping = True
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
            raise EngineError(f"the new container got image {_short(got)}, not {_short(plan.target_image_id)}")
        log(f"{name}: created {_short(new_id)} on {plan.config['Image']}")
        if plan.started:
            engine.start(new_id)
            observer.step(plan, "started")
            _wait_ready(engine, new_id, grace, log, name)
        observer.step(plan, "ready")
    except (Exception, KeyboardInterrupt) as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else _reason(exc)
        log(f"{name}: failed ({reason}); rolling back")
        _rollback(engine, plan, new_id, renamed, stopping, reason)
        raise SwapFailedRolledBack(
            f"{name}: swap failed ({reason}); the old container is back" + (" and running" if plan.started else "")
        ) from None
    try:
        engine.remove_container(old_id)
        log(f"{name}: removed the old container {_short(old_id)} (volumes kept)")
        observer.step(plan, "removed")
    except EngineError as exc:
        log(f"{name}: warning: cannot remove the old container ({exc.reason}); run docker rm {side}")
    return dataclasses.replace(plan, new_container_id=new_id)


def _wait_ready(
    engine: Engine, container_id: str, grace: float, log: Callable[[str], None], name: str
) -> None:
    """Return once the started container is healthy (with a healthcheck) or has stayed up ``grace`` s."""
    info = _inspect(engine, container_id)
    started_at = info["State"].get("StartedAt")
    check = info["Config"].get("Healthcheck") or {}
    has_health = bool(check.get("Test")) and check["Test"][0] != "NONE"
    budget = max(grace, _health_budget(check)) if has_health else grace
    log(f"{name}: started; waiting up to {budget:g} s for it to be " + ("healthy" if has_health else "stable"))
    deadline = time.monotonic() + budget
    while True:
        info = _inspect(engine, container_id)
        state = info["State"]
        if not state.get("Running") or state.get("Restarting"):
            raise _NotReady(f"it exited with code {state.get('ExitCode')}{_last_output(engine, container_id)}")
        if info.get("RestartCount") or state.get("StartedAt") != started_at:
            raise _NotReady(f"it restarted{_last_output(engine, container_id)}")
        health = (state.get("Health") or {}).get("Status")
        if has_health and health == "healthy":
            log(f"{name}: healthy")
            return
        if has_health and health == "unhealthy":
            probes = (state.get("Health") or {}).get("Log") or [{}]
            output = " ".join(str(probes[-1].get("Output", "")).split())[:200]
            raise _NotReady(f"it is unhealthy{': ' + output if output else ''}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if has_health:
                raise _NotReady(f"it did not become healthy within {budget:g} s")
            log(f"{name}: up for {grace:g} s")
            return
        time.sleep(min(POLL, remaining))


def _health_budget(check: dict) -> float:
    """Seconds after which the engine must have called a container healthy or unhealthy."""
    interval = check.get("Interval", 0) / NS or HEALTH_INTERVAL
    timeout = check.get("Timeout", 0) / NS or HEALTH_TIMEOUT
    retries = check.get("Retries", 0) or HEALTH_RETRIES
    return check.get("StartPeriod", 0) / NS + (interval + timeout) * (retries + 1)


def _inspect(engine: Engine, container_id: str) -> dict:
    info = engine.inspect_container(container_id)
    if info is None:
        raise _NotReady("it was removed")
    return info


def _last_output(engine: Engine, container_id: str) -> str:
    tail = engine.last_output(container_id)
    return f" (last output: {tail})" if tail else ""


def _rollback(engine: Engine, plan: SwapResult, new_id: str | None, renamed: bool, stopping: bool,
              reason: str) -> None:
    """Undo the steps done so far; raise SwapFailedNotRolledBack if any undo fails.

    Every step is tried even when one fails, so the old container runs again if at all possible
    (under its side name if it cannot get its own back). A container that was running is started
    whether or not its stop went through: starting a running container is a no-op. So when the
    stop call itself was cut short (``stopping``: SIGTERM, a timeout), the engine may still be
    stopping it: the stop is waited out first, else the container would end up stopped.
    """
    name, old_id = plan.name, plan.old_container_id
    steps: list[tuple[str, Callable[[], object]]] = []
    if new_id is not None:
        steps.append(("remove the new container", lambda: remove_new_container(engine, new_id, old_id)))
    if renamed:
        steps.append((f"rename the old one back to {name}", lambda: engine.rename(old_id, name)))
    if stopping:
        steps.append(("finish stopping the old one", lambda: engine.stop(old_id, plan.stop_timeout)))
    if plan.started:
        steps.append(("start the old one", lambda: engine.start(old_id)))
    failures = []
    for what, step in steps:
        try:
            step()
        except EngineError as exc:
            failures.append(f"cannot {what}: {exc.reason}")
    if failures:
        raise SwapFailedNotRolledBack(
            f"{name}: swap failed ({reason}) and the rollback failed too ({'; '.join(failures)}); "
            f"by hand: docker rm -f any new {name}, docker rename {_short(old_id)} {name}, docker start {name}"
        )


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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EngineError):
        return exc.reason
    return " ".join(str(exc).split()) or type(exc).__name__


def _short(object_id: str) -> str:
    return object_id.removeprefix("sha256:")[:12]


class _NotReady(Exception):
    """The started container did not become healthy or stable."""
