"""Compose projects on a real engine with the real docker-compose (1.29): apply lets compose
recreate their services, and compose agrees afterwards.

Each case brings up its own project (a database with a named volume and a healthcheck, a web
service that ``depends_on`` it, a sidecar of another image in the web's network namespace,
``network_mode: service:web``) from a compose file naming ``APP:latest``, which points at v1;
the bundle's target (v2, already in the engine) carries that tag, so the bundle moves it.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from deltaimg.apply.journal import JOURNAL, Journal
from tests.conftest import run_cli
from tests.engine_helpers import SLEEP_FOREVER, EngineResources, _unavailable, run

SERVICES = ("db", "web", "side")
HEALTHY = {"test": ["CMD-SHELL", "test -f /version"], "interval": "1s", "timeout": "2s", "retries": 3}


@pytest.fixture(scope="module")
def images(docker_client, keypair, tmp_path_factory):
    """v1 and v2 of the app (v2 tagged APP:latest when the bundle is made), another image for the
    sidecar, and the bundle v1 -> v2."""
    if not any(os.access(os.path.join(d, "docker-compose"), os.X_OK) for d in os.environ["PATH"].split(os.pathsep)):
        _unavailable("docker-compose is not installed (apt-get install docker-compose)")
    res = EngineResources(docker_client)
    cmd = json.dumps(["sh", "-c", SLEEP_FOREVER])
    v1 = res.build("v1", ["RUN echo 1 > /version", f"CMD {cmd}"])
    v2 = res.build("v2", ["RUN echo 2 > /version"], base=v1)
    other = res.build("other", ["RUN echo other > /version"], base=v1)
    app = res.name("app")
    res.images.append(f"{app}:latest")
    docker_client.api.tag(v2, app, "latest")
    bundle = str(tmp_path_factory.mktemp("compose") / "app.dimg")
    made = run_cli("make", f"docker-daemon:{res.name('v1')}:test", f"docker-daemon:{app}:latest", "-o", bundle,
                   "--key", keypair[0])
    assert made.returncode == 0, made.stderr
    yield {"v1": v1, "v2": v2, "other": other, "app": f"{app}:latest", "v1tag": f"{res.name('v1')}:test",
           "othertag": f"{res.name('other')}:test", "bundle": bundle, "trust": keypair[1]}
    res.cleanup()


class Project:
    """A compose project of its own in ``folder``, brought up from a compose file naming ``image``."""

    def __init__(self, client, res: EngineResources, images: dict, folder, image: str | None = None,
                 web_health: dict | None = None) -> None:
        self.client, self.images = client, images
        self.folder = str(folder)
        self.name = res.prefix
        app = image or images["app"]
        services = {
            "db": {"image": app, "volumes": ["data:/data"], "healthcheck": HEALTHY},
            "web": {"image": app, "depends_on": ["db"], **({"healthcheck": web_health} if web_health else {})},
            "side": {"image": images["othertag"], "network_mode": "service:web", "depends_on": ["web"]},
        }
        with open(os.path.join(self.folder, "docker-compose.yml"), "w") as out:
            json.dump({"version": "3.8", "services": services, "volumes": {"data": {}}}, out)  # JSON is YAML
        client.api.tag(images["v1"], *images["app"].split(":"))  # the host runs v1 under the tag
        self.compose("up", "-d")
        run(client, self.container("db")["Id"], "echo kept > /data/blob")

    def compose(self, *args: str) -> str:
        done = subprocess.run(["docker-compose", "-p", self.name, *args], cwd=self.folder, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stderr

    def container(self, service: str) -> dict:
        found = self.client.api.containers(all=True, filters={"label": [f"com.docker.compose.project={self.name}",
                                                                        f"com.docker.compose.service={service}"]})
        assert len(found) == 1, found
        return self.client.api.inspect_container(found[0]["Id"])

    def state(self) -> dict[str, tuple[str, str, str]]:
        """service -> (container ID, image ID, status)."""
        infos = {s: self.container(s) for s in SERVICES}
        return {s: (i["Id"], i["Image"], i["State"]["Status"]) for s, i in infos.items()}

    def images_of(self) -> dict[str, str]:
        return {s: image for s, (_, image, _) in self.state().items()}

    def apply(self, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return run_cli("apply", self.images["bundle"], "--trust", self.images["trust"], "--grace", "1", *extra, env=env)

    def down(self) -> None:
        subprocess.run(["docker-compose", "-p", self.name, "down", "-v"], cwd=self.folder, capture_output=True,
                       timeout=300)


@pytest.fixture
def project(docker_client, engine_resources, images, tmp_path):
    made: list[Project] = []

    def bring_up(**options) -> Project:
        made.append(Project(docker_client, engine_resources, images, tmp_path, **options))
        return made[-1]

    yield bring_up
    for p in made:
        p.down()
    docker_client.api.tag(images["v2"], *images["app"].split(":"))


def test_apply_lets_compose_recreate_each_service_and_compose_then_agrees(project, images, docker_client):
    p = project()
    before = p.state()
    planned = p.apply("--dry-run")
    assert planned.returncode == 0, planned.stderr
    lines = [line for line in planned.stdout.splitlines() + planned.stderr.splitlines() if "compose project" in line]
    assert [line.split(" compose project ")[0].split(" ", 1)[0] for line in lines] == ["1/3", "2/3", "3/3"]
    assert [line.split(" service ")[1].split(" ")[0] for line in lines] == list(SERVICES)
    assert f"would point {images['app']} at the target, then docker-compose up -d --no-deps --force-recreate db" in lines[0]
    assert "keep its own image (it depends on a container of the update)" in lines[2]
    assert p.state() == before

    applied = p.apply()

    assert applied.returncode == 0, applied.stderr
    after = p.state()
    assert {s: (i != before[s][0], image, status) for s, (i, image, status) in after.items()} == {
        "db": (True, images["v2"], "running"), "web": (True, images["v2"], "running"),
        "side": (True, images["other"], "running")}
    assert run(docker_client, after["db"][0], "cat /data/blob /version") == "kept\n2\n"
    assert run(docker_client, after["side"][0], "hostname") == run(docker_client, after["web"][0], "hostname")
    assert docker_client.api.inspect_image(images["app"])["Id"] == images["v2"]
    p.compose("up", "-d")
    assert p.state() == after  # compose calls every container up to date
    p.compose("up", "-d", "--force-recreate")
    assert p.images_of() == {"db": images["v2"], "web": images["v2"], "side": images["other"]}
    assert run(docker_client, p.container("db")["Id"], "cat /data/blob") == "kept\n"
    p.compose("down", "-v")
    assert docker_client.api.containers(all=True, filters={"label": f"com.docker.compose.project={p.name}"}) == []
    assert docker_client.api.volumes(filters={"name": p.name})["Volumes"] in (None, [])


def test_a_pinned_tag_or_a_plain_container_depending_on_a_compose_one_stops_the_apply_before_anything_changes(
        project, images, docker_client, engine_resources):
    p = project(image=images["v1tag"])
    web = p.container("web")
    plain = docker_client.api.create_container(
        images["othertag"], name=engine_resources.name("plain"),
        host_config=docker_client.api.create_host_config(network_mode=f"container:{web['Id']}"))["Id"]
    docker_client.api.start(plain)
    before = p.state()

    refused = p.apply()

    assert refused.returncode == 30, refused.stderr
    assert (f"container {engine_resources.name('plain')} depends on {web['Name'].lstrip('/')} (--network), a container "
            f"of compose project {p.name}, which compose recreates; nothing was changed") in refused.stderr
    docker_client.api.remove_container(plain, force=True)

    refused = p.apply()

    assert refused.returncode == 30, refused.stderr
    assert (f"{p.folder}/docker-compose.yml: service db names image {images['v1tag']}, which this bundle does not move, "
            f"so compose would keep the old version; nothing was changed: set image: {images['app']} there") in refused.stderr
    assert p.state() == before
    assert docker_client.api.inspect_image(images["app"])["Id"] == images["v1"]


def test_a_failing_health_check_rolls_the_whole_set_back_with_its_data(project, images, docker_client):
    p = project(web_health={"test": ["CMD-SHELL", "grep -q 1 /version"], "interval": "1s", "timeout": "2s",
                            "retries": 1})
    before = p.state()

    failed = p.apply()

    assert failed.returncode == 21, failed.stderr
    assert "swap failed (it is unhealthy)" in failed.stderr
    assert f"rolled back too: {p.container('db')['Name'].lstrip('/')}" in failed.stderr
    back = p.state()
    assert {s: (image, status) for s, (_, image, status) in back.items()} == {
        "db": (images["v1"], "running"), "web": (images["v1"], "running"), "side": (images["other"], "running")}
    assert back["side"][0] != before["side"][0]  # recreated after the web it shares a namespace with
    assert run(docker_client, back["side"][0], "hostname") == run(docker_client, back["web"][0], "hostname")
    assert run(docker_client, back["db"][0], "cat /data/blob /version") == "kept\n1\n"
    assert docker_client.api.inspect_image(images["app"])["Id"] == images["v1"]
    p.compose("up", "-d")
    assert p.state() == back


def test_a_run_killed_mid_swap_is_rolled_back_by_compose_and_the_next_run_applies(project, images, docker_client,
                                                                                 state_dir):
    p = project()

    killed = p.apply(env={"DELTAIMG_TEST_KILL_AT": "start#2"})  # web recreated on v2, not yet checked

    assert killed.returncode == -9
    assert p.images_of() == {"db": images["v2"], "web": images["v2"], "side": images["other"]}
    final = p.apply()
    assert final.returncode == 0, final.stderr
    attempts = Journal(os.path.join(state_dir, JOURNAL)).attempts()
    assert [a.closed["outcome"] for a in attempts] == ["recovered", "applied"]
    assert [(c["name"], c["action"]) for c in attempts[0].closed["containers"]] == [
        (p.container(s)["Name"].lstrip("/"), "rolled-back") for s in ("db", "web")]
    after = p.state()
    assert p.images_of() == {"db": images["v2"], "web": images["v2"], "side": images["other"]}
    assert run(docker_client, after["db"][0], "cat /data/blob") == "kept\n"
    p.compose("up", "-d")
    assert p.state() == after
