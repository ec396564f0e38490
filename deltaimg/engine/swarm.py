"""Docker Swarm's services, as deltaimg updates them: through the manager's own rolling update.

A separate class from :class:`deltaimg.engine.dockerd.DockerEngine` (which it borrows the SDK
client of): Swarm is an orchestrator on top of the engine, and only a manager may update services.
Every failure is an :class:`EngineError`, as in the other adapters.
"""

from __future__ import annotations

import copy

import docker
import requests

from deltaimg.engine.dockerd import DockerEngine, one_line
from deltaimg.errors import EngineError


class SwarmManager:
    def __init__(self, client: docker.DockerClient) -> None:
        self.api = client.api

    def services(self) -> list[dict]:
        """Every service's inspect record (``ID``, ``Version``, ``Spec``, ``UpdateStatus``)."""
        try:
            return self.api.services()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise EngineError(f"cannot list the Swarm services: {one_line(exc)}") from None

    def inspect(self, service_id: str) -> dict:
        try:
            return self.api.inspect_service(service_id)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise EngineError(f"cannot inspect Swarm service {service_id[:12]}: {one_line(exc)}") from None

    def set_image(self, service: dict, image: str) -> None:
        """Update ``service`` (an inspect record: its version guards against a concurrent change) to run
        ``image``, the rest of its spec kept; when the spec names ``image`` already (the tag was moved
        onto the new image), its tasks are replaced all the same (``ForceUpdate``)."""
        task = copy.deepcopy(service["Spec"]["TaskTemplate"])
        spec = task.setdefault("ContainerSpec", {})
        if spec.get("Image") == image:
            task["ForceUpdate"] = int(task.get("ForceUpdate") or 0) + 1
        spec["Image"] = image
        try:
            self.api.update_service(service["ID"], service["Version"]["Index"], task_template=task,
                                    fetch_current_spec=True)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise EngineError(f"Swarm refused to update service {service['Spec'].get('Name')}: {one_line(exc)}") from None


def manager(engine: object) -> SwarmManager | None:
    """The Swarm manager ``engine`` is, or None: not Docker, not in a swarm, or a worker."""
    if type(engine) is not DockerEngine:  # Podman's Docker-compatible API has no Swarm
        return None
    try:
        swarm = engine.client.info().get("Swarm") or {}
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise EngineError(f"cannot ask the engine whether it is a Swarm manager: {one_line(exc)}") from None
    if swarm.get("LocalNodeState") == "active" and swarm.get("ControlAvailable"):
        return SwarmManager(engine.client)
    return None
