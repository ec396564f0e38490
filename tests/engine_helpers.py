"""Helpers for tests that need a real Docker engine: the client fixture, busybox images, cleanup.

Test images are built from ``/bin/busybox`` (Debian's busybox-static) with the engine's build
endpoint (what ``docker build`` calls, classic builder), so no registry is needed. Everything a
test creates is named with a unique prefix and removed by :meth:`EngineResources.cleanup`.

To make the fixtures available to every test module, add to ``tests/conftest.py``::

    from tests.engine_helpers import docker_client, engine_resources  # noqa: F401
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from typing import Iterator, NoReturn, Sequence

import docker
import docker.errors
import pytest

from deltaimg.engine import dockerd as engine
from deltaimg.errors import EngineError

BUSYBOX = "/bin/busybox"
BUSYBOX_BASE = ["FROM scratch", "COPY busybox /bin/busybox", 'RUN ["/bin/busybox","--install","-s","/bin"]']
# A main process that exits at once on SIGTERM (PID 1 gets no default signal handlers).
SLEEP_FOREVER = "trap exit TERM; while :; do sleep 1 & wait $!; done"


def _unavailable(reason: str) -> NoReturn:
    """Engine tests FAIL in CI (CI=true), where the engine is part of the environment; else skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = engine.connect().client
    except EngineError as exc:
        _unavailable(str(exc))
    if not os.path.exists(BUSYBOX):
        _unavailable(f"{BUSYBOX} is missing (scripts/ensure-docker installs busybox-static)")
    yield client
    client.close()


@pytest.fixture
def engine_resources(docker_client: docker.DockerClient) -> Iterator[EngineResources]:
    resources = EngineResources(docker_client)
    yield resources
    resources.cleanup()


class EngineResources:
    """Names, builds and finally removes a test's containers, images, volumes and networks."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.prefix = f"deltaimg-test-{uuid.uuid4().hex[:8]}"
        self.images: list[str] = []
        self.networks: list[str] = []

    def name(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def build(self, suffix: str, lines: Sequence[str] = (), base: str | None = None) -> str:
        """Build a busybox image (or one ``FROM base``) tagged ``<prefix>-<suffix>:test``; return its ID."""
        tag = f"{self.name(suffix)}:test"
        context = tempfile.mkdtemp(prefix="deltaimg-build-")
        try:
            if base is None:
                shutil.copy(BUSYBOX, os.path.join(context, "busybox"))
                dockerfile = list(BUSYBOX_BASE)
            else:
                dockerfile = [f"FROM {base}"]
            dockerfile += [*lines, f"LABEL deltaimg.test={self.prefix}"]
            with open(os.path.join(context, "Dockerfile"), "w") as out:
                out.write("\n".join(dockerfile) + "\n")
            image, _ = self.client.images.build(path=context, tag=tag, rm=True, forcerm=True, nocache=True)
        finally:
            shutil.rmtree(context)
        self.images.append(tag)
        return image.id

    def network(self, suffix: str) -> tuple[str, str]:
        """Create a user network on a free /24 subnet; return (name, subnet)."""
        name = self.name(suffix)
        for attempt in range(20):
            subnet = f"10.{200 + attempt}.{uuid.uuid4().int % 250}.0/24"
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
            try:
                self.client.networks.create(name, driver="bridge", ipam=ipam)
            except docker.errors.APIError as exc:
                if "overlap" in str(exc):
                    continue
                raise
            self.networks.append(name)
            return name, subnet
        raise RuntimeError("no free subnet for a test network")

    def containers(self) -> list[dict]:
        """Inspect data of every container carrying this test's prefix (any state)."""
        found = self.client.api.containers(all=True, filters={"name": self.prefix})
        return [self.client.api.inspect_container(c["Id"]) for c in found]

    def cleanup(self) -> None:
        api = self.client.api
        volumes = {v["Name"] for v in api.volumes(filters={"name": self.prefix}).get("Volumes") or []}
        for info in self.containers():
            volumes |= {m["Name"] for m in info.get("Mounts") or [] if m.get("Type") == "volume"}
            api.remove_container(info["Id"], force=True, v=True)
        for volume in volumes:
            _ignore_missing(api.remove_volume, volume, force=True)
        for network in self.networks:
            _ignore_missing(api.remove_network, network)
        for tag in reversed(self.images):
            _ignore_missing(api.remove_image, tag, force=True)


def _ignore_missing(remove, *args, **kwargs) -> None:
    try:
        remove(*args, **kwargs)
    except docker.errors.NotFound:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def run(client: docker.DockerClient, container: str, command: str) -> str:
    """Run ``sh -c command`` in a running container; return its stdout; fail the test on non-zero."""
    exec_id = client.api.exec_create(container, ["sh", "-c", command])["Id"]
    output = client.api.exec_start(exec_id).decode()
    code = client.api.exec_inspect(exec_id)["ExitCode"]
    assert code == 0, f"{command!r} in {container} exited {code}: {output}"
    return output
