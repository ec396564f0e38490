"""Containers of a Docker Compose project: compose owns them, so compose recreates them.

A container compose created (``com.docker.compose.*`` labels, not a one-off ``run``) is not
recreated by deltaimg from a copy of its config: the copy would carry compose's
``config-hash`` label, and compose would later think it up to date while the compose file's tag
still names the base. Instead the update's containers are grouped by project and service, and
each service is one step of the update:

- checked before anything changes (:func:`check`): a compose program is installed; the compose
  file still defines the service and names, for a service on the base image, a tag the bundle
  moves (one of its target tags; else the file pins another version, and the message names the
  file, the service and the tag to set); the file was not changed since the container was
  created (compose's own ``config --hash`` against the container's label); no container outside
  the project depends on one of it;
- swapped once the target is loaded and tagged: the service's tag is on the target, and
  ``up -d --no-deps --force-recreate SERVICE`` (``--no-start`` for a container that was not
  running) lets compose replace its containers, in compose's dependency order;
- rolled back by putting the tag back on the image the old containers ran and the same recreate,
  so compose makes the old version's containers again; named volumes are compose's own and kept.

Compose 1.29 hashes a service's config together with the ID of the image its tag names, so its
hash is compared only while the tag names the container's own image (the unattended apply checks
before it loads and tags the target); the plugin's hash leaves the image out and is always compared.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from deltaimg.apply.dependents import dependencies
from deltaimg.engine import compose_cli
from deltaimg.engine.compose_cli import CONFIG_HASH, ONE_OFF, SERVICE, Compose, Project
from deltaimg.engine.interface import Engine
from deltaimg.errors import ComposeError, printable

UP_TIMEOUT = 600.0  # seconds one service's recreate may take (its stop timeout included)


@dataclasses.dataclass
class Unit:
    """One compose service of an update: its containers, recreated together by compose."""

    project: Project
    service: str
    image_ref: str | None  # the tag its compose file names, moved onto the target; None: a dependent, on its own image
    old_image_id: str  # the image its old containers run
    containers: list[str]  # names of its old containers
    needs: list[str] = dataclasses.field(default_factory=list)  # names of containers of the update it depends on
    program: list[str] = dataclasses.field(default_factory=list)
    rank: int = 0  # the service's place in compose's order of its project

    def as_json(self) -> dict:
        return {"project": self.project.name, "working_dir": self.project.working_dir,
                "config_files": list(self.project.config_files), "service": self.service, "image_ref": self.image_ref,
                "old_image": self.old_image_id, "containers": self.containers, "needs": self.needs}

    @classmethod
    def from_json(cls, record: dict) -> Unit:
        project = Project(str(record.get("project")), str(record.get("working_dir")),
                          tuple(str(f) for f in record.get("config_files") or []))
        ref = record.get("image_ref")
        return cls(project, str(record.get("service")), None if ref is None else str(ref), str(record.get("old_image")),
                   [str(c) for c in record.get("containers") or []], [str(n) for n in record.get("needs") or []])

    def by_hand(self) -> str:
        tag = f"docker tag {self.old_image_id[7:19]} {self.image_ref}, then " if self.image_ref else ""
        return printable(f"{tag}docker-compose up -d {self.service} in {self.project.working_dir}")


def project_of(info: dict) -> Project | None:
    labels = info["Config"].get("Labels") or {}
    return None if labels.get(ONE_OFF) == "True" else Project.from_labels(labels)


def check(engine: Engine, ordered: list[dict], dependents: set[str], target_tags: dict[str, list[str]] | None,
          named: bool) -> dict[str, Unit]:
    """Container ID -> its service's :class:`Unit`, for every compose container of the update
    (``ordered``; ``dependents``: the IDs recreated on their own image; ``target_tags``: base image ID
    -> the tags the bundle moves onto its target). ``target_tags`` None: the tags are not known yet, so which tag a service names is not checked. Raises ComposeError."""
    projects = {info["Id"]: project_of(info) for info in ordered}
    if not any(projects.values()):
        return {}
    names = {info["Id"]: info["Name"].lstrip("/") for info in ordered}
    for info in ordered:
        if projects[info["Id"]] is None:
            for option, ref in dependencies(info):
                owner = next((i for i, n in names.items() if ref in (i, n) and projects[i]), None)
                if owner is not None:
                    raise ComposeError(printable(
                        f"container {names[info['Id']]} depends on {names[owner]} ({option}), a container of compose "
                        f"project {projects[owner].name}, which compose recreates; nothing was changed: define "  # type: ignore[union-attr]
                        f"{names[info['Id']]} in that project's compose file, or remove it first"))
    program = compose_cli.find_program()
    if program is None:
        shown = ", ".join(sorted({p.name for p in projects.values() if p}))
        raise ComposeError(printable(f"the update recreates containers of compose project {shown}, and neither "
                                     "docker-compose nor the docker compose plugin is installed; install one "
                                     "(apt-get install docker-compose) and run again"))
    compose = Compose(program)
    units: dict[str, Unit] = {}
    for project in dict.fromkeys(p for p in projects.values() if p):
        members = [info for info in ordered if projects[info["Id"]] == project]
        units.update(_check_project(engine, compose, project, members, dependents, target_tags, names, named))
    return units


def _check_project(engine: Engine, compose: Compose, project: Project, members: list[dict], dependents: set[str],
                   target_tags: dict[str, list[str]] | None, names: dict[str, str], named: bool) -> dict[str, Unit]:
    hashes = compose.hashes(project)
    order = list(hashes)
    images = compose.images(project)
    by_service: dict[str, list[dict]] = {}
    for info in members:
        by_service.setdefault(info["Config"]["Labels"][SERVICE], []).append(info)
    units = {}
    for service in sorted(by_service, key=lambda s: order.index(s) if s in order else len(order)):
        infos = by_service[service]
        where = f"{project.shown()}: service {service}"
        if service not in order:
            raise ComposeError(printable(f"{where} (of container {names[infos[0]['Id']]}) is no longer defined; "
                                         f"run docker-compose up -d --remove-orphans in {project.working_dir} first"))
        on_base = infos[0]["Id"] not in dependents
        ref = images.get(service, "")
        tags = None if target_tags is None else target_tags.get(infos[0]["Image"], [])
        _check_image(engine, where, ref, infos[0]["Image"], on_base, tags)
        _check_scale(engine, project, service, infos, named, where)
        for info in infos:
            label = (info["Config"].get("Labels") or {}).get(CONFIG_HASH)
            comparable = compose.plugin or _names(engine, ref, info["Image"])
            if comparable and label != hashes.get(service):
                raise ComposeError(printable(
                    f"{where} was changed since its container {names[info['Id']]} was created (compose's config hash "
                    f"differs); nothing was changed: run docker-compose up -d in {project.working_dir} first, so the "
                    "project runs what its files say, and apply again"))
        in_set = set(names.values()) | set(names)
        needs = sorted({names.get(r, r) for info in infos for _, r in dependencies(info) if r in in_set})
        unit = Unit(project, service, _normal(ref) if on_base else None, infos[0]["Image"],
                    [names[info["Id"]] for info in infos], needs, compose.program, order.index(service))
        units.update({info["Id"]: unit for info in infos})
    return units


def _check_image(engine: Engine, where: str, ref: str, image_id: str, on_base: bool, target_tags: list[str] | None) -> None:
    if not on_base:  # a dependent: compose must recreate it on the image it runs
        if not _names(engine, ref, image_id):
            raise ComposeError(printable(f"{where} names image {ref or '(none)'}, not the image {image_id[7:19]} its "
                                         "container runs, so compose would recreate it on another image; nothing "
                                         "was changed: run docker-compose up -d first"))
        return
    if target_tags is None or _normal(ref) in {_normal(tag) for tag in target_tags}:
        return
    if target_tags:
        fix = (f"set image: {target_tags[0]} there (the bundle moves {', '.join(target_tags)} onto its target) "
               "and apply again")
    else:
        fix = "the bundle names no tag for its target: make it from a tagged target image"
    raise ComposeError(printable(f"{where} names image {ref or '(none)'}, which this bundle does not move, so compose "
                                 f"would keep the old version; nothing was changed: {fix}"))


def _check_scale(engine: Engine, project: Project, service: str, infos: list[dict], named: bool, where: str) -> None:
    if not named:
        return
    every = [c for c in engine.containers() if (c.get("Labels") or {}).get(SERVICE) == service
             and (c.get("Labels") or {}).get(compose_cli.PROJECT) == project.name
             and (c.get("Labels") or {}).get(ONE_OFF) != "True"]
    if len(every) > len(infos):
        raise ComposeError(printable(f"{where} has {len(every)} containers and compose recreates them together; "
                                     f"nothing was changed: name all of them with --container, or none"))


def _names(engine: Engine, ref: str, image_id: str) -> bool:
    if not ref:
        return False
    attrs = engine.find_image(ref)
    return attrs is not None and attrs["Id"] == image_id


def _normal(ref: str) -> str:
    """``repo:tag`` as the engine resolves it: ``:latest`` when no tag, Docker Hub's prefixes left out."""
    if "@" not in ref and ":" not in ref.rsplit("/", 1)[-1]:
        ref += ":latest"
    for prefix in ("docker.io/", "index.docker.io/", "library/"):
        ref = ref.removeprefix(prefix)
    return ref


