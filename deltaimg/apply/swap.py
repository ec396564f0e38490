"""Recreating containers onto a new image, with rollback (Docker Compose's recreate is the model).

A container is recreated from the configuration its user gave it, not from everything its inspect
data shows: the engine merges the image's defaults (Env, Cmd, Entrypoint, Labels, Healthcheck,
WorkingDir, User, ExposedPorts, Volumes, StopSignal, Shell) into the container's Config at create
time, and copying them would pin the old image's values onto the new image. So every Config value
equal to the old image's default is dropped, and the new image's defaults apply (an
``ENV VERSION=2`` in the new image is what the new container sees). The price: a value the user
set explicitly *to* the old image's default is dropped too; compose has the same blind spot.

The create call is the raw ``/containers/create`` body (``create_container_from_config``), built
from the old container's inspect data: it takes every HostConfig field as the engine reported it,
where the SDK's keyword arguments would need a translation per field and lose those it lacks.
HostConfig is copied whole (ports, restart policy, binds, mounts, tmpfs, devices, capabilities,
resources, log config, ...), with links turned back into ``name:alias`` form. Anonymous volumes
(image ``VOLUME`` or ``-v /path``) are reattached by their volume name as extra ``Mounts``, as
compose does, so their data carries over. Networks come back with their aliases (minus the old
container's short ID, which the engine adds itself), fixed IPs, links and driver options: the
primary network in the create call, the others connected before start (API < 1.44 takes one).

Not handled: containers that share a target's namespaces (``--network container:...``) or use
``--volumes-from`` it keep pointing at the removed container; containers run with ``--rm`` are
refused (stopping one deletes it).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Callable, Protocol

import docker
import docker.errors
import requests

from deltaimg.engine import dockerd as engine
from deltaimg.errors import (
    DeltaimgError,
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
# Config keys whose value the engine fills from the image when the user gives none.
IMAGE_DEFAULT_KEYS = ("User", "WorkingDir", "Healthcheck", "StopSignal", "Shell", "OnBuild")
COPIED_KEYS = ("Domainname", "AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin",
               "StdinOnce", "NetworkDisabled", "MacAddress", "StopTimeout")
ENDPOINT_KEYS = ("IPAMConfig", "Links", "Aliases", "DriverOpts")


@dataclasses.dataclass
class SwapResult:
    """One container's recreation, done or (dry run) planned."""

    name: str
    old_container_id: str
    new_container_id: str | None  # None in a dry run
    new_image_id: str
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
    client: docker.DockerClient,
    old_image_id: str,
    new_image_id: str,
    *,
    names: list[str] | None = None,
    grace: float = 10.0,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    observer: SwapObserver | None = None,
) -> list[SwapResult]:
    """Recreate the containers of ``old_image_id`` (all of them, or those in ``names``) on ``new_image_id``.

    Everything is checked and planned before any container is touched. Containers are then
    swapped one at a time; a failure rolls that container back and raises
    :class:`SwapFailedRolledBack` (:class:`SwapFailedNotRolledBack` if the rollback fails too),
    leaving the containers swapped before it on the new image.
    """
    old_image = _image(client, old_image_id, "old")
    new_image = _image(client, new_image_id, "new")
    if old_image["Id"] == new_image["Id"]:
        raise UsageError(f"the old and the new image are the same ({_short(old_image['Id'])}); nothing to swap")
    plans = [_plan(client, info, old_image, new_image) for info in _targets(client, old_image["Id"], names)]
    if not plans:
        log(f"no container uses image {_short(old_image['Id'])}; nothing to swap")
    if dry_run:
        for plan in plans:
            log(_describe(plan, grace))
        return plans
    observer = observer or _Silent()
    observer.planned(plans)
    done: list[SwapResult] = []
    for plan in plans:
        try:
            done.append(_swap_one(client, plan, grace, log, observer))
        except (SwapFailedRolledBack, SwapFailedNotRolledBack) as exc:
            if done:
                swapped = ", ".join(r.name for r in done)
                raise type(exc)(f"{exc} (already on the new image: {swapped})") from None
            raise
    return done


def _image(client: docker.DockerClient, image_id: str, which: str) -> dict:
    attrs = engine.find_image(client, image_id)
    if attrs is None:
        raise ImageReadError(f"the {which} image {image_id} is not in the engine (see docker images)")
    return attrs


