"""Recreating containers onto a new image, end to end against a real engine."""

from __future__ import annotations

import json

import docker.errors
import pytest

from deltaimg.engine.dockerd import DockerEngine
from deltaimg.errors import SwapFailedNotRolledBack, SwapFailedRolledBack
from deltaimg.apply.swap import SIDE_SUFFIX, swap_containers
from tests.engine_helpers import (  # noqa: F401
    SLEEP_FOREVER,
    EngineResources,
    docker_client,
    engine_resources,
    free_port,
    run,
)

V1_CMD = ["sh", "-c", f"echo v1 > /cmd; {SLEEP_FOREVER}"]
V2_CMD = ["sh", "-c", f"echo v2 > /cmd; {SLEEP_FOREVER}"]
DATA_DIRS = ("/named", "/anon", "/useranon", "/bind")


@pytest.fixture(scope="module")
def images(docker_client):
    """v1 (VOLUME /anon, ENV, LABEL, CMD); v2 on top with new ENV/LABEL/CMD; v2 with a failing healthcheck."""
    resources = EngineResources(docker_client)
    v1 = resources.build(
        "v1",
        [
            "VOLUME /anon",
            "ENV VERSION=1 SHARED=from-image",
            "LABEL app.version=1 app.kept=image",
            f"CMD {json.dumps(V1_CMD)}",
        ],
    )
    v2 = resources.build(
        "v2", ["ENV VERSION=2 NEWVAR=yes", "LABEL app.version=2 app.new=yes", f"CMD {json.dumps(V2_CMD)}"], base=v1
    )
    v2_unhealthy = resources.build(
        "v2bad", ['HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD ["/bin/false"]'], base=v1
    )
    v2_healthy = resources.build(
        "v2good", ['HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD ["/bin/true"]'], base=v1
    )
    v2_crashing = resources.build("v2exit", ['CMD ["sh", "-c", "echo boom; exit 3"]'], base=v1)
    yield {"v1": v1, "v2": v2, "v2bad": v2_unhealthy, "v2good": v2_healthy, "v2exit": v2_crashing}
    resources.cleanup()


def start_app(client, resources: EngineResources, image: str, suffix: str, **host_options) -> str:
    container = client.api.create_container(
        image, name=resources.name(suffix), host_config=client.api.create_host_config(**host_options)
    )
    client.api.start(container["Id"])
    return container["Id"]


def fill(client, container: str, dirs=DATA_DIRS) -> str:
    """Write random data into each directory; return the checksums line."""
    run(client, container, " && ".join(f"head -c 300000 /dev/urandom > {d}/blob" for d in dirs))
    return checksums(client, container, dirs)


def checksums(client, container: str, dirs=DATA_DIRS) -> str:
    return run(client, container, "sha256sum " + " ".join(f"{d}/blob" for d in dirs))


def mounts(info: dict) -> dict[str, str]:
    return {m["Destination"]: m.get("Name") or m["Source"] for m in info["Mounts"]}


