"""deltaimg apply into Docker on the containerd image store (Docker 29's default), which cannot run
on this machine: a fake Engine API on a unix socket answers as that store does. Its ``docker info``
names the containerd snapshotter, an image's ``Id`` is its manifest's digest (not the config's),
images are found by that digest or by name only, ``docker save`` is an OCI layout, and
``POST /images/load`` is recorded and imported the way containerd imports a docker archive."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socketserver
import tarfile
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from deltaimg.engine import docker_cstore
from deltaimg.engine.dockerd import DockerEngine
from tests.conftest import archive_image, run_cli

ENGINE_EXIT = 20


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeStore:
    """The images of a containerd image store: target (manifest) digest -> (names, manifest, blobs)."""

    def __init__(self, driver_status: list) -> None:
        self.driver_status = driver_status
        self.images: dict[str, dict] = {}
        self.loads: list[bytes] = []  # every body /images/load received
        self.change_config = False  # import a load with a config other than the archive's
        self.unpack_error = ""  # after "Loaded image", the line moby writes when the unpack then failed
        self.blobless: set[str] = set()  # layer digests whose snapshot the store keeps, not the blob (moby #49473)

    def add(self, names: list[str], config: bytes, layers: list[bytes]) -> str:
        blobs = {digest(config): config, **{digest(layer): layer for layer in layers}}
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                               "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                          "digest": digest(config), "size": len(config)},
                               "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                                           "digest": digest(layer), "size": len(layer)} for layer in layers]}).encode()
        target = digest(manifest)
        blobs[target] = manifest
        self.images[target] = {"names": names, "blobs": blobs, "config": json.loads(config)}
        return target

    def lookup(self, ref: str) -> str | None:
        if ref in self.images:
            return ref
        tagged = ref if ":" in ref.rsplit("/", 1)[-1] else ref + ":latest"
        return next((t for t, image in self.images.items() if tagged in image["names"]), None)

    def record(self, target: str) -> dict:
        image = self.images[target]
        manifest = image["blobs"][target]
        return {"Id": target, "RepoTags": image["names"], "RepoDigests": [], "Created": "2026-01-01T00:00:00Z",
                "Descriptor": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": target,
                               "size": len(manifest)},
                "Config": image["config"].get("config") or {},
                "RootFS": {"Type": "layers", "Layers": image["config"]["rootfs"]["diff_ids"]}}

    def export(self, target: str) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            members = {f"blobs/sha256/{d.removeprefix('sha256:')}": data for d, data in sorted(self.images[target]["blobs"].items())
                       if d not in self.blobless}
            members["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [
                {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": target,
                 "size": len(self.images[target]["blobs"][target])}]}).encode()
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return out.getvalue()

    def load(self, body: bytes) -> list[str]:
        """Import a docker archive as containerd does: a manifest of its config and layer files."""
        self.loads.append(body)
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            entry = json.load(tar.extractfile("manifest.json"))[0]
            config = tar.extractfile(entry["Config"]).read()
            layers = [tar.extractfile(name).read() for name in entry["Layers"]]  # a missing one fails the load
        if self.change_config:
            config = config.replace(b'"', b'"', 1) + b"\n"
        self.add(entry["RepoTags"], config, layers)
        return entry["RepoTags"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store: FakeStore

    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, body: object, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") == "chunked":
            data = b""
            while size := int(self.rfile.readline().strip() or b"0", 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def route(self) -> tuple[str, dict]:
        path, _, query = self.path.partition("?")
        path = re.sub(r"^/v1\.\d+", "", path)
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        return path, params

    def do_GET(self) -> None:
        path, _ = self.route()
        store = self.store
        if path == "/_ping":
            return self.answer(200, b"OK", "text/plain")
        if path == "/version":
            return self.answer(200, {"Version": "29.0.0", "ApiVersion": "1.52", "Components": [{"Name": "Engine"}]})
        if path == "/info":
            return self.answer(200, {"Driver": "overlayfs", "DriverStatus": store.driver_status,
                                     "DockerRootDir": os.environ["FAKE_ROOT"]})
        if path == "/images/json":
            return self.answer(200, [{"Id": t, "RepoTags": i["names"]} for t, i in store.images.items()])
        if path == "/containers/json":
            return self.answer(200, [])
        match = re.fullmatch(r"/images/(.+)/(json|get)", path)
        target = store.lookup(match.group(1).replace("%3A", ":").replace("%2F", "/")) if match else None
        if target is None:
            return self.answer(404, {"message": "No such image"})
        if match.group(2) == "json":
            return self.answer(200, store.record(target))
        return self.answer(200, store.export(target), "application/x-tar")

    def do_POST(self) -> None:
        path, params = self.route()
        body = self.body()
        if path == "/images/load":
            names = self.store.load(body)
            lines = [f"Loaded image: {n}\n" + (f"Error unpacking image {n}: {self.store.unpack_error}\n"
                                                 if self.store.unpack_error else "") for n in names]
            return self.answer(200, b"".join(json.dumps({"stream": line}).encode() for line in lines))
        match = re.fullmatch(r"/images/(.+)/tag", path)
        if match:
            target = self.store.lookup(match.group(1))
            if target is None:
                return self.answer(404, {"message": "No such image"})
            name = f"{params['repo'].replace('%2F', '/')}:{params.get('tag', 'latest')}"
            self.store.images[target]["names"].append(name)
            return self.answer(201, b"", "text/plain")
        return self.answer(404, {"message": "not faked"})


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def fake_engine(tmp_path, monkeypatch, example_pair):
    """A Docker 29 on the containerd image store holding the example's base image."""
    store = FakeStore([["driver-type", docker_cstore.SNAPSHOTTER]])
    config, layers = archive_image(example_pair[0])
    with tarfile.open(example_pair[0]) as tar:
        names = json.load(tar.extractfile("manifest.json"))[0]["RepoTags"] or []
    store.base_target = store.add(list(names), config, layers)
    store.base_id = digest(config)
    handler = type("BoundHandler", (Handler,), {"store": store})
    server = Server(str(tmp_path / "docker.sock"), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    monkeypatch.setenv("FAKE_ROOT", str(tmp_path))
    yield store
    server.shutdown()
    server.server_close()


def test_docker_info_with_the_containerd_snapshotter_picks_the_containerd_store_adapter(fake_engine):
    engine = docker_cstore.connect()
    assert isinstance(engine, docker_cstore.DockerContainerdStore)
    assert engine.loads_thin_archives() is False
    record = engine.find_image(fake_engine.base_id)  # the config digest: the engine itself knows only the manifest's
    assert record["Id"] == fake_engine.base_id and record["Descriptor"]["digest"] == fake_engine.base_target


def test_a_graphdriver_engine_keeps_the_docker_adapter(fake_engine):
    fake_engine.driver_status = [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]]
    engine = docker_cstore.connect()
    assert type(engine) is DockerEngine


