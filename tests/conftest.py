"""Shared fixtures: keys, the built-in example pair, a bundle made from it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile

import pytest

from deltaimg import example

from deltaimg.bundle import signing


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch) -> str:
    """Every test's applies journal and lock in a state directory of their own, never /var/lib/deltaimg."""
    path = str(tmp_path / "state")
    monkeypatch.setenv("DELTAIMG_STATE_DIR", path)
    return path


class Tmpfs:
    """A tmpfs of a given size mounted at ``path`` (as root): a disk that is really that full."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", self.path], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", self.path], check=True)


@pytest.fixture
def small_state_dir(tmp_path, monkeypatch):
    """The state directory (journal, lock, the rebuild's scratch space) on an 8 KiB disk of its own."""
    disk = Tmpfs(str(tmp_path / "state"), 8 << 10)
    monkeypatch.setenv("DELTAIMG_STATE_DIR", disk.path)
    yield disk
    disk.unmount()


@pytest.fixture(scope="session")
def keypair(tmp_path_factory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("keys")
    path = str(directory / "release-key")
    signing.generate(path)
    return path, path + ".pub"


@pytest.fixture(scope="session")
def other_keypair(tmp_path_factory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("otherkeys")
    path = str(directory / "other-key")
    signing.generate(path)
    return path, path + ".pub"


@pytest.fixture(scope="session")
def example_pair(tmp_path_factory) -> tuple[str, str]:
    return example.build_pair(str(tmp_path_factory.mktemp("example")))


@pytest.fixture(scope="session")
def example_bundle(example_pair, keypair, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("bundle") / "app.dimg")
    result = run_cli("make", *example_pair, "-o", out, "--key", keypair[0])
    assert result.returncode == 0, result.stderr
    return out


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real command line, as a user would."""
    return subprocess.run([sys.executable, "-m", "deltaimg", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def archive_image(path: str) -> tuple[bytes, list[bytes]]:
    """(config bytes, layer tar bytes in order) of a docker save archive, read with stdlib tarfile."""
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        assert len(manifest) == 1
        config = tar.extractfile(manifest[0]["Config"]).read()
        layers = [tar.extractfile(name).read() for name in manifest[0]["Layers"]]
    return config, layers


def assert_same_image(rebuilt_archive: str, config_bytes: bytes) -> None:
    """The archive holds exactly that config, and every layer hashes to the config's diff_id."""
    config, layers = archive_image(rebuilt_archive)
    assert config == config_bytes
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    assert ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers] == diff_ids


from tests.engine_helpers import docker_client, engine_resources  # noqa: E402,F401  (engine fixtures)
from tests.podman_helpers import podman  # noqa: E402,F401  (the private Podman)