def test_swap_recreates_containers_on_the_new_image_keeping_user_config_and_data(
    docker_client, engine_resources, images, tmp_path
):
    client, res = docker_client, engine_resources
    net, subnet = res.network("net")
    fixed_ip = subnet.rsplit(".", 1)[0] + ".9"
    port = free_port()
    named = res.name("named")
    client.api.create_volume(named)
    app = client.api.create_container(
        images["v1"],
        name=res.name("app"),
        environment={"MODE": "custom", "SHARED": "from-user"},
        labels={"user.label": "mine"},
        ports=[80],
        volumes=["/useranon"],  # an anonymous volume the user asked for (-v /useranon)
        stop_signal="SIGTERM",
        host_config=client.api.create_host_config(
            binds=[f"{named}:/named", f"{tmp_path}:/bind"],
            port_bindings={80: port},
            restart_policy={"Name": "on-failure", "MaximumRetryCount": 3},
        ),
        networking_config=client.api.create_networking_config(
            {net: client.api.create_endpoint_config(aliases=["web"], ipv4_address=fixed_ip)}
        ),
    )["Id"]
    client.api.start(app)
    moving_tag = res.name("app") + ":current"  # a tag a docker load would move to the new image
    res.images.append(moving_tag)
    client.api.tag(images["v1"], res.name("app"), "current")
    idle = client.api.create_container(moving_tag, name=res.name("idle"), command=["echo", "custom"])["Id"]
    client.api.tag(images["v2"], res.name("app"), "current", force=True)
    before = client.api.inspect_container(app)
    sums = fill(client, app)

    lines: list[str] = []
    results = swap_containers(
        DockerEngine(client), images["v1"], images["v2"], names=None, grace=2, dry_run=False, log=lines.append
    )

    assert sorted(r.name for r in results) == sorted([res.name("app"), res.name("idle")])
    assert all(isinstance(line, str) and "\n" not in line for line in lines)
    new = client.api.inspect_container(res.name("app"))
    assert new["Id"] != app and new["Image"] == images["v2"] and new["State"]["Running"]
    assert checksums(client, new["Id"]) == sums
    assert (tmp_path / "blob").stat().st_size == 300000
    assert mounts(new) == mounts(before)  # the same named volume, anonymous volume and bind
    env = dict(e.split("=", 1) for e in new["Config"]["Env"])
    assert env["MODE"] == "custom" and env["SHARED"] == "from-user"  # the user's
    assert env["VERSION"] == "2" and env["NEWVAR"] == "yes"  # the new image's
    labels = new["Config"]["Labels"]
    assert labels["user.label"] == "mine" and labels["app.kept"] == "image"
    assert labels["app.version"] == "2" and labels["app.new"] == "yes"
    assert new["Config"]["Cmd"] == V2_CMD and run(client, new["Id"], "cat /cmd") == "v2\n"
    assert new["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert new["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"] == str(port)
    endpoint = new["NetworkSettings"]["Networks"][net]
    assert endpoint["IPAddress"] == fixed_ip and "web" in endpoint["Aliases"]
    assert app[:12] not in endpoint["Aliases"]

    idle_new = client.api.inspect_container(res.name("idle"))
    assert idle_new["Id"] != idle and idle_new["Image"] == images["v2"]
    assert not idle_new["State"]["Running"] and idle_new["State"]["StartedAt"].startswith("0001")
    assert idle_new["Config"]["Cmd"] == ["echo", "custom"]
    assert idle_new["Config"]["Image"] == moving_tag and new["Config"]["Image"] == images["v2"]
    assert not [c for c in res.containers() if c["Name"].endswith(SIDE_SUFFIX)]
    assert len(res.containers()) == 2


def test_failed_healthcheck_rolls_back_to_the_old_container(docker_client, engine_resources, images):
    client, res = docker_client, engine_resources
    named = res.name("data")
    app = start_app(client, res, images["v1"], "app", binds=[f"{named}:/named"])
    sums = fill(client, app, ("/named", "/anon"))

    with pytest.raises(SwapFailedRolledBack, match="unhealthy") as caught:
        swap_containers(
            DockerEngine(client), images["v1"], images["v2bad"], names=[res.name("app")], grace=1, dry_run=False, log=print
        )
    assert caught.value.exit_code == 21

    back = client.api.inspect_container(res.name("app"))
    assert back["Id"] == app and back["Image"] == images["v1"] and back["State"]["Running"]
    assert checksums(client, app, ("/named", "/anon")) == sums
    assert [c["Id"] for c in res.containers()] == [app]


def test_a_passing_healthcheck_is_waited_for_and_the_swap_kept(docker_client, engine_resources, images):
    client, res = docker_client, engine_resources
    app = start_app(client, res, images["v1"], "app")
    lines: list[str] = []
    [result] = swap_containers(DockerEngine(client), images["v1"], images["v2good"], names=[res.name("app")], grace=1,
                               log=lines.append)
    new = client.api.inspect_container(res.name("app"))
    assert new["Id"] == result.new_container_id != app and new["Image"] == images["v2good"]
    assert new["State"]["Running"] and new["State"]["Health"]["Status"] == "healthy"
    name = res.name("app")
    assert f"{name}: started; waiting up to 4 s for it to be healthy" in lines  # start period 0 + (1 s + 1 s) x 2
    assert lines[lines.index(f"{name}: started; waiting up to 4 s for it to be healthy") + 1] == f"{name}: healthy"
    assert [c["Id"] for c in res.containers()] == [new["Id"]]  # the old container is gone


class NeverHealthy(DockerEngine):
    """The real engine, but every inspection shows the healthcheck still starting: an engine that
    never gets to run the probe, as a loaded host can be."""

    def inspect_container(self, container: str) -> dict | None:
        info = super().inspect_container(container)
        if info and (info["State"].get("Health") or {}).get("Status"):
            info["State"]["Health"]["Status"] = "starting"
        return info


def test_a_healthcheck_that_never_reports_times_out_and_rolls_back(docker_client, engine_resources, images):
    client, res = docker_client, engine_resources
    app = start_app(client, res, images["v1"], "app")
    with pytest.raises(SwapFailedRolledBack, match="it did not become healthy within 4 s") as caught:
        swap_containers(NeverHealthy(client), images["v1"], images["v2good"], names=[res.name("app")], grace=1, log=print)
    assert caught.value.exit_code == 21
    back = client.api.inspect_container(res.name("app"))
    assert back["Id"] == app and back["Image"] == images["v1"] and back["State"]["Running"]
    assert [c["Id"] for c in res.containers()] == [app]


def test_exiting_container_rolls_back_and_a_failed_rollback_says_so(
    docker_client, engine_resources, images, monkeypatch
):
    client, res = docker_client, engine_resources
    first = start_app(client, res, images["v1"], "first", restart_policy={"Name": "always"})
    second = start_app(client, res, images["v1"], "second")

    with pytest.raises(SwapFailedRolledBack, match=r"exited with code 3 \(last output: boom\)"):
        swap_containers(DockerEngine(client), images["v1"], images["v2exit"], names=[res.name("first")], grace=2, log=print)
    back = client.api.inspect_container(res.name("first"))
    assert back["Id"] == first and back["State"]["Running"]

    real_rename = client.api.rename

    def rename(container: str, name: str) -> None:
        if name == res.name("second"):  # the rollback's rename back
            raise docker.errors.APIError("rename refused for the test")
        real_rename(container, name)

    monkeypatch.setattr(client.api, "rename", rename)
    with pytest.raises(SwapFailedNotRolledBack, match="cannot rename the old one back") as caught:
        swap_containers(DockerEngine(client), images["v1"], images["v2exit"], names=[res.name("second")], grace=2, log=print)
    assert caught.value.exit_code == 22
    left = client.api.inspect_container(second)
    assert left["Name"] == f"/{res.name('second')}{SIDE_SUFFIX}" and left["State"]["Running"]


def test_dry_run_changes_nothing(docker_client, engine_resources, images):
    client, res = docker_client, engine_resources
    app = start_app(client, res, images["v1"], "app")
    before = client.api.inspect_container(app)
    lines: list[str] = []

    results = swap_containers(
        DockerEngine(client), images["v1"], images["v2"], names=[res.name("app")], grace=1, dry_run=True, log=lines.append
    )

    assert [(r.name, r.new_container_id, r.started) for r in results] == [(res.name("app"), None, True)]
    assert results[0].config["Image"] == images["v2"]
    assert len(lines) == 1 and lines[0].startswith(f"1/1 {res.name('app')}: would stop {app[:12]} (running)")
    after = client.api.inspect_container(app)
    assert after["Image"] == images["v1"] and after["State"] == before["State"]
    assert [c["Id"] for c in res.containers()] == [app]