def test_apply_loads_a_full_archive_and_checks_the_manifests_config_is_the_target(fake_engine, example_bundle, keypair,
                                                                                 example_pair):
    result = run_cli("apply", example_bundle, "--trust", keypair[1], "--engine", "docker")

    assert result.returncode == 0, result.stderr
    assert len(fake_engine.loads) == 1
    target_config, target_layers = archive_image(example_pair[1])
    with tarfile.open(fileobj=io.BytesIO(fake_engine.loads[0])) as tar:
        entry = json.load(tar.extractfile("manifest.json"))[0]
        carried = {name for name in tar.getnames() if name.endswith("/layer.tar")}
    assert set(entry["Layers"]) == carried and len(carried) == len(set(map(digest, target_layers)))  # full: every layer
    loaded = [t for t, image in fake_engine.images.items() if t != fake_engine.base_target]
    assert len(loaded) == 1 and digest(target_config) in fake_engine.images[loaded[0]]["blobs"]
    assert loaded[0] != digest(target_config)  # the engine's Id is the manifest's digest, and it was accepted


def test_a_load_that_imports_another_config_is_an_engine_error(fake_engine, example_bundle, keypair, example_pair):
    fake_engine.change_config = True

    result = run_cli("apply", example_bundle, "--trust", keypair[1], "--engine", "docker")

    target_id = digest(archive_image(example_pair[1])[0])
    assert result.returncode == ENGINE_EXIT, result.stderr
    assert f"but holds no image whose config is {target_id[:19]}; the load was incomplete or changed the image" \
        in result.stderr
    assert "does not support yet" not in result.stderr


def test_a_base_whose_layer_blobs_the_store_lost_is_an_engine_error_saying_to_load_it_in_full(fake_engine, example_bundle,
                                                                                           keypair):
    base = fake_engine.images[fake_engine.base_target]
    fake_engine.blobless = {d for d in base["blobs"] if d not in (fake_engine.base_target, fake_engine.base_id)}

    result = run_cli("apply", example_bundle, "--trust", keypair[1], "--engine", "docker")

    assert result.returncode == ENGINE_EXIT, result.stderr
    assert f"docker save of {fake_engine.base_id[:19]} lacks " in result.stderr
    assert "(moby #49473); docker load a full archive of that image, then run apply again" in result.stderr
    assert fake_engine.loads == [] and "Traceback" not in result.stderr


def test_an_image_imported_but_not_unpacked_fails_the_load(fake_engine, example_bundle, keypair):
    fake_engine.unpack_error = "failed to extract layer sha256:0123: no space left on device"

    result = run_cli("apply", example_bundle, "--trust", keypair[1], "--engine", "docker")

    assert result.returncode == ENGINE_EXIT, result.stderr
    assert "failed: Error unpacking image example/app:1.1: failed to extract layer sha256:0123: no space left on device" \
        in result.stderr
