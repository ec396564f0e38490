"""deltaimg apply on a live engine, through the command line, as an edge host runs it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from deltaimg.errors import BaseMissingError, SwapFailedRolledBack
from tests.conftest import archive_image, run_cli
from tests.engine_helpers import SLEEP_FOREVER, EngineResources, free_port, run  # noqa: F401

V1_CMD = ["sh", "-c", f"echo v1 > /cmd; {SLEEP_FOREVER}"]
V2_CMD = ["sh", "-c", f"echo v2 > /cmd; {SLEEP_FOREVER}"]
DATA_DIRS = ("/named", "/anon", "/bind")


@pytest.fixture(scope="module")
def images(docker_client):
    resources = EngineResources(docker_client)
    v1 = resources.build("v1", ["VOLUME /anon", "ENV VERSION=1", "LABEL app.version=1", f"CMD {json.dumps(V1_CMD)}"])
    lines = ["RUN echo 2 > /etc/app-version && cp /bin/busybox /bin/busybox-2", "ENV VERSION=2 NEWVAR=yes",
             "LABEL app.version=2", f"CMD {json.dumps(V2_CMD)}"]
    v2 = resources.build("v2", lines, base=v1)
    bad = resources.build("bad", [*lines, 'HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD ["false"]'], base=v1)
    yield {"v1": v1, "v2": v2, "bad": bad, "tag": {k: f"{resources.name(k)}:test" for k in ("v1", "v2", "bad")}}
    resources.cleanup()


@pytest.fixture(scope="module")
def bundles(images, keypair, tmp_path_factory) -> dict[str, str]:
    """Bundles v1->v2 and v1->bad, made from the engine's images before any test removes them."""
    made = {}
    for target in ("v2", "bad"):
        made[target] = str(tmp_path_factory.mktemp("bundles") / f"{target}.dimg")
        result = run_cli("make", f"docker-daemon:{images['tag']['v1']}", f"docker-daemon:{images['tag'][target]}",
                         "-o", made[target], "--key", keypair[0])
        assert result.returncode == 0, result.stderr
    return made


def remove_target(client, images, target: str) -> None:
    """The edge host does not have the new image yet."""
    if client.api.images(filters={"reference": images["tag"][target]}):
        client.api.remove_image(images["tag"][target])
    assert client.api.images(filters={"reference": images["tag"][target]}) == []


def start_app(client, res: EngineResources, image_tag: str, tmp_path: Path) -> str:
    """A container on v1 with a named volume, an anonymous volume, a bind mount, an env override,
    a published port, a restart policy, a user network with an alias; data written everywhere."""
    net, _ = res.network("net")
    named = res.name("data")
    client.api.create_volume(named)
    bind = tmp_path / "bind"
    bind.mkdir()
    container = client.api.create_container(
        image_tag, name=res.name("app"), environment={"SITE": "ship-7"}, ports=[80],
        host_config=client.api.create_host_config(
            binds={named: {"bind": "/named", "mode": "rw"}, str(bind): {"bind": "/bind", "mode": "rw"}},
            port_bindings={80: free_port()}, restart_policy={"Name": "unless-stopped"}),
        networking_config=client.api.create_networking_config({net: client.api.create_endpoint_config(aliases=["web"])}),
    )["Id"]
    client.api.start(container)
    run(client, container, " && ".join(f"head -c 200000 /dev/urandom > {d}/blob" for d in DATA_DIRS))
    return container


def checksums(client, container: str) -> str:
    return run(client, container, "sha256sum " + " ".join(f"{d}/blob" for d in DATA_DIRS))


