"""Working out a swap before any container is touched: which containers, in which state, in which
order, with which create body; and what leaves one container out.

Checked for the whole set before anything changes (:func:`survey`, which the unattended apply
runs before it loads the image):

- a container run with ``--rm`` is left out alone and reported (stopping it would delete it);
- the containers that depend on one of the set (:mod:`deltaimg.apply.dependents`) join it, to be
  recreated on their own image; the set is swapped dependencies first, else oldest first;
- the containers of a Compose project are recreated by compose, a service at a time, in
  compose's order (:mod:`deltaimg.apply.compose`, which checks them).
"""

from __future__ import annotations

import dataclasses
import datetime

from deltaimg.apply import compose
from deltaimg.apply.chain import parse_time
from deltaimg.apply.recreate import create_body
from deltaimg.engine.interface import Engine
from deltaimg.apply.dependents import describe_links, find_dependents, in_order, name_references
from deltaimg.errors import ImageReadError, UsageError, printable

TASK_LABEL = "com.docker.swarm.service.id"  # on every container a Swarm task runs: Swarm's, never swapped

SIDE_SUFFIX = "-deltaimg-old"
DEFAULT_STOP_TIMEOUT = 10  # seconds; the engine's own default
RUNNING, PAUSED, CREATED = "running", "paused", "created"
EPOCH = datetime.datetime.fromtimestamp(0, datetime.timezone.utc)


@dataclasses.dataclass
class SwapResult:
    """One container's recreation, done or (dry run) planned."""

    name: str
    old_container_id: str
    new_container_id: str | None  # None in a dry run
    target_image_id: str
    started: bool  # the new container is (or would be) started: the old one was running or paused
    config: dict  # the /containers/create body
    networks: dict[str, dict] = dataclasses.field(default_factory=dict)  # further networks: name -> EndpointConfig
    stop_timeout: int = DEFAULT_STOP_TIMEOUT
    paused: bool = False  # the old container was paused: the new one is paused once it passed its check
    depends_on: list[str] = dataclasses.field(default_factory=list)  # "X (--network)": in the set, for the dry run
    compose: compose.Unit | None = None  # a compose service: compose recreates its containers (config unused)

    @property
    def state(self) -> str:
        """What the old container was, and the new one becomes: running, paused or created."""
        return PAUSED if self.paused else RUNNING if self.started else CREATED


@dataclasses.dataclass
class Survey:
    """The containers an update swaps (inspect data, in swap order), which of them are dependents
    (recreated on their own image), and those it leaves out, with why."""

    ordered: list[dict]
    dependents: set[str] = dataclasses.field(default_factory=set)  # container IDs
    skipped: list[dict] = dataclasses.field(default_factory=list)  # [{"name", "reason"}]
    compose: dict[str, compose.Unit] = dataclasses.field(default_factory=dict)  # container ID -> its service

    def names(self) -> dict[str, str]:
        """ID -> name of every container of the set."""
        return {info["Id"]: _name(info) for info in self.ordered}


def survey(engine: Engine, image_id: str | tuple[str, ...], names: list[str] | None,
           target_tags: dict[str, list[str]] | None = None) -> Survey:
    """The containers to swap from ``image_id`` (one or several base images: all their containers,
    or those in ``names``: each once, however named), checked as a set; compose services checked
    against ``target_tags`` (base image ID -> the tags its target takes) when given.

    Raises :class:`UsageError` for a named container that is missing or on another image,
    :class:`DependentsError` for a dependent that cannot be recreated and :class:`ComposeError`
    for compose containers compose cannot recreate as the update needs."""
    bases = (image_id,) if isinstance(image_id, str) else image_id
    if names is None:
        refs = [c["Id"] for c in engine.containers() if c.get("ImageID") in bases
                and TASK_LABEL not in (c.get("Labels") or {})]  # Swarm's: its rolling update replaces them
    else:
        refs = list(dict.fromkeys(names))
    found: dict[str, dict] = {}
    for ref in refs:
        info = engine.inspect_container(ref)
        if info is None:
            raise UsageError(f"no container named {printable(ref)} (see docker ps -a)")
        if info["Image"] not in bases:
            raise UsageError(f"container {printable(_name(info))} runs image {short(info['Image'])}, not "
                             f"{' or '.join(map(short, bases))}; "
                             "leave it out of the names")
        found.setdefault(info["Id"], info)  # named twice (its name and its ID): one container
    targets, skipped = [], []
    for info in found.values():
        if TASK_LABEL in (info["Config"].get("Labels") or {}):
            skipped.append({"name": _name(info), "reason": "it is a Swarm task; its service's rolling update replaces it"})
        elif info["HostConfig"].get("AutoRemove"):
            skipped.append({"name": _name(info), "reason": "it runs with --rm, so stopping it deletes it; "
                                                           "recreate it by hand"})
        else:
            targets.append(info)
    dependents = find_dependents(engine, targets)
    ordered = in_order(targets + dependents, key=_age)
    dependent_ids = {info["Id"] for info in dependents}
    units = compose.check(engine, ordered, dependent_ids, target_tags, names is not None)
    return Survey(_compose_order(ordered, units), dependent_ids, sorted(skipped, key=lambda s: s["name"]), units)


