"""deltaimg against Podman, on a private Podman the test setup starts.

Through Docker's adapter over Podman's Docker-compatible API: Podman's images are read (inspect,
the exact config bytes, every layer from its ``docker save``), a full archive loads and keeps its
image ID, a thin docker archive is refused (so apply loads a full one), tags move, and
``deltaimg apply`` rebuilds, loads and swaps a container keeping its volumes, or rolls back a
target that fails its health check. Through the Podman adapter (``--engine podman=...``): a thin
OCI archive loads through the libpod API, so apply sends only the rebuilt layers.
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from deltaimg.engine.dockerd import DockerEngine
from deltaimg.engine import choose
from deltaimg.engine.podman import PodmanEngine
from deltaimg.errors import EngineError, SwapFailedRolledBack
from deltaimg.tar import writer as archivewriter
from deltaimg.tar.oci_writer import write_oci_image
from tests.conftest import run_cli
from tests.engine_helpers import SLEEP_FOREVER, EngineResources, run
from tests.podman_helpers import PodmanService, health_timer

V1_CMD = ["sh", "-c", f"echo v1 > /cmd; {SLEEP_FOREVER}"]
V2_LINES = ["RUN echo 2 > /etc/app-version", "ENV VERSION=2 NEWVAR=yes", "LABEL app.version=2",
            f"CMD {json.dumps(['sh', '-c', f'echo v2 > /cmd; {SLEEP_FOREVER}'])}"]


@pytest.fixture(scope="module")
def images(podman: PodmanService):
    """v1, v2 (one new layer) and bad (v2 with a failing health check), built by Podman."""
    resources = EngineResources(podman.client)
    v1 = resources.build("v1", ["VOLUME /anon", "ENV VERSION=1", f"CMD {json.dumps(V1_CMD)}"])
    v2 = resources.build("v2", V2_LINES, base=v1)
    bad = resources.build("bad", [*V2_LINES, 'HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD ["false"]'],
                          base=v1)
    # Podman names a local build docker.io/library/NAME; that is the name its images carry.
    tags = {k: f"docker.io/library/{resources.name(k)}:test" for k in ("v1", "v2", "bad")}
    yield {"v1": v1, "v2": v2, "bad": bad, "tag": tags}
    resources.cleanup()


@pytest.fixture(scope="module")
def bundles(podman, images, keypair, tmp_path_factory) -> dict[str, str]:
    """Bundles v1->v2 and v1->bad, made from Podman's images (make reads them as docker-daemon:)."""
    made = {}
    for target in ("v2", "bad"):
        made[target] = str(tmp_path_factory.mktemp("bundles") / f"{target}.dimg")
        result = run_cli("make", f"docker-daemon:{images['tag']['v1']}", f"docker-daemon:{images['tag'][target]}",
                         "-o", made[target], "--key", keypair[0], env={"DOCKER_HOST": podman.docker_host})
        assert result.returncode == 0, result.stderr
    return made


@pytest.fixture
def resources(podman):
    res = EngineResources(podman.client)
    yield res
    res.cleanup()


def remove_image(podman: PodmanService, tag: str) -> None:
    if podman.client.api.images(filters={"reference": tag}):
        podman.client.api.remove_image(tag)
    assert podman.client.api.images(filters={"reference": tag}) == []


def start_app(podman: PodmanService, res: EngineResources, image: str) -> str:
    """A container on ``image`` with a named volume, the image's anonymous volume and an env
    override; data written in both volumes."""
    api = podman.client.api
    named = res.name("data")
    api.create_volume(named)
    container = api.create_container(image, name=res.name("app"), environment={"SITE": "ship-7"},
                                     host_config=api.create_host_config(binds={named: {"bind": "/named", "mode": "rw"}}))
    api.start(container["Id"])
    run(podman.client, container["Id"], "head -c 100000 /dev/urandom > /named/blob; head -c 100000 /dev/urandom > /anon/blob")
    return container["Id"]


def checksums(podman: PodmanService, container: str) -> str:
    return run(podman.client, container, "sha256sum /named/blob /anon/blob")


def test_the_engine_adapter_reads_a_podman_image_exactly(podman, images):
    attrs = DockerEngine(podman.client).find_image(images["tag"]["v2"])
    assert attrs is not None and attrs["Id"] == images["v2"]

    config = DockerEngine(podman.client).read_config(images["v2"])
    assert "sha256:" + hashlib.sha256(config).hexdigest() == images["v2"]
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    assert attrs["RootFS"]["Layers"] == diff_ids and len(diff_ids) == 3

    # export_layers hashes every layer it hands out against its diff_id (IntegrityError otherwise)
    exported = [(diff_id, len(stream.read())) for diff_id, stream in DockerEngine(podman.client).export_layers(images["v2"],
                                                                                          set(diff_ids), {})]
    assert [diff_id for diff_id, _ in exported] == diff_ids
    assert all(size > 0 for _, size in exported)


