"""Swarm services (docs/site.md): on a manager, apply moves the services on the bundle's base onto the
target with Swarm's own rolling update, honours its failure action (a rollback fails the apply
with exit 32), reports each service, and never swaps Swarm's task containers itself. On a
one-node swarm this engine joins for the module, and leaves again only if it was not in one."""

from __future__ import annotations

import subprocess
import time

import docker
import pytest

from deltaimg.errors import SwarmError
from tests.test_unattended import apply, app  # noqa: F401  (the app's versions and bundles, a module fixture)


@pytest.fixture(scope="module")
def swarm(docker_client):
    state = docker_client.info()["Swarm"]["LocalNodeState"]
    initialised = state == "inactive"
    if initialised:
        subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True, capture_output=True)
    yield docker_client
    if initialised:
        subprocess.run(["docker", "swarm", "leave", "--force"], check=True, capture_output=True)


def tasks_running(client, service_id: str) -> list[str]:
    """The image IDs of the service's running task containers."""
    found = client.api.containers(filters={"label": f"com.docker.swarm.service.id={service_id}", "status": "running"})
    return sorted(client.api.inspect_container(c["Id"])["Image"] for c in found)


def converge(client, service_id: str, image_id: str, replicas: int = 2) -> None:
    for _ in range(120):
        if tasks_running(client, service_id) == [image_id] * replicas:
            return
        time.sleep(0.5)
    raise AssertionError(f"service {service_id} never ran {replicas} tasks of {image_id}: {tasks_running(client, service_id)}")


def test_a_service_on_the_base_is_rolled_onto_the_target_and_a_failing_target_is_rolled_back(
        swarm, app, engine_resources, keypair, tmp_path):  # noqa: F811
    client = swarm
    app.host_has("1")
    name = engine_resources.name("svc")
    service = client.api.create_service(
        docker.types.TaskTemplate(docker.types.ContainerSpec(app.tag("1"), stop_grace_period=1_000_000_000),
                                  restart_policy=docker.types.RestartPolicy(condition="on-failure", max_attempts=1)),
        name=name, mode=docker.types.ServiceMode("replicated", replicas=2),
        update_config=docker.types.UpdateConfig(parallelism=1, delay=0, monitor=4_000_000_000,
                                                failure_action="rollback"),
        rollback_config=docker.types.RollbackConfig(parallelism=2, delay=0, monitor=1_000_000_000))["ID"]
    try:
        converge(client, service, app.ids["1"])
        plain = {c["Id"] for c in client.api.containers(all=True)}

        planned = apply(app.bundles["1", "2"], "--trust", keypair[1], "--dry-run")
        assert planned.returncode == 0, planned.stderr
        assert (f"would update Swarm service {name} ({app.tag('1')}) onto {app.tag('2')} with its rolling update"
                in planned.stdout)
        assert tasks_running(client, service) == [app.ids["1"]] * 2

        failing = apply(app.bundles["1", "bad"], "--trust", keypair[1])
        assert failing.returncode == SwarmError.exit_code, (failing.stdout, failing.stderr)
        assert f"deltaimg: error: Swarm service {name} rolled back: " in failing.stderr
        assert f"(docker service ps {name}; fix the image and apply again)" in failing.stderr
        assert client.api.inspect_service(service)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == app.tag("1")
        converge(client, service, app.ids["1"])

        result = apply(app.bundles["1", "2"], "--trust", keypair[1])
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert f"updating Swarm service {name} ({app.tag('1')}) onto {app.tag('2')}" in result.stdout
        assert f"Swarm service {name} updated" in result.stdout
        spec = client.api.inspect_service(service)["Spec"]
        assert spec["TaskTemplate"]["ContainerSpec"]["Image"] == app.tag("2")
        assert (spec["Mode"], spec["UpdateConfig"]["FailureAction"]) == ({"Replicated": {"Replicas": 2}}, "rollback")
        converge(client, service, app.ids["2"])
        # the app's containers made since (other tests share the engine): Swarm's own, no swap's
        added = [c for c in client.api.containers(all=True) if c["Id"] not in plain and c["ImageID"] in app.ids.values()]
        assert added and all("com.docker.swarm.service.id" in (c.get("Labels") or {}) for c in added)
        assert not client.api.containers(all=True, filters={"name": "-deltaimg-old"})
    finally:
        client.api.remove_service(service)
        for _ in range(60):
            if not client.api.containers(all=True, filters={"label": f"com.docker.swarm.service.id={service}"}):
                break
            time.sleep(0.5)
