"""A whole application updated by one bundle of two images on the real engine and the real
docker-compose (1.29): a compose project (a database with a named volume and a healthcheck, a web
service that ``depends_on`` it, a sidecar of the second image in the web's network namespace) and
a plain container of the first image with a dependent of a third image (``--volumes-from``).

The compose file names ``APP:latest`` and ``SIDE:latest``; the bundle's targets carry those tags,
so the bundle moves both.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.engine_helpers import SLEEP_FOREVER, EngineResources, run
from tests.test_compose import Project

SECOND = 1_000_000_000  # the Engine API's durations are in nanoseconds
V1_ONLY = {"test": ["CMD-SHELL", "test -f /v1-only"], "interval": SECOND, "timeout": 2 * SECOND, "retries": 1}


@pytest.fixture(scope="module")
def app(docker_client, keypair, tmp_path_factory):
    """v1 -> v2 of the app and side1 -> side2 of the sidecar, in one bundle; ``other``, an image
    the bundle does not touch, for the plain container's dependent."""
    res = EngineResources(docker_client)
    cmd = json.dumps(["sh", "-c", SLEEP_FOREVER])
    v1 = res.build("v1", ["RUN echo 1 > /version && touch /v1-only", f"CMD {cmd}"])
    v2 = res.build("v2", ["RUN echo 2 > /version && rm /v1-only"], base=v1)
    side1 = res.build("side1", ["RUN echo s1 > /version"], base=v1)
    side2 = res.build("side2", ["RUN echo s2 > /version"], base=side1)
    other = res.build("other", ["RUN echo other > /version"], base=v1)
    tags = {"app": f"{res.name('app')}:latest", "othertag": f"{res.name('side')}:latest"}
    res.images += list(tags.values())
    docker_client.api.tag(v2, *tags["app"].split(":"))
    docker_client.api.tag(side2, *tags["othertag"].split(":"))
    bundle = str(tmp_path_factory.mktemp("whole-app") / "app.dimg")
    made = run_cli("make", f"docker-daemon:{res.name('v1')}:test", f"docker-daemon:{tags['app']}",
                   f"docker-daemon:{res.name('side1')}:test", f"docker-daemon:{tags['othertag']}",
                   "-o", bundle, "--key", keypair[0])
    assert made.returncode == 0, made.stderr
    yield {"v1": v1, "v2": v2, "side1": side1, "side2": side2, "other": other, **tags,
           "v1tag": f"{res.name('v1')}:test", "othertagged": f"{res.name('other')}:test",
           "bundle": bundle, "trust": keypair[1]}
    res.cleanup()


@pytest.fixture
def site(docker_client, engine_resources, app, tmp_path):
    """Brings up the host before the update: the project on v1 and side1, and the plain container
    (with a healthcheck only v1 passes when ``v1_only``) with its dependent."""
    made: list[Project] = []
    api = docker_client.api

    def bring_up(v1_only: bool = False) -> tuple[Project, str, str]:
        api.tag(app["side1"], *app["othertag"].split(":"))  # the host runs side1 under the tag
        made.append(Project(docker_client, engine_resources, app, tmp_path))
        plain = api.create_container(app["v1tag"], name=engine_resources.name("plain"), volumes=["/state"],
                                     healthcheck=V1_ONLY if v1_only else None)["Id"]
        api.start(plain)
        run(docker_client, plain, "echo plain-data > /state/file")
        reader = api.create_container(app["othertagged"], name=engine_resources.name("reader"),
                                      host_config=api.create_host_config(volumes_from=[plain]))["Id"]
        api.start(reader)
        return made[-1], plain, reader

    yield bring_up
    for project in made:
        project.down()
    api.tag(app["v2"], *app["app"].split(":"))
    api.tag(app["side2"], *app["othertag"].split(":"))


def plain_state(docker_client, engine_resources) -> dict[str, tuple[str, str, str]]:
    """plain and reader -> (container ID, image ID, status)."""
    infos = {n: docker_client.api.inspect_container(engine_resources.name(n)) for n in ("plain", "reader")}
    return {n: (i["Id"], i["Image"], i["State"]["Status"]) for n, i in infos.items()}


def test_one_bundle_of_two_images_moves_the_compose_project_and_the_plain_containers_together(
        site, app, docker_client, engine_resources):
    project, plain, reader = site()
    before = project.state()

    applied = project.apply()

    assert applied.returncode == 0, applied.stderr
    after = project.state()
    assert {s: (i != before[s][0], image, status) for s, (i, image, status) in after.items()} == {
        "db": (True, app["v2"], "running"), "web": (True, app["v2"], "running"),
        "side": (True, app["side2"], "running")}
    assert run(docker_client, after["db"][0], "cat /data/blob /version") == "kept\n2\n"
    assert run(docker_client, after["side"][0], "cat /version") == "s2\n"
    assert run(docker_client, after["side"][0], "hostname") == run(docker_client, after["web"][0], "hostname")
    plains = plain_state(docker_client, engine_resources)
    assert {n: (i not in (plain, reader), image, status) for n, (i, image, status) in plains.items()} == {
        "plain": (True, app["v2"], "running"), "reader": (True, app["other"], "running")}
    assert run(docker_client, plains["reader"][0], "cat /state/file") == "plain-data\n"  # from the new plain
    assert docker_client.api.inspect_container(plains["plain"][0])["Config"]["Image"] == app["app"]
    project.compose("up", "-d")
    assert project.state() == after  # compose calls every service up to date


def test_a_failing_health_check_of_a_plain_container_puts_every_service_of_both_images_back(
        site, app, docker_client, engine_resources):
    """The plain container's healthcheck passes only on v1, so its swap fails: every container of
    the update, compose's of both images included, goes back, and both tags point at the bases."""
    project, plain, reader = site(v1_only=True)
    before = project.state()

    failed = project.apply()

    assert failed.returncode == 21, failed.stderr
    assert f"{engine_resources.name('plain')}: swap failed (it is unhealthy)" in failed.stderr
    back = project.state()
    assert {s: (image, status) for s, (_, image, status) in back.items()} == {
        "db": (app["v1"], "running"), "web": (app["v1"], "running"), "side": (app["side1"], "running")}
    assert all(back[s][0] != before[s][0] for s in back)  # older than plain: moved first, then put back by compose
    assert run(docker_client, back["db"][0], "cat /data/blob /version") == "kept\n1\n"
    assert plain_state(docker_client, engine_resources) == {
        "plain": (plain, app["v1"], "running"), "reader": (reader, app["other"], "running")}
    assert docker_client.api.inspect_image(app["app"])["Id"] == app["v1"]
    assert docker_client.api.inspect_image(app["othertag"])["Id"] == app["side1"]
    project.compose("up", "-d")
    assert {s: image for s, (_, image, _) in project.state().items()} == {s: image for s, (_, image, _) in before.items()}