def test_podman_loads_a_full_archive_keeping_its_id_and_refuses_a_thin_one(podman, images, resources):
    client = podman.client
    config = DockerEngine(client).read_config(images["v2"])
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    layers = {d: stream.read() for d, stream in DockerEngine(client).export_layers(images["v2"], set(diff_ids), {})}
    tag = f"{resources.name('copy')}:test"
    resources.images.append(tag)

    def archive(keep: int) -> io.BytesIO:
        out = io.BytesIO()
        sources = [(d, len(layers[d]), None if position < keep else _fill(layers[d]))
                   for position, d in enumerate(diff_ids)]
        archivewriter.write_image(out, config, [tag], sources)
        out.seek(0)
        return out

    assert DockerEngine(client).loads_thin_archives() is False
    with pytest.raises(EngineError, match="docker load of the archive failed: .*layer tarfiles are missing"):
        DockerEngine(client).load_archive(archive(keep=2))

    # Podman qualifies a loaded image's short name with localhost/ (a build's with docker.io/library/)
    assert DockerEngine(client).load_archive(archive(keep=0)) == [f"localhost/{tag}"]
    assert DockerEngine(client).find_image(tag)["Id"] == images["v2"]
    DockerEngine(client).tag(images["v1"], [tag])
    assert DockerEngine(client).find_image(tag)["Id"] == images["v1"]


def _fill(data: bytes):
    return lambda write: write(data)


def exported(podman: PodmanService, image_id: str) -> tuple[bytes, list[str], dict[str, bytes]]:
    """(config bytes, diff_ids, layer tar per diff_id) of a Podman image, read by the engine adapter."""
    config = DockerEngine(podman.client).read_config(image_id)
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    return config, diff_ids, {d: s.read() for d, s in DockerEngine(podman.client).export_layers(image_id, set(diff_ids), {})}


def thin_oci(config: bytes, diff_ids: list[str], layers: dict[str, bytes], tag: str, keep: int) -> io.BytesIO:
    """An OCI archive of the image naming its first ``keep`` layers by diff_id, without them."""
    out = io.BytesIO()
    write_oci_image(out, config, [tag], [
        ({"digest": d} if position < keep else None, d, len(layers[d]), _fill(layers[d]))
        for position, d in enumerate(diff_ids)])
    out.seek(0)
    return out


def test_a_thin_oci_archive_loads_through_the_libpod_api_keeping_the_target_id(podman, images, bundles, resources):
    client = podman.client
    config, diff_ids, layers = exported(podman, images["v2"])
    remove_image(podman, images["tag"]["v2"])  # the bundles are made: the next test that needs v2 reloads it
    assert DockerEngine(client).find_image(images["v2"]) is None
    tag = f"localhost/{resources.name('thin')}:test"
    resources.images.append(tag)
    archive = thin_oci(config, diff_ids, layers, tag, keep=2)

    assert PodmanEngine(client).load_archive(archive) == [tag]
    assert DockerEngine(client).find_image(tag)["Id"] == images["v2"]
    container = client.api.create_container(tag, command=["cat", "/etc/app-version"])["Id"]
    client.api.start(container)
    assert client.api.wait(container)["StatusCode"] == 0
    assert client.api.logs(container) == b"2\n"
    client.api.remove_container(container)


def test_a_thin_oci_archive_of_a_base_podman_lacks_is_one_engine_error(podman, images):
    config, diff_ids, layers = exported(podman, images["v1"])
    absent = "sha256:" + "ab" * 32
    layers[absent] = b"x" * 1024
    config = config.replace(diff_ids[0].encode(), absent.encode())
    with pytest.raises(EngineError, match=r"^podman load of the archive failed \(500\): .*blobs/sha256/abab.*"
                                          r"; load its base image first$"):
        PodmanEngine(podman.client).load_archive(thin_oci(config, [absent, *diff_ids[1:]], layers, "localhost/x:1",
                                                          keep=1))