def _targets(client: docker.DockerClient, image_id: str, names: list[str] | None) -> list[dict]:
    """Inspect data of the containers to swap: those named, or all (running or not) on ``image_id``."""
    try:
        if names is None:
            refs = [c["Id"] for c in client.api.containers(all=True) if c.get("ImageID") == image_id]
        else:
            refs = list(dict.fromkeys(names))
        targets = []
        for ref in refs:
            try:
                targets.append(client.api.inspect_container(ref))
            except docker.errors.NotFound:
                raise UsageError(f"no container named {ref} (see docker ps -a)") from None
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise EngineError(f"cannot list containers: {engine.one_line(exc)}") from None
    for info in targets:
        name = info["Name"].lstrip("/")
        if info["Image"] != image_id:
            raise UsageError(
                f"container {name} runs image {_short(info['Image'])}, not {_short(image_id)}; "
                "leave it out of the names"
            )
    return targets


def _plan(client: docker.DockerClient, info: dict, old_image: dict, new_image: dict) -> SwapResult:
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
    try:
        client.api.inspect_container(side)
    except docker.errors.NotFound:
        pass
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise EngineError(f"cannot inspect container {side}: {engine.one_line(exc)}") from None
    else:
        raise UsageError(f"a container named {side} already exists; remove or rename it first")
    config = _user_config(info, old_image.get("Config") or {})
    config["Image"] = _image_ref(client, info["Config"].get("Image", ""), new_image["Id"])
    config["HostConfig"] = _host_config(info)
    primary, others = _endpoints(info)
    if primary:
        config["NetworkingConfig"] = {"EndpointsConfig": primary}
    return SwapResult(
        name=name,
        old_container_id=info["Id"],
        new_container_id=None,
        new_image_id=new_image["Id"],
        started=bool(info["State"].get("Running")),
        config=config,
        networks=others,
        stop_timeout=info["Config"].get("StopTimeout") or DEFAULT_STOP_TIMEOUT,
    )


def _user_config(info: dict, image_config: dict) -> dict:
    """The container's Config minus what the engine filled in from the old image."""
    config, host = info["Config"], info["HostConfig"]
    body: dict = {key: config[key] for key in COPIED_KEYS if config.get(key)}
    shares_uts = host.get("NetworkMode", "") == "host" or host.get("NetworkMode", "").startswith("container:")
    # The engine sets an unset hostname to the short ID (or the host's name, which it refuses as input).
    if config.get("Hostname") and config["Hostname"] != info["Id"][:12] and not shares_uts:
        body["Hostname"] = config["Hostname"]
    for key in IMAGE_DEFAULT_KEYS:
        if config.get(key) and config[key] != image_config.get(key):
            body[key] = config[key]
    image_env = set(image_config.get("Env") or [])
    env = [e for e in config.get("Env") or [] if e not in image_env]
    if env:
        body["Env"] = env
    image_labels = image_config.get("Labels") or {}
    labels = {k: v for k, v in (config.get("Labels") or {}).items() if image_labels.get(k) != v}
    if labels:
        body["Labels"] = labels
    bound = host.get("PortBindings") or {}
    image_ports = image_config.get("ExposedPorts") or {}
    ports = {p: {} for p in config.get("ExposedPorts") or {} if p in bound or p not in image_ports}
    if ports:
        body["ExposedPorts"] = ports
    image_volumes = image_config.get("Volumes") or {}
    volumes = {v: {} for v in config.get("Volumes") or {} if v not in image_volumes}
    if volumes:
        body["Volumes"] = volumes
    # The engine only fills Cmd from the image when no Entrypoint was given: a user's Entrypoint
    # comes with a Cmd that is the user's too (possibly none). An empty list keeps an entrypoint
    # the user cleared from coming back from the image.
    entrypoint = config.get("Entrypoint") or []
    if entrypoint != (image_config.get("Entrypoint") or []):
        body["Entrypoint"] = entrypoint
        if entrypoint and config.get("Cmd"):
            body["Cmd"] = config["Cmd"]
    if "Cmd" not in body and config.get("Cmd") and config["Cmd"] != image_config.get("Cmd"):
        body["Cmd"] = config["Cmd"]
    return body