def swap(engine: Engine, unit: Unit, target_image_id: str, start: bool, step: Callable[[str], None]) -> list[str]:
    """Move the service's tag onto the target and let compose recreate its containers; their IDs."""
    if unit.image_ref is not None and not _names(engine, unit.image_ref, target_image_id):
        engine.tag(target_image_id, [unit.image_ref])
    Compose(unit.program or _program()).recreate(unit.project, [unit.service], start, UP_TIMEOUT)
    step("created")
    if start:
        step("started")
    return new_containers(engine, unit, target_image_id)


def new_containers(engine: Engine, unit: Unit, image_id: str) -> list[str]:
    """IDs of the service's containers compose made, checked to run ``image_id``."""
    found = [c for c in engine.containers() if (c.get("Labels") or {}).get(SERVICE) == unit.service
             and (c.get("Labels") or {}).get(compose_cli.PROJECT) == unit.project.name
             and (c.get("Labels") or {}).get(ONE_OFF) != "True"]
    if not found:
        raise ComposeError(printable(f"compose made no container for service {unit.service} of {unit.project.shown()}"))
    wrong = [c for c in found if c.get("ImageID") != image_id]
    if wrong:
        raise ComposeError(printable(f"compose recreated service {unit.service} on image "
                                     f"{str(wrong[0].get('ImageID'))[7:19]}, not {image_id[7:19]}"))
    return [c["Id"] for c in found]


