"""A private containerd for the tests: its own root, state and socket under a temporary folder.

Debian's ``containerd`` (1.6) with a minimal config: no CRI plugin (no kubelet talks to it), the
default overlayfs snapshotter and runc. Each test gets a fresh one, so what one test imports is
not in the next one's content store, and what containerd writes (``/proc/PID/io``) is the test's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Iterator

import pytest

from deltaimg.engine.containerd import ContainerdEngine, normalize_ref
from deltaimg.engine.ctr import Ctr
from tests.conftest import run_cli
from tests.engine_helpers import EngineResources, _unavailable

START_TIMEOUT = 30
BIG = 8 << 20  # the base's large layer


@dataclass
class ContainerdService:
    process: subprocess.Popen
    folder: str
    socket: str
    ctr: Ctr  # namespace k8s.io

    @property
    def engine_option(self) -> str:
        """``deltaimg apply --engine`` naming this containerd."""
        return f"containerd={self.socket},k8s.io"

    @property
    def engine(self) -> ContainerdEngine:
        return ContainerdEngine(self.ctr)

    @property
    def root(self) -> str:
        return os.path.join(self.folder, "root")

    def written_bytes(self) -> int:
        """Bytes containerd's process has written to storage so far (its ``write_bytes``)."""
        with open(f"/proc/{self.process.pid}/io") as io_stats:
            return next(int(line.split()[1]) for line in io_stats if line.startswith("write_bytes:"))

    def root_bytes(self) -> int:
        """Bytes of the files under containerd's root (content store, snapshots, metadata)."""
        return sum(os.lstat(os.path.join(top, name)).st_size
                   for top, _, names in os.walk(self.root) for name in names)


def start_containerd(folder: str) -> ContainerdService:
    """Start containerd on ``folder``; raise RuntimeError, with the end of its log, if it does not answer."""
    socket = os.path.join(folder, "containerd.sock")
    config = os.path.join(folder, "config.toml")
    with open(config, "w") as out:
        out.write(f'version = 2\nroot = "{folder}/root"\nstate = "{folder}/state"\n'
                  'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n\n'
                  f'[grpc]\n  address = "{socket}"\n\n[ttrpc]\n  address = "{socket}.ttrpc"\n\n'
                  f'[debug]\n  address = "{folder}/debug.sock"\n')
    log_path = os.path.join(folder, "containerd.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["containerd", "--config", config], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    ctr = Ctr(socket, "k8s.io")
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if os.path.exists(socket) and subprocess.run(ctr.argv("version"), capture_output=True).returncode == 0:
            return ContainerdService(process, folder, socket, ctr)
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            with open(log_path, "rb") as log:
                tail = log.read()[-2000:].decode("utf-8", "replace")
            raise RuntimeError(f"containerd did not answer on {socket}: {tail.strip()}")
        time.sleep(0.1)


def stop_containerd(service: ContainerdService) -> None:
    """Stop containerd, then unmount what its snapshotter and shims left under its folder."""
    service.process.terminate()
    try:
        service.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.process.kill()
        service.process.wait()
    prefix = os.path.realpath(service.folder) + "/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


@pytest.fixture
def containerd_service(tmp_path) -> Iterator[ContainerdService]:
    """A fresh private containerd. Missing or not starting: the test fails when CI=true, else skips."""
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} is missing (scripts/test installs Debian's containerd and runc)")
    folder = str(tmp_path / "ctd")  # a short path: a unix socket's must fit in 108 bytes
    os.mkdir(folder)
    try:
        service = start_containerd(folder)
    except (RuntimeError, OSError) as exc:
        _unavailable(str(exc))
    yield service
    stop_containerd(service)


@pytest.fixture(scope="session")
def containerd_pair(docker_client, keypair, tmp_path_factory):
    """v1 (busybox and an 8 MiB layer) and v2 (v1 and a layer with /only-new) built by Docker;
    v1 as a docker save archive, the bundle v1 -> v2, and v2 rebuilt from it into a full archive."""
    resources = EngineResources(docker_client)
    v1 = resources.build("v1", [f"RUN head -c {BIG} /dev/urandom > /big", "ENV VERSION=1"])
    v2 = resources.build("v2", ["RUN echo new-layer-only > /only-new", "ENV VERSION=2"], base=v1)
    folder = tmp_path_factory.mktemp("containerd-pair")
    archive = str(folder / "v1.tar")
    tags = {k: f"{resources.name(k)}:test" for k in ("v1", "v2")}
    with open(archive, "wb") as out:
        for chunk in docker_client.api.get_image(tags["v1"]):  # by name: the archive carries the tag
            out.write(chunk)
    bundle = str(folder / "v2.dimg")
    result = run_cli("make", f"docker-daemon:{tags['v1']}", f"docker-daemon:{tags['v2']}", "-o", bundle,
                     "--key", keypair[0])
    assert result.returncode == 0, result.stderr
    full = str(folder / "v2.tar")
    result = run_cli("apply", bundle, "--trust", keypair[1], "--base", archive, "-o", full)
    assert result.returncode == 0, result.stderr
    yield {"v1": v1, "v2": v2, "tag": tags, "archive": archive, "bundle": bundle, "full": full}
    resources.cleanup()


def import_base(service: ContainerdService, pair) -> None:
    service.ctr.run("images", "import", pair["archive"])
    assert normalize_ref(pair["tag"]["v1"]) in service.engine.references()


def apply(service: ContainerdService, pair, keypair, *options: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("apply", pair["bundle"], "--trust", keypair[1], "--engine", service.engine_option, *options, env=env)