def _image_ref(client: docker.DockerClient, user_ref: str, new_image_id: str) -> str:
    """The user's image name when it now names the new image (``docker ps`` stays readable), else the ID."""
    attrs = engine.find_image(client, user_ref) if user_ref and not user_ref.startswith("sha256:") else None
    return user_ref if attrs is not None and attrs["Id"] == new_image_id else new_image_id


def _host_config(info: dict) -> dict:
    host = copy.deepcopy(info["HostConfig"])
    # Inspect shows links as "/target:/name/alias"; create wants "target:alias".
    if host.get("Links"):
        host["Links"] = [
            f"{target.lstrip('/')}:{alias.rsplit('/', 1)[-1]}"
            for target, alias in (link.split(":", 1) for link in host["Links"])
        ]
    # Anonymous volumes are reattached by the name the engine gave them: those from image VOLUMEs
    # or -v /path become extra Mounts, those from --mount type=volume without a source get it.
    volume_names = {m["Destination"]: m["Name"] for m in info.get("Mounts") or [] if m.get("Type") == "volume"}
    for mount in host.get("Mounts") or []:
        if mount.get("Type") == "volume" and not mount.get("Source") and mount.get("Target") in volume_names:
            mount["Source"] = volume_names[mount["Target"]]
    claimed = {bind.split(":")[1] for bind in host.get("Binds") or [] if ":" in bind}
    claimed |= {m.get("Target") for m in host.get("Mounts") or []}
    anonymous = [
        {"Type": "volume", "Source": m["Name"], "Target": m["Destination"], "ReadOnly": not m.get("RW", True)}
        for m in info.get("Mounts") or []
        if m.get("Type") == "volume" and m["Destination"] not in claimed
    ]
    if anonymous:
        host["Mounts"] = (host.get("Mounts") or []) + anonymous
    return host