def retag_back(engine: Engine, unit: Unit) -> list[str]:
    """Put the service's tag back on the image its old containers ran; what failed."""
    if unit.image_ref is None:
        return []
    try:
        engine.tag(unit.old_image_id, [unit.image_ref])
    except Exception as exc:  # an EngineError; anything else is reported as the rollback's failure too
        return [f"cannot tag {unit.old_image_id[7:19]} {unit.image_ref} again: {exc}"]
    return []


def recreate_old(engine: Engine, unit: Unit, start: bool, paused: bool) -> list[str]:
    """Let compose recreate the service on the image its old containers ran (its tag put back
    first), in their state; what failed."""
    try:
        Compose(unit.program or _program()).recreate(unit.project, [unit.service], start, UP_TIMEOUT)
        if paused:
            for container in new_containers(engine, unit, unit.old_image_id):
                engine.pause(container)
    except Exception as exc:  # ComposeError, EngineError: said, for the rollback's message
        return [f"cannot recreate service {unit.service} on its old image: {exc}"]
    return []


def describe(unit: Unit, started: bool, paused: bool, grace: float, position: int, count: int) -> str:
    """One dry-run line for a compose service."""
    state = "paused" if paused else "running" if started else "created"
    tag = (f"point {unit.image_ref} at the target, " if unit.image_ref
           else "keep its own image (it depends on a container of the update), ")
    how = "up -d" if started else "up --no-start"
    after = f"wait until healthy or {grace:g} s up" + ("; pause it" if paused else "") if started else "leave it created"
    return (f"{position}/{count} {', '.join(unit.containers)}: compose project {unit.project.name} service "
            f"{unit.service} ({state}): would {tag}then docker-compose {how} --no-deps --force-recreate {unit.service} "
            f"(files {unit.project.shown()}); {after}"
            + (f"; after {', '.join(unit.needs)}, which it depends on" if unit.needs else ""))


def _program() -> list[str]:
    program = compose_cli.find_program()
    if program is None:
        raise ComposeError("neither docker-compose nor the docker compose plugin is installed")
    return program
