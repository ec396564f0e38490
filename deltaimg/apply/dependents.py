"""Containers that depend on a swapped one, and the order a set is swapped in (Compose's model).

A container that shares another's network, IPC or PID namespace (``--network container:X``,
``--ipc container:X``, ``--pid container:X``), links to it (``--link X``) or takes its volumes
(``--volumes-from X``) would be left pointing at a container that no longer exists once X is
recreated. So every such dependent (whatever image it runs, and its own dependents in turn) joins
the update: it is recreated on its own image, keeping its own config, after the containers it
depends on (dependencies first), through the same create body, with its references made to name
the container (``container:X``), which is then the new one.
"""

from __future__ import annotations

from typing import Callable

from deltaimg.engine.interface import Engine
from deltaimg.errors import DependentsError, printable

NAMESPACES = (("--network", "NetworkMode"), ("--ipc", "IpcMode"), ("--pid", "PidMode"))


def dependencies(info: dict) -> list[tuple[str, str]]:
    """(option, container ID or name) of every other container ``info`` depends on, as the engine
    records it: an ID for namespaces, a name for links and volumes."""
    host = info.get("HostConfig") or {}
    found = []
    for option, key in NAMESPACES:
        mode = host.get(key) or ""
        if mode.startswith("container:"):
            found.append((option, mode.removeprefix("container:")))
    for link in host.get("Links") or []:  # "/target:/name/alias"
        found.append(("--link", link.split(":", 1)[0].lstrip("/")))
    for source in host.get("VolumesFrom") or []:  # "name[:ro|rw]"
        found.append(("--volumes-from", source.split(":", 1)[0]))
    return found


def find_dependents(engine: Engine, targets: list[dict]) -> list[dict]:
    """Inspect data of every container outside ``targets`` that depends on one of them, or on such a
    dependent in turn. A dependent run with ``--rm`` refuses the update (:class:`DependentsError`)."""
    infos = [engine.inspect_container(listed["Id"]) for listed in engine.containers()]
    others = [info for info in infos if info is not None]
    inside = {info["Id"] for info in targets}
    refs = _refs(targets)
    found: list[dict] = []
    grew = True
    while grew:
        grew = False
        for info in others:
            if info["Id"] in inside or not any(ref in refs for _, ref in dependencies(info)):
                continue
            if info["HostConfig"].get("AutoRemove"):
                raise DependentsError(printable(
                    f"container {_name(info)} depends on one this update recreates and runs with --rm, so it "
                    "cannot be recreated; remove it first (and run it again after the update)"))
            inside.add(info["Id"])
            refs |= _refs([info])
            found.append(info)
            grew = True
    return found


def in_order(infos: list[dict], key: Callable[[dict], object]) -> list[dict]:
    """``infos`` with every container after those of the set it depends on; otherwise by ``key``."""
    left = sorted(infos, key=key)
    done: list[dict] = []
    while left:
        ready = next((info for info in left if not _waits(info, left)), left[0])  # a cycle (none can start): as is
        done.append(ready)
        left.remove(ready)
    return done


def _waits(info: dict, left: list[dict]) -> bool:
    others = _refs([other for other in left if other is not info])
    return any(ref in others for _, ref in dependencies(info))


def name_references(host: dict, names: dict[str, str]) -> dict:
    """A create body's HostConfig with every ``container:<ID>`` and ``--volumes-from <ID>`` of a
    container of the set (``names``: ID -> name) made to name it, so it resolves to the new one."""
    host = dict(host)
    for _, key in NAMESPACES:
        mode = host.get(key) or ""
        if mode.startswith("container:") and mode.removeprefix("container:") in names:
            host[key] = "container:" + names[mode.removeprefix("container:")]
    if host.get("VolumesFrom"):
        host["VolumesFrom"] = [_by_name(source, names) for source in host["VolumesFrom"]]
    return host


def _by_name(source: str, names: dict[str, str]) -> str:
    """``<ID>[:ro]`` of a container of the set as ``<name>[:ro]``; anything else as it is."""
    ref, colon, mode = source.partition(":")
    return names.get(ref, ref) + colon + mode


def describe_links(info: dict, set_names: dict[str, str]) -> list[str]:
    """``X (--network)``: what in the set ``info`` depends on, for the dry run."""
    return [f"{set_names.get(ref, ref)} ({option})" for option, ref in dependencies(info)
            if ref in set_names or ref in set_names.values()]


def _refs(infos: list[dict]) -> set[str]:
    """What may name these containers in another's HostConfig: their IDs and names."""
    return {info["Id"] for info in infos} | {_name(info) for info in infos}


def _name(info: dict) -> str:
    return info["Name"].lstrip("/")