def _endpoints(info: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """EndpointConfigs of the container's networks: ({primary: config}, {other: config, ...})."""
    mode = info["HostConfig"].get("NetworkMode") or "default"
    if mode in ("host", "none") or mode.startswith("container:"):
        return {}, {}
    primary_name = "bridge" if mode == "default" else mode
    short_id = info["Id"][:12]
    primary: dict[str, dict] = {}
    others: dict[str, dict] = {}
    for net, settings in (info["NetworkSettings"].get("Networks") or {}).items():
        endpoint = {k: settings[k] for k in ENDPOINT_KEYS if settings.get(k)}
        aliases = [a for a in endpoint.get("Aliases", []) if a != short_id]
        if aliases:
            endpoint["Aliases"] = aliases
        else:
            endpoint.pop("Aliases", None)
        is_primary = net == primary_name or (len(mode) >= 12 and settings.get("NetworkID", "").startswith(mode))
        (primary if is_primary and not primary else others)[net] = endpoint
    return primary, others


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
    client: docker.DockerClient, plan: SwapResult, grace: float, log: Callable[[str], None], observer: SwapObserver
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
            client.api.stop(old_id, timeout=plan.stop_timeout)
            stopping = False
            observer.step(plan, "stopped")
        client.api.rename(old_id, side)
        renamed = True
        observer.step(plan, "renamed")
        new_id = client.api.create_container_from_config(plan.config, name=name)["Id"]
        observer.step(plan, "created")
        for net, endpoint in plan.networks.items():
            _connect(client, new_id, net, endpoint)
        got = client.api.inspect_container(new_id)["Image"]
        if got != plan.new_image_id:  # the name in the create body was moved to another image meanwhile
            raise EngineError(f"the new container got image {_short(got)}, not {_short(plan.new_image_id)}")
        log(f"{name}: created {_short(new_id)} on {plan.config['Image']}")
        if plan.started:
            client.api.start(new_id)
            observer.step(plan, "started")
            _wait_ready(client, new_id, grace, log, name)
        observer.step(plan, "ready")
    except (Exception, KeyboardInterrupt) as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else _reason(exc)
        log(f"{name}: failed ({reason}); rolling back")
        _rollback(client, plan, new_id, renamed, stopping, reason)
        raise SwapFailedRolledBack(
            f"{name}: swap failed ({reason}); the old container is back" + (" and running" if plan.started else "")
        ) from None
    try:
        client.api.remove_container(old_id, v=False)
        log(f"{name}: removed the old container {_short(old_id)} (volumes kept)")
        observer.step(plan, "removed")
    except (docker.errors.DockerException, requests.RequestException) as exc:
        log(f"{name}: warning: cannot remove the old container ({engine.one_line(exc)}); run docker rm {side}")
    return dataclasses.replace(plan, new_container_id=new_id)


def _connect(client: docker.DockerClient, container_id: str, net: str, endpoint: dict) -> None:
    ipam = endpoint.get("IPAMConfig") or {}
    client.api.connect_container_to_network(
        container_id,
        net,
        ipv4_address=ipam.get("IPv4Address") or None,
        ipv6_address=ipam.get("IPv6Address") or None,
        link_local_ips=ipam.get("LinkLocalIPs") or None,
        aliases=endpoint.get("Aliases"),
        links=[tuple(link.split(":", 1)) if ":" in link else (link, None) for link in endpoint.get("Links") or []]
        or None,
        driver_opt=endpoint.get("DriverOpts"),
    )


def _wait_ready(
    client: docker.DockerClient, container_id: str, grace: float, log: Callable[[str], None], name: str
) -> None:
    """Return once the started container is healthy (with a healthcheck) or has stayed up ``grace`` s."""
    info = client.api.inspect_container(container_id)
    started_at = info["State"].get("StartedAt")
    check = info["Config"].get("Healthcheck") or {}
    has_health = bool(check.get("Test")) and check["Test"][0] != "NONE"
    budget = max(grace, _health_budget(check)) if has_health else grace
    log(f"{name}: started; waiting up to {budget:g} s for it to be " + ("healthy" if has_health else "stable"))
    deadline = time.monotonic() + budget
    while True:
        info = client.api.inspect_container(container_id)
        state = info["State"]
        if not state.get("Running") or state.get("Restarting"):
            raise _NotReady(f"it exited with code {state.get('ExitCode')}{_last_output(client, container_id)}")
        if info.get("RestartCount") or state.get("StartedAt") != started_at:
            raise _NotReady(f"it restarted{_last_output(client, container_id)}")
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


def _last_output(client: docker.DockerClient, container_id: str) -> str:
    try:
        tail = client.api.logs(container_id, tail=1).decode("utf-8", "replace")
    except (docker.errors.DockerException, requests.RequestException):
        return ""
    tail = " ".join(tail.split())[:200]
    return f" (last output: {tail})" if tail else ""


def _rollback(client: docker.DockerClient, plan: SwapResult, new_id: str | None, renamed: bool, stopping: bool,
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
        steps.append(("remove the new container", lambda: remove_new_container(client, new_id, old_id)))
    if renamed:
        steps.append((f"rename the old one back to {name}", lambda: client.api.rename(old_id, name)))
    if stopping:
        steps.append(("finish stopping the old one", lambda: client.api.stop(old_id, timeout=plan.stop_timeout)))
    if plan.started:
        steps.append(("start the old one", lambda: client.api.start(old_id)))
    failures = []
    for what, step in steps:
        try:
            step()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            failures.append(f"cannot {what}: {engine.one_line(exc)}")
    if failures:
        raise SwapFailedNotRolledBack(
            f"{name}: swap failed ({reason}) and the rollback failed too ({'; '.join(failures)}); "
            f"by hand: docker rm -f any new {name}, docker rename {_short(old_id)} {name}, docker start {name}"
        )


def remove_new_container(client: docker.DockerClient, new_id: str, old_id: str) -> None:
    """Remove a new container that is not kept, and the anonymous volumes the engine made for it
    alone (a ``VOLUME`` only the new image declares): they would be left behind, dangling. A
    volume the old container mounts is never removed, and none is when the old one is gone."""
    new = client.api.inspect_container(new_id)
    client.api.remove_container(new_id, force=True, v=False)
    try:
        old = client.api.inspect_container(old_id)
    except docker.errors.NotFound:
        return
    kept = {m.get("Name") for m in old.get("Mounts") or []}
    for mount in new.get("Mounts") or []:
        if mount.get("Type") != "volume" or mount.get("Name") in kept:
            continue
        try:
            client.api.remove_volume(mount["Name"])
        except docker.errors.APIError as exc:
            if exc.status_code not in (404, 409):  # gone already, or in use by another container
                raise


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (DeltaimgError, _NotReady)):
        return str(exc)
    return engine.one_line(exc)


def _short(object_id: str) -> str:
    return object_id.removeprefix("sha256:")[:12]


class _NotReady(Exception):
    """The started container did not become healthy or stable."""
