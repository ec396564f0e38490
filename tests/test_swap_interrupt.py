"""Interrupting a swap on a real engine: Ctrl-C (SIGINT) rolls the update back and ends as
interrupted (130); a rollback that fails after an interrupt between two containers says so (22);
a container named twice (by name and by ID) is swapped once."""

from __future__ import annotations

import json
import signal

import pytest

from deltaimg.apply.swap import SIDE_SUFFIX, swap_containers
from deltaimg.engine.dockerd import DockerEngine
from deltaimg.errors import EngineError, SwapFailedNotRolledBack
from tests.conftest import run_cli
from tests.engine_helpers import SLEEP_FOREVER, EngineResources
from tests.test_crash import terminate_when

CMD = ["sh", "-c", SLEEP_FOREVER]


@pytest.fixture(scope="module")
def images(docker_client, keypair, tmp_path_factory):
    res = EngineResources(docker_client)
    v1 = res.build("v1", ["RUN echo 1 > /version", f"CMD {json.dumps(CMD)}"])
    v2 = res.build("v2", ["RUN echo 2 > /version"], base=v1)
    bundle = str(tmp_path_factory.mktemp("interrupt") / "v2.dimg")
    made = run_cli("make", f"docker-daemon:{res.name('v1')}:test", f"docker-daemon:{res.name('v2')}:test", "-o", bundle,
                   "--key", keypair[0])
    assert made.returncode == 0, made.stderr
    yield {"v1": v1, "v2": v2, "bundle": bundle, "trust": keypair[1]}
    res.cleanup()


def start(client, res: EngineResources, image: str, suffix: str) -> str:
    container = client.api.create_container(image, name=res.name(suffix))["Id"]
    client.api.start(container)
    return container


def test_ctrl_c_during_a_swap_rolls_back_and_exits_130(docker_client, engine_resources, images):
    client, res = docker_client, engine_resources
    old = start(client, res, images["v1"], "app")

    def new_container_up() -> bool:  # the apply waits out the new container's grace
        info = client.api.inspect_container(res.name("app"))
        return info["Image"] == images["v2"] and info["State"]["Running"]

    code, out, err = terminate_when(images["bundle"], images["trust"], "60", new_container_up, signal.SIGINT)

    assert (code, err.splitlines()[-1]) == (130, "deltaimg: interrupted"), (out, err)
    info = client.api.inspect_container(res.name("app"))
    assert (info["Id"], info["Image"], info["State"]["Status"]) == (old, images["v1"], "running")
    assert [c["Name"].lstrip("/") for c in res.containers()] == [res.name("app")]


class RenameBackRefused(DockerEngine):
    """The engine refuses to give an old container its name back (the rollback's step)."""

    def rename(self, container_id: str, name: str) -> None:
        if not name.endswith(SIDE_SUFFIX):
            raise EngineError(f"cannot rename {container_id[:12]}", "refused by the test")
        super().rename(container_id, name)


class InterruptAtSecond:
    """Ctrl-C arrives as the second container's swap is about to begin."""

    def planned(self, plans) -> None:
        pass

    def step(self, plan, step: str) -> None:
        if step == "begin" and plan.name.endswith("-second"):
            raise KeyboardInterrupt


def test_an_interrupt_between_two_containers_whose_rollback_fails_says_so_with_exit_22(
        docker_client, engine_resources, images):
    client, res = docker_client, engine_resources
    first = start(client, res, images["v1"], "first")
    start(client, res, images["v1"], "second")

    with pytest.raises(SwapFailedNotRolledBack) as caught:
        swap_containers(RenameBackRefused(client), images["v1"], images["v2"], grace=0.5, log=print,
                        observer=InterruptAtSecond())

    first_name = res.name("first")
    assert caught.value.exit_code == 22
    assert str(caught.value) == (
        f"interrupted and the rollback failed too ({first_name}: cannot rename the old one back to {first_name}: "
        f"refused by the test; by hand: docker rm -f any new {first_name}, docker rename {first[:12]} {first_name}, "
        f"docker start {first_name})")
    assert client.api.inspect_container(first)["Name"] == f"/{first_name}{SIDE_SUFFIX}"


def test_a_container_named_by_its_name_and_by_its_id_is_swapped_once(docker_client, engine_resources, images):
    client, res = docker_client, engine_resources
    app = start(client, res, images["v1"], "app")

    plans = swap_containers(DockerEngine(client), images["v1"], images["v2"], names=[res.name("app"), app], grace=1,
                            dry_run=True, log=print)

    assert [p.old_container_id for p in plans] == [app]
