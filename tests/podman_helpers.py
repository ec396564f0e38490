"""A private Podman for the tests: its own store, config and API socket under a temporary folder.

``podman system service`` serves Podman's Docker-compatible API; deltaimg reaches it through the
``docker`` SDK like any engine. Everything the service writes (images, containers, volumes,
the socket) lives under the session's temporary folder, so the host's Podman store (if any) is
never touched. The sandbox workarounds live here, never in deltaimg:

* ``default_ulimits = []``: this machine refuses Podman's default nofile rlimit ("error setting
  rlimit type 7"), so no container would start;
* ``cgroup_manager = "cgroupfs"`` and ``events_logger = "file"``: there is no systemd here.

Without systemd Podman has no timer to run health checks with: a container's health stays
``starting`` until ``podman healthcheck run`` is called (:func:`health_timer`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import docker
import docker.errors
import pytest
import requests

from tests.engine_helpers import BUSYBOX, _unavailable

START_TIMEOUT = 60  # seconds for the service to answer a ping


@dataclass
class PodmanService:
    """A running ``podman system service`` and how to reach it."""

    client: docker.DockerClient
    socket: str
    env: dict[str, str]  # CONTAINERS_CONF and CONTAINERS_STORAGE_CONF of this store
    root: str
    runroot: str
    pid: int

    def written_bytes(self) -> int:
        """Bytes the service process has written to storage so far (its ``write_bytes``)."""
        with open(f"/proc/{self.pid}/io") as io_stats:
            return next(int(line.split()[1]) for line in io_stats if line.startswith("write_bytes:"))

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def podman(self, *args: str) -> subprocess.CompletedProcess:
        """Run the ``podman`` command line on this store (not the host's)."""
        return subprocess.run(["podman", "--root", self.root, "--runroot", self.runroot, *args],
                              env={**os.environ, **self.env}, capture_output=True, text=True, timeout=300)


def write_config(folder: str) -> dict[str, str]:
    """containers.conf and storage.conf for a store under ``folder``; the environment naming them."""
    containers_conf = os.path.join(folder, "containers.conf")
    storage_conf = os.path.join(folder, "storage.conf")
    with open(containers_conf, "w") as out:
        out.write('[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = "cgroupfs"\n'
                  'events_logger = "file"\n')
    with open(storage_conf, "w") as out:
        out.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{folder}/root"\nrunroot = "{folder}/run"\n')
    return {"CONTAINERS_CONF": containers_conf, "CONTAINERS_STORAGE_CONF": storage_conf}


def start_service(folder: str) -> tuple[subprocess.Popen, PodmanService]:
    """Start the service on ``folder``/podman.sock and wait until it answers; raise RuntimeError, with
    the end of its log, when it does not."""
    env = write_config(folder)
    root, runroot, socket = (os.path.join(folder, name) for name in ("root", "run", "podman.sock"))
    log_path = os.path.join(folder, "service.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["podman", "--root", root, "--runroot", runroot, "system", "service", "--time=0", f"unix://{socket}"],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if os.path.exists(socket):  # the client asks the API version as it is made
                client = docker.DockerClient(base_url=f"unix://{socket}", timeout=300)
                return process, PodmanService(client, socket, env, root, runroot, process.pid)
        except (docker.errors.DockerException, requests.RequestException):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            _unmount_under(folder)
            with open(log_path, "rb") as log:
                tail = log.read()[-2000:].decode("utf-8", "replace")
            raise RuntimeError(f"podman system service did not answer on {socket}: {tail.strip()}")
        time.sleep(0.2)


def stop_service(process: subprocess.Popen, service: PodmanService) -> None:
    """Stop the service and empty its store (overlay mounts included), leaving nothing mounted."""
    service.client.close()
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    service.podman("system", "reset", "--force")
    _unmount_under(os.path.dirname(service.root))


def _unmount_under(folder: str) -> None:
    """Unmount what Podman left mounted under ``folder`` (its overlay store is a mount of its own),
    deepest first, so the folder can be removed."""
    prefix = os.path.realpath(folder) + "/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


@pytest.fixture(scope="session")
def podman(tmp_path_factory) -> Iterator[PodmanService]:
    """The session's private Podman. Missing or not starting: the test fails when CI=true, else skips."""
    if shutil.which("podman") is None:
        _unavailable("podman is missing (scripts/test installs Debian's podman)")
    if not os.path.exists(BUSYBOX):
        _unavailable(f"{BUSYBOX} is missing (scripts/ensure-docker installs busybox-static)")
    try:
        process, service = start_service(str(tmp_path_factory.mktemp("podman")))
    except (RuntimeError, OSError) as exc:
        _unavailable(str(exc))
    yield service
    stop_service(process, service)


@contextlib.contextmanager
def health_timer(service: PodmanService, interval: float = 1.0) -> Iterator[None]:
    """While inside, run the health check of every running container every ``interval`` s: what
    systemd's timers do for Podman on a host that has systemd (this one has not)."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(interval):
            running = service.podman("ps", "-q", "--filter", "status=running").stdout.split()
            for container in running:
                service.podman("healthcheck", "run", container)  # "has no defined healthcheck": ignored

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