def test_apply_loads_the_new_image_and_swaps_the_container_keeping_everything(
        docker_client, engine_resources, images, bundles, keypair, tmp_path):
    client, res = docker_client, engine_resources
    bundle = bundles["v2"]
    remove_target(client, images, "v2")
    old = start_app(client, res, images["tag"]["v1"], tmp_path)
    before = checksums(client, old)
    ports = client.api.inspect_container(old)["HostConfig"]["PortBindings"]
    assert list(ports) == ["80/tcp"] and ports["80/tcp"][0]["HostPort"].isdigit()  # what the old container publishes

    result = run_cli("apply", bundle, "--trust", keypair[1], "--grace", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [applied] = [o for o in report["outcomes"] if o["event"] == "applied"]
    assert applied["loaded"] is True and [c["name"] for c in applied["containers"]] == [res.name("app")]

    new = client.api.inspect_container(res.name("app"))
    assert new["Image"] == images["v2"] and new["State"]["Running"]
    assert checksums(client, new["Id"]) == before
    env = run(client, new["Id"], "echo $SITE $VERSION $NEWVAR; cat /cmd /etc/app-version")
    assert env.split() == ["ship-7", "2", "yes", "v2", "2"]
    assert new["Config"]["Labels"]["app.version"] == "2"
    assert new["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert new["HostConfig"]["PortBindings"] == ports
    net = res.networks[0]
    assert "web" in new["NetworkSettings"]["Networks"][net]["Aliases"]
    assert client.api.images(filters={"reference": images["tag"]["v2"]})  # the target's tag is back

    again = run_cli("apply", bundle, "--trust", keypair[1], "--grace", "2")
    assert again.returncode == 0 and "already in the engine" in again.stdout
    assert client.api.inspect_container(res.name("app"))["Id"] == new["Id"]


def test_a_new_image_that_fails_its_healthcheck_is_rolled_back(docker_client, engine_resources, images, bundles, keypair, tmp_path):
    client, res = docker_client, engine_resources
    bundle = bundles["bad"]
    remove_target(client, images, "bad")
    old = start_app(client, res, images["tag"]["v1"], tmp_path)
    before = checksums(client, old)

    result = run_cli("apply", bundle, "--trust", keypair[1], "--grace", "2")
    assert result.returncode == SwapFailedRolledBack.exit_code, result.stderr
    assert "Traceback" not in result.stderr
    back = client.api.inspect_container(res.name("app"))
    assert back["Id"] == old and back["State"]["Running"] and back["Image"] == images["v1"]
    assert checksums(client, old) == before
    assert [c["Names"] for c in client.api.containers(all=True, filters={"name": res.prefix})] == [["/" + res.name("app")]]


def test_a_bundle_for_an_image_the_engine_lacks_changes_nothing(docker_client, example_pair, example_bundle, keypair):
    target_id = "sha256:" + hashlib.sha256(archive_image(example_pair[1])[0]).hexdigest()
    images_before = {i["Id"] for i in docker_client.api.images(all=True)}
    containers_before = {c["Id"] for c in docker_client.api.containers(all=True)}
    result = run_cli("apply", example_bundle, "--trust", keypair[1])
    assert result.returncode == BaseMissingError.exit_code
    assert "example/app:1.0" in result.stderr and "example/app:1.1" in result.stderr and "lacks" in result.stderr
    # the engine is shared with other test runs, which add and remove their own: nothing appeared that is this bundle's
    images_after = docker_client.api.images(all=True)
    assert [i for i in images_after if i["Id"] not in images_before
            and (i["Id"] == target_id or any(t.startswith("example/") for t in i.get("RepoTags") or []))] == []
    containers_after = docker_client.api.containers(all=True)
    assert [c for c in containers_after if c["Id"] not in containers_before
            and (c["ImageID"] == target_id or c["Image"].startswith("example/"))] == []


def test_dry_run_prints_the_plan_and_changes_nothing(docker_client, engine_resources, images, bundles, keypair, tmp_path):
    client, res = docker_client, engine_resources
    bundle = bundles["v2"]
    remove_target(client, images, "v2")
    old = start_app(client, res, images["tag"]["v1"], tmp_path)
    result = run_cli("apply", bundle, "--trust", keypair[1], "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would rebuild and load" in result.stdout
    assert client.api.images(filters={"reference": images["tag"]["v2"]}) == []
    assert client.api.inspect_container(res.name("app"))["Id"] == old


def test_an_archive_rebuilt_by_apply_o_is_what_docker_load_takes(docker_client, images, bundles, keypair, tmp_path):
    """The edge host without deltaimg near its engine: rebuild on a laptop, carry the archive, docker load."""
    base = tmp_path / "v1.tar"
    with open(base, "wb") as out:
        for chunk in docker_client.images.get(images["v1"]).save(named=True):
            out.write(chunk)
    rebuilt = tmp_path / "v2.tar"
    result = run_cli("apply", bundles["v2"], "--trust", keypair[1], "--base", str(base), "-o", str(rebuilt))
    assert result.returncode == 0, result.stderr
    remove_target(docker_client, images, "v2")
    with open(rebuilt, "rb") as archive:
        loaded = docker_client.images.load(archive.read())
    assert [image.id for image in loaded] == [images["v2"]]
    assert docker_client.images.get(images["tag"]["v2"]).id == images["v2"]
