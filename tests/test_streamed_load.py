"""Engine apply into Docker streams the rebuilt thin archive straight into the engine's load
(deltaimg/apply/streamed.py): the image ID is kept, only the rebuilt layers travel, a layer that fails
its check mid-stream leaves nothing loaded, and SIGTERM mid-load stops the rebuild and cleans up."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from deltaimg.apply import streamed
from deltaimg.apply.engine import apply_to_engine
from deltaimg.bundle import keys
from deltaimg.bundle.reader import open_bundle
from deltaimg.engine.dockerd import DockerEngine
from deltaimg.errors import IntegrityError
from deltaimg.images.daemon import open_daemon_image
from deltaimg.tar import writer as archivewriter
from tests import imagefactory as f
from tests.conftest import run_cli
from tests.engine_helpers import EngineResources, docker_client  # noqa: F401

STREAMING = "straight into Docker's load"


class RecordingEngine(DockerEngine):
    """The real engine; what its load is sent is kept too (the test images are small)."""

    sent = b""

    def load_archive(self, stream_or_path):  # type: ignore[override]
        engine = self

        class Tee:
            def read(self, n: int = -1) -> bytes:
                data = stream_or_path.read(n)
                engine.sent += data
                return data

        return super().load_archive(Tee())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pair(docker_client):  # noqa: F811
    resources = EngineResources(docker_client)
    v1 = resources.build("v1", ["CMD [\"sh\"]"])
    v2 = resources.build("v2", ["RUN echo 2 > /etc/app-version && cp /bin/busybox /bin/busybox-2"], base=v1)
    yield {"v1": v1, "v2": v2, "tag": {k: f"{resources.name(k)}:test" for k in ("v1", "v2")}}
    resources.cleanup()


@pytest.fixture(scope="module")
def bundle(pair, keypair, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("streamed") / "v2.dimg")
    made = run_cli("make", f"docker-daemon:{pair['tag']['v1']}", f"docker-daemon:{pair['tag']['v2']}", "-o", path,
                   "--key", keypair[0])
    assert made.returncode == 0, made.stderr
    return path


def remove(client, ref: str) -> None:
    if client.api.images(filters={"reference": ref}):
        client.api.remove_image(ref)


def test_a_streamed_apply_loads_the_target_with_its_image_id(docker_client, pair, bundle, keypair):  # noqa: F811
    remove(docker_client, pair["tag"]["v2"])
    result = run_cli("apply", bundle, "--trust", keypair[1], "--no-swap")
    assert result.returncode == 0, result.stderr
    assert f"rebuilding 1 layer(s) {STREAMING}, each checked against its diff_id as it goes" in result.stdout + result.stderr
    assert docker_client.api.inspect_image(pair["tag"]["v2"])["Id"] == pair["v2"]


def test_only_the_rebuilt_layer_travels_to_the_engine(docker_client, pair, bundle, keypair):  # noqa: F811
    remove(docker_client, pair["tag"]["v2"])
    engine = RecordingEngine(docker_client)
    opened = open_bundle(bundle, keys.trusted_keys([keypair[1]], None))
    apply_to_engine(opened, engine, containers=None, swap_containers=False, grace=1, dry_run=False, log=lambda _: None)
    v2 = docker_client.api.inspect_image(pair["v2"])
    with tarfile.open(fileobj=io.BytesIO(engine.sent)) as sent:
        names = sent.getnames()
    added = v2["RootFS"]["Layers"][-1].removeprefix("sha256:")
    assert names == [pair["v2"].removeprefix("sha256:") + ".json", added, f"{added}/layer.tar", "manifest.json"]


def test_a_layer_failing_its_diff_id_mid_stream_leaves_nothing_loaded(docker_client, pair, bundle, keypair):  # noqa: F811
    """The archive's bytes go out up to the last byte of the layer, then the check fails: the
    connection is closed before manifest.json, and the engine keeps nothing."""
    if not docker_client.api.images(filters={"reference": pair["tag"]["v2"]}):
        assert run_cli("apply", bundle, "--trust", keypair[1], "--no-swap").returncode == 0
    engine = DockerEngine(docker_client)
    with open_daemon_image(engine, pair["v1"]) as v1_image:
        v1_layers = {layer.diff_id for layer in v1_image.layers}
    with open_daemon_image(engine, pair["v2"]) as image:
        config = image.config_bytes
        remove_tag_only = pair["tag"]["v2"]
        layers = []
        for layer in image.layers:
            if layer.diff_id in v1_layers:
                layers.append((layer.diff_id, 0, None))
                continue
            with layer.open() as stream:
                data = bytearray(stream.read())
            data[-1] ^= 1  # the end-of-archive padding: a tar still, no longer this layer
            layers.append((layer.diff_id, len(data), lambda write, data=bytes(data): write(data)))
        docker_client.api.remove_image(remove_tag_only)
        assert pair["v2"] not in {i["Id"] for i in docker_client.api.images(all=True)}
        with pytest.raises(IntegrityError, match="rebuilt layer does not hash to its diff_id"):
            streamed.load_streamed(engine, lambda out: archivewriter.write_image(out, config, [pair["tag"]["v2"]], layers),
                                   sum(size for _, size, _ in layers))
    assert pair["v2"] not in {i["Id"] for i in docker_client.api.images(all=True)}
    assert docker_client.api.images(filters={"reference": pair["tag"]["v2"]}) == []


LAYER = 24 << 20


def test_sigterm_mid_load_stops_the_rebuild_loads_nothing_and_cleans_up(docker_client, keypair, tmp_path):  # noqa: F811
    tag = f"deltaimg-test-streamed-{os.getpid()}"
    base_layer = f.write_layer(tmp_path / "base.tar", f.complete_tree([f.file("etc/motd", b"base\n")]))
    added = [f.write_layer(tmp_path / f"zeros{n}.tar", f.complete_tree([f.file(f"srv/zeros{n}", bytes(LAYER))]))
             for n in range(3)]
    [base] = f.write_docker_archive(tmp_path / "base-archive.tar", [f.ImageSpec([base_layer], [f"{tag}:1"])])
    [target] = f.write_docker_archive(tmp_path / "target-archive.tar", [f.ImageSpec([base_layer, *added], [f"{tag}:2"])])
    bundle = str(tmp_path / "big.dimg")
    assert run_cli("make", str(base.path), str(target.path), "-o", bundle, "--key", keypair[0]).returncode == 0
    subprocess.run(["docker", "load", "-i", str(base.path)], check=True, capture_output=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    process = subprocess.Popen([sys.executable, "-m", "deltaimg", "apply", bundle, "--trust", keypair[1], "--no-swap"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert process.stdout is not None
        seen = ""
        while STREAMING not in seen:
            line = process.stdout.readline()
            assert line, seen
            seen += line
        time.sleep(0.2)  # well inside the 72 MiB load
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
        assert (process.returncode, rest.splitlines()[-1:]) == (130, ["deltaimg: interrupted"]), seen + rest
        assert list(scratch.iterdir()) == []
        assert target.config_digest not in {i["Id"] for i in docker_client.api.images(all=True)}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        docker_client.api.remove_image(f"{tag}:1", force=True)
