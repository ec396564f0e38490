"""An update's containers as one set, on a real engine: all or nothing, each back in its state,
``--rm`` ones left out alone, dependents recreated after what they depend on, the target's tag shown."""

from __future__ import annotations

import json

import pytest

from deltaimg.apply.swap import SIDE_SUFFIX, swap_containers
from deltaimg.engine.dockerd import DockerEngine
from deltaimg.errors import DependentsError, SwapFailedRolledBack
from tests.engine_helpers import SLEEP_FOREVER, EngineResources, docker_client, engine_resources, run  # noqa: F401

CMD = ["sh", "-c", SLEEP_FOREVER]
# Healthy on v1 only: the container that fails the update on v2.
ON_V1_ONLY = {"test": ["CMD-SHELL", "grep -q 1 /version"], "interval": 500_000_000, "timeout": 1_000_000_000,
              "retries": 1}


@pytest.fixture(scope="module")
def images(docker_client):
    resources = EngineResources(docker_client)
    v1 = resources.build("v1", ["RUN echo 1 > /version", f"CMD {json.dumps(CMD)}"])
    v2 = resources.build("v2", ["RUN echo 2 > /version"], base=v1)
    yield {"v1": v1, "v2": v2, "v2tag": f"{resources.name('v2')}:test"}
    resources.cleanup()


def create(client, res: EngineResources, image: str, suffix: str, *, start: bool = True, **options) -> str:
    host = {k: options.pop(k) for k in ("auto_remove", "network_mode", "ipc_mode", "links", "volumes_from", "binds")
            if k in options}
    container = client.api.create_container(image, name=res.name(suffix),
                                            host_config=client.api.create_host_config(**host), **options)["Id"]
    if start:
        client.api.start(container)
    return container


def state(client, name: str) -> tuple[str, str, str]:
    """(container ID, image ID, status) of the container of that name."""
    info = client.api.inspect_container(name)
    return info["Id"], info["Image"], info["State"]["Status"]


def test_a_later_container_failing_puts_every_container_of_the_update_back_in_its_state(
        docker_client, engine_resources, images):
    client, res = docker_client, engine_resources
    ids = {"running": create(client, res, images["v1"], "running"),
           "paused": create(client, res, images["v1"], "paused"),
           "failing": create(client, res, images["v1"], "failing", healthcheck=ON_V1_ONLY),
           "after": create(client, res, images["v1"], "after")}
    client.api.pause(ids["paused"])
    lines: list[str] = []

    with pytest.raises(SwapFailedRolledBack) as caught:
        swap_containers(DockerEngine(client), images["v1"], images["v2"], grace=1, log=lines.append)

    assert caught.value.exit_code == 21
    assert str(caught.value) == (
        f"{res.name('failing')}: swap failed (it is unhealthy); the old container is back (running); rolled back "
        f"too: {res.name('running')}, {res.name('paused')} (every container of the update is on its old container "
        "again)")
    expected = {"running": "running", "paused": "paused", "failing": "running", "after": "running"}
    for suffix, status in expected.items():
        assert state(client, res.name(suffix)) == (ids[suffix], images["v1"], status), suffix
    assert sorted(c["Name"].lstrip("/") for c in res.containers()) == sorted(res.name(s) for s in ids)
    assert not any(res.name("after") in line for line in lines)  # never touched


def test_each_container_comes_back_in_its_state_and_an_rm_one_is_left_out_alone(
        docker_client, engine_resources, images):
    client, res = docker_client, engine_resources
    ids = {"running": create(client, res, images["v1"], "running"),
           "paused": create(client, res, images["v1"], "paused"),
           "exited": create(client, res, images["v1"], "exited"),
           "created": create(client, res, images["v1"], "created", start=False),
           "rm": create(client, res, images["v1"], "rm", auto_remove=True)}
    client.api.pause(ids["paused"])
    client.api.stop(ids["exited"], timeout=1)
    lines: list[str] = []

    results = swap_containers(DockerEngine(client), images["v1"], images["v2"], grace=1, log=lines.append)

    assert [r.name for r in results] == [res.name(s) for s in ("running", "paused", "exited", "created")]
    expected = {"running": "running", "paused": "paused", "exited": "created", "created": "created"}
    for suffix, status in expected.items():
        new_id, image, got = state(client, res.name(suffix))
        assert (new_id != ids[suffix], image, got) == (True, images["v2"], status), suffix
    assert state(client, res.name("rm")) == (ids["rm"], images["v1"], "running")
    assert f"{res.name('rm')}: skipped: it runs with --rm, so stopping it deletes it; recreate it by hand" in lines
    assert not [c for c in res.containers() if c["Name"].endswith(SIDE_SUFFIX)]


def test_the_new_container_is_created_from_the_bundles_target_tag_and_the_old_tag_stays(
        docker_client, engine_resources, images):
    client, res = docker_client, engine_resources
    pinned = f"{res.name('app')}:1"
    res.images.append(pinned)
    client.api.tag(images["v1"], res.name("app"), "1")
    create(client, res, pinned, "by-tag")
    create(client, res, images["v1"], "by-id")

    swap_containers(DockerEngine(client), images["v1"], images["v2"], target_tags=[images["v2tag"]], grace=1,
                    log=print)

    for suffix in ("by-tag", "by-id"):
        info = client.api.inspect_container(res.name(suffix))
        assert (info["Image"], info["Config"]["Image"]) == (images["v2"], images["v2tag"]), suffix
    assert client.api.inspect_image(pinned)["Id"] == images["v1"]  # the user's tag still names the base