def test_apply_into_podman_loads_the_target_and_swaps_the_container_keeping_its_volumes(
        podman, images, bundles, resources, keypair):
    client = podman.client
    remove_image(podman, images["tag"]["v2"])
    old = start_app(podman, resources, images["tag"]["v1"])
    before = checksums(podman, old)

    result = run_cli("apply", bundles["v2"], "--trust", keypair[1], "--grace", "2", "--json",
                     "--engine", f"podman={podman.docker_host}")
    assert result.returncode == 0, result.stderr
    [applied] = [o for o in json.loads(result.stdout)["outcomes"] if o["event"] == "applied"]
    assert applied["loaded"] is True and [c["name"] for c in applied["containers"]] == [resources.name("app")]
    assert DockerEngine(client).find_image(images["tag"]["v2"])["Id"] == images["v2"]

    new = client.api.inspect_container(resources.name("app"))
    assert new["Id"] != old and new["Image"] == images["v2"] and new["State"]["Running"]
    assert checksums(podman, new["Id"]) == before
    assert run(client, new["Id"], "echo $SITE $VERSION $NEWVAR; cat /cmd /etc/app-version").split() == \
        ["ship-7", "2", "yes", "v2", "2"]
    assert [c["Id"] for c in client.api.containers(all=True, filters={"name": resources.prefix})] == [new["Id"]]


def test_dry_run_into_podman_changes_nothing(podman, images, bundles, resources, keypair):
    remove_image(podman, images["tag"]["v2"])
    old = start_app(podman, resources, images["tag"]["v1"])
    result = run_cli("apply", bundles["v2"], "--trust", keypair[1], "--dry-run", env={"DOCKER_HOST": podman.docker_host})
    assert result.returncode == 0, result.stderr
    assert "would rebuild and load" in result.stdout
    assert podman.client.api.images(filters={"reference": images["tag"]["v2"]}) == []
    assert podman.client.api.inspect_container(resources.name("app"))["Id"] == old


def test_a_target_failing_its_health_check_in_podman_is_rolled_back(podman, images, bundles, resources, keypair):
    client = podman.client
    remove_image(podman, images["tag"]["bad"])
    old = start_app(podman, resources, images["tag"]["v1"])
    before = checksums(podman, old)

    with health_timer(podman):
        result = run_cli("apply", bundles["bad"], "--trust", keypair[1], "--grace", "2",
                         env={"DOCKER_HOST": podman.docker_host})
    assert result.returncode == SwapFailedRolledBack.exit_code, result.stderr
    assert "Traceback" not in result.stderr and "unhealthy" in result.stderr
    back = client.api.inspect_container(resources.name("app"))
    assert back["Id"] == old and back["State"]["Running"] and back["Image"] == images["v1"]
    assert checksums(podman, old) == before
    assert [c["Id"] for c in client.api.containers(all=True, filters={"name": resources.prefix})] == [old]


def test_apply_through_libpod_writes_less_than_through_the_compatible_api(podman, images, bundles, keypair, capsys):
    """The same bundle applied twice, the target removed before each: through Podman's Docker-
    compatible API (a full docker archive: Podman loads no thin one) and with --engine podman (a
    thin OCI archive naming the base's layers by diff_id). Podman copies what it is sent to
    /var/tmp before reading it, so what its service writes tells them apart."""
    written, lines = {}, {}
    for way, options in (("compatible", []), ("libpod", ["--engine", f"podman={podman.docker_host}"])):
        remove_image(podman, images["tag"]["v2"])
        before = podman.written_bytes()
        result = run_cli("apply", bundles["v2"], "--trust", keypair[1], "--no-swap", *options,
                         env={"DOCKER_HOST": podman.docker_host})
        assert result.returncode == 0, result.stderr
        assert DockerEngine(podman.client).find_image(images["tag"]["v2"])["Id"] == images["v2"]
        written[way] = podman.written_bytes() - before
        lines[way] = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("rebuilt ")]
    held = sum(len(layer) for layer in exported(podman, images["v1"])[2].values())  # v2's first two layers
    with capsys.disabled():
        print(f"\nPodman's service wrote {written['libpod']} bytes (thin OCI) vs {written['compatible']} "
              f"(full archive); the layers the thin archive leaves out are {held} bytes")
    assert lines == {"compatible": ["rebuilt 3 layer(s), every one matching its diff_id; loading"],
                     "libpod": ["rebuilt 1 layer(s), every one matching its diff_id; loading"]}
    # both read the base the same way (Podman's docker save also goes through /var/tmp): the
    # difference is the copy of the layers the thin archive does not carry
    assert written["compatible"] - written["libpod"] >= held


def test_an_unreachable_podman_is_one_engine_error(tmp_path):
    with pytest.raises(EngineError, match=r"^cannot reach Podman at unix://.*nothing\.sock \(.*\); start its API "
                                          r"service \(systemctl enable --now podman.socket\) or name its socket: "
                                          r"--engine podman=unix://PATH$"):
        choose.connect(f"podman=unix://{tmp_path}/nothing.sock")