def _compose_order(ordered: list[dict], units: dict[str, compose.Unit]) -> list[dict]:
    """``ordered`` with the containers of each compose project, in the places they hold, put in
    compose's service order (dependencies first, as ``depends_on`` says too)."""
    for project in dict.fromkeys(unit.project for unit in units.values()):
        places = [n for n, info in enumerate(ordered) if info["Id"] in units and units[info["Id"]].project == project]
        members = sorted((ordered[n] for n in places), key=lambda info: units[info["Id"]].rank)
        for n, info in zip(places, members):
            ordered[n] = info
    return ordered


def plan_compose(info: dict, unit: compose.Unit, target_image_id: str, set_names: dict[str, str]) -> SwapResult:
    """The swap of a compose service (``info``: its first container): compose recreates it."""
    state = info["State"]
    return SwapResult(name=_name(info), old_container_id=info["Id"], new_container_id=None,
                      target_image_id=target_image_id, started=bool(state.get("Running")),
                      paused=bool(state.get("Running") and state.get("Paused")), config={},
                      depends_on=describe_links(info, set_names), compose=unit)


def plan(engine: Engine, info: dict, base_image: dict, target_image: dict, target_tags: list[str],
         set_names: dict[str, str]) -> SwapResult:
    """Check one container can be swapped and work out its create body; ``set_names`` (ID -> name)
    are the containers of the update, which the body names rather than by their old IDs."""
    name = _name(info)
    side = name + SIDE_SUFFIX
    if name.endswith(SIDE_SUFFIX):
        name = printable(name)
        raise UsageError(
            f"container {name} is left over from an interrupted swap; remove it (docker rm {name}) or "
            f"rename it back (docker rename {name} {name.removesuffix(SIDE_SUFFIX)}) first"
        )
    if engine.inspect_container(side) is not None:
        raise UsageError(f"a container named {printable(side)} already exists; remove or rename it first")
    ref = image_ref(engine, info["Config"].get("Image", ""), target_image["Id"], target_tags)
    config, others = create_body(info, base_image.get("Config") or {}, ref)
    config["HostConfig"] = name_references(config["HostConfig"], set_names)
    state = info["State"]
    return SwapResult(
        name=name,
        old_container_id=info["Id"],
        new_container_id=None,
        target_image_id=target_image["Id"],
        started=bool(state.get("Running")),
        paused=bool(state.get("Running") and state.get("Paused")),
        config=config,
        networks=others,
        stop_timeout=DEFAULT_STOP_TIMEOUT if info["Config"].get("StopTimeout") is None else info["Config"]["StopTimeout"],
        depends_on=describe_links(info, set_names),
    )


def image_ref(engine: Engine, user_ref: str, target_image_id: str, target_tags: list[str]) -> str:
    """The name the new container is created from, which ``docker ps`` shows: the user's own when
    it names the target image now; else the bundle's target tag (of the user's repository if it
    has one there), when it names the target; else the target's ID."""
    if user_ref and not user_ref.startswith("sha256:") and _names(engine, user_ref, target_image_id):
        return user_ref
    repo = user_ref.rsplit(":", 1)[0] if ":" in user_ref.rsplit("/", 1)[-1] else user_ref
    ranked = sorted(target_tags, key=lambda tag: tag.rsplit(":", 1)[0] != repo)
    for tag in ranked:
        if _names(engine, tag, target_image_id):
            return tag
    return target_image_id


def _names(engine: Engine, ref: str, image_id: str) -> bool:
    attrs = engine.find_image(ref)
    return attrs is not None and attrs["Id"] == image_id


def describe(plan: SwapResult, grace: float, position: int, count: int) -> str:
    """One dry-run line: the container's place in the order, its state, and what its swap does."""
    config, host = plan.config, plan.config["HostConfig"]
    kept = [k for k in config if k not in ("Image", "HostConfig", "NetworkingConfig")]
    mounts = [b.split(":")[1] for b in host.get("Binds") or [] if ":" in b]
    mounts += [m["Target"] for m in host.get("Mounts") or []]
    networks = list((config.get("NetworkingConfig") or {}).get("EndpointsConfig", {})) + list(plan.networks)
    side = plan.name + SIDE_SUFFIX
    if plan.started:
        first = f"would stop {short(plan.old_container_id)} ({plan.state}) and rename it {side}"
        after = f"start it and wait until healthy or {grace:g} s up" + ("; pause it" if plan.paused else "")
    else:
        first, after = f"would rename {short(plan.old_container_id)} ({plan.state}) {side}", "leave it created"
    return (
        f"{position}/{count} {plan.name}: {first}, "
        f"create {plan.name} on {config['Image']} keeping {', '.join(kept) or 'no Config overrides'}, "
        f"mounts {' '.join(mounts) or 'none'}, networks {' '.join(networks) or 'none'}; {after}; "
        "once every container is ready, remove the old ones (volumes kept)"
        + (f"; after {', '.join(plan.depends_on)}, which it depends on" if plan.depends_on else "")
    )


def find_image(engine: Engine, image_id: str, which: str) -> dict:
    attrs = engine.find_image(image_id)
    if attrs is None:
        raise ImageReadError(f"the {which} image {image_id} is not in the engine (see docker images)")
    return attrs


def _age(info: dict) -> tuple[datetime.datetime, str]:
    """Oldest first (the engine's ``Created`` has nanoseconds with trailing zeros cut: not sortable as text)."""
    return parse_time(info.get("Created")) or EPOCH, _name(info)


def _name(info: dict) -> str:
    return info["Name"].lstrip("/")


def short(object_id: str) -> str:
    return object_id.removeprefix("sha256:")[:12]