def test_dependents_are_recreated_after_what_they_depend_on_on_their_own_image_pointing_at_the_new_container(
        docker_client, engine_resources, images):
    client, res = docker_client, engine_resources
    other = res.build("other", base=images["v1"])  # the dependents run another image
    gone = create(client, res, images["v1"], "db")
    link = create(client, res, other, "link", links={res.name("db"): "database"})  # older than the db it names
    client.api.remove_container(gone, force=True)
    db = create(client, res, images["v1"], "db", volumes=["/data"], ipc_mode="shareable")
    run(client, db, "echo kept > /data/blob")
    ids = {"db": db, "link": link,
           "net": create(client, res, other, "net", network_mode=f"container:{db}"),
           "ipc": create(client, res, other, "ipc", ipc_mode=f"container:{res.name('db')}"),
           "vols": create(client, res, other, "vols", volumes_from=[res.name("db")])}
    planned: list[str] = []
    swap_containers(DockerEngine(client), images["v1"], images["v2"], grace=1, dry_run=True, log=planned.append)

    results = swap_containers(DockerEngine(client), images["v1"], images["v2"], grace=1, log=print)

    assert [r.name for r in results] == [res.name(s) for s in ("db", "link", "net", "ipc", "vols")]
    new = {suffix: client.api.inspect_container(res.name(suffix)) for suffix in ids}
    assert {s: (i["Id"] != ids[s], i["Image"], i["State"]["Status"]) for s, i in new.items()} == {
        "db": (True, images["v2"], "running"), **{s: (True, other, "running") for s in ("vols", "net", "ipc", "link")}}
    new_db = new["db"]["Id"]
    assert new["net"]["HostConfig"]["NetworkMode"] == f"container:{new_db}"
    assert new["ipc"]["HostConfig"]["IpcMode"] == f"container:{new_db}"
    assert new["link"]["HostConfig"]["Links"] == [f"/{res.name('db')}:/{res.name('link')}/database"]
    assert run(client, new["vols"]["Id"], "cat /data/blob") == "kept\n"
    assert run(client, new["net"]["Id"], "hostname") == run(client, new_db, "hostname")  # one UTS/network namespace
    assert len(res.containers()) == 5
    assert [line.split(":", 1)[0] for line in planned] == [f"{n}/5 {res.name(s)}" for n, s in enumerate(
        ("db", "link", "net", "ipc", "vols"), 1)]
    assert planned[0].endswith("remove the old ones (volumes kept)")
    assert planned[2].endswith(f"; after {res.name('db')} (--network), which it depends on")
    assert planned[3].endswith(f"; after {res.name('db')} (--ipc), which it depends on")


def test_a_dependent_run_with_rm_refuses_the_update_before_anything_changes(docker_client, engine_resources, images):
    client, res = docker_client, engine_resources
    db = create(client, res, images["v1"], "db")
    create(client, res, images["v1"], "sidecar", network_mode=f"container:{db}", auto_remove=True)
    before = {c["Id"]: c["State"] for c in res.containers()}

    with pytest.raises(DependentsError) as caught:
        swap_containers(DockerEngine(client), images["v1"], images["v2"], grace=1, log=print)

    assert caught.value.exit_code == 28
    assert str(caught.value) == (f"container {res.name('sidecar')} depends on one this update recreates and runs with "
                                 "--rm, so it cannot be recreated; remove it first (and run it again after the update)")
    assert {c["Id"]: c["State"] for c in res.containers()} == before


def test_dry_run_shows_every_container_its_state_and_the_order(docker_client, engine_resources, images):
    client, res = docker_client, engine_resources
    first = create(client, res, images["v1"], "first")
    create(client, res, images["v1"], "second", start=False)
    client.api.pause(first)
    lines: list[str] = []

    plans = swap_containers(DockerEngine(client), images["v1"], images["v2"], grace=1, dry_run=True, log=lines.append)

    assert [(p.name, p.state) for p in plans] == [(res.name("first"), "paused"), (res.name("second"), "created")]
    assert lines[0].startswith(f"1/2 {res.name('first')}: would stop {first[:12]} (paused) and rename it ")
    assert "; pause it;" in lines[0] and lines[0].endswith("remove the old ones (volumes kept)")
    assert lines[1].startswith(f"2/2 {res.name('second')}: would rename ") and "(created)" in lines[1]
    assert len(lines) == 2
    assert state(client, res.name("first")) == (first, images["v1"], "paused")


def test_a_failure_after_a_dependent_was_recreated_puts_it_back_once_its_dependency_runs_again(
        docker_client, engine_resources, images):
    client, res = docker_client, engine_resources
    other = res.build("other", base=images["v1"])
    db = create(client, res, images["v1"], "db")
    ids = {"db": db, "net": create(client, res, other, "net", network_mode=f"container:{db}"),
           "failing": create(client, res, images["v1"], "failing", healthcheck=ON_V1_ONLY)}

    with pytest.raises(SwapFailedRolledBack, match=f"rolled back too: {res.name('db')}, {res.name('net')} "):
        swap_containers(DockerEngine(client), images["v1"], images["v2"], grace=1, log=print)

    assert {s: state(client, res.name(s)) for s in ids} == {
        "db": (db, images["v1"], "running"), "net": (ids["net"], other, "running"),
        "failing": (ids["failing"], images["v1"], "running")}
    assert client.api.inspect_container(ids["net"])["HostConfig"]["NetworkMode"] == f"container:{db}"
    assert len(res.containers()) == 3
