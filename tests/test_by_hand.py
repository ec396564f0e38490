"""The two outcomes that hand the host to a person, produced end to end on the real engine.

Exit 22: a swap failed and its rollback could not be done, because someone removed the old
container (waiting aside as ``<name>-deltaimg-old``) while the new one was being checked. The
new container keeps the name, and the one-line error says so and what to do by hand, never the
engine's "no such container". The attempt stays open, and the next run's recovery settles it on
the new container (rolled forward): there is nothing else to settle it on.

Exit 27: a run was killed (``kill -9``) with the old container renamed aside and no new one yet,
then the operator ran a container of their own under the name. The next run's recovery refuses
to settle it, says what to do, and touches nothing: not their container, not the old one, not
the journal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deltaimg.apply.journal import JOURNAL, Journal
from deltaimg.apply.swap import SIDE_SUFFIX
from deltaimg.errors import RecoveryError, SwapFailedNotRolledBack
from tests.conftest import run_cli
from tests.engine_helpers import SLEEP_FOREVER, EngineResources

# The target's containers run until a file appears in the bind-mounted /ctl, then exit 3: the
# test decides when the health check fails.
FAIL_ON_SIGNAL = "while [ ! -e /ctl/fail ]; do sleep 0.1; done; exit 3"


@pytest.fixture(scope="module")
def images(docker_client, tmp_path_factory, keypair):
    resources = EngineResources(docker_client)
    v1 = resources.build("v1", [f"CMD {json.dumps(['sh', '-c', SLEEP_FOREVER])}"])
    v2 = resources.build("v2", ["RUN echo 2 > /version", f"CMD {json.dumps(['sh', '-c', FAIL_ON_SIGNAL])}"], base=v1)
    tags = {k: f"{resources.name(k)}:test" for k in ("v1", "v2")}
    bundle = str(tmp_path_factory.mktemp("by-hand") / "v2.dimg")
    made = run_cli("make", f"docker-daemon:{tags['v1']}", f"docker-daemon:{tags['v2']}", "-o", bundle,
                   "--key", keypair[0], "--quiet")
    assert made.returncode == 0, made.stderr
    yield {"v1": v1, "v2": v2, "tag": tags, "bundle": bundle}
    resources.cleanup()


def container(client, name: str) -> dict | None:
    found = client.api.containers(all=True, filters={"name": f"^/{name}$"})
    return client.api.inspect_container(found[0]["Id"]) if found else None


def start_app(client, images: dict, name: str, ctl: Path) -> str:
    ctl.mkdir()
    host_config = client.api.create_host_config(binds={str(ctl): {"bind": "/ctl", "mode": "rw"}})
    old = client.api.create_container(images["tag"]["v1"], name=name, host_config=host_config)["Id"]
    client.api.start(old)
    return old


def assert_one_line_error(stderr: str, fragment: str) -> None:
    assert stderr.startswith("deltaimg: error: ") and stderr.count("\n") == 1, stderr
    assert fragment in stderr, stderr
    assert "No such container" not in stderr and "404" not in stderr and "Traceback" not in stderr, stderr


def test_an_old_container_removed_during_the_health_check_leaves_the_new_one_under_the_name_exit_22(
        docker_client, engine_resources, images, keypair, state_dir, tmp_path):
    client, name = docker_client, engine_resources.name("app")
    old = start_app(client, images, name, tmp_path / "ctl")
    command = [sys.executable, "-m", "deltaimg", "apply", images["bundle"], "--trust", keypair[1], "--grace", "60"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # the new container runs under the name, the old one waits aside: its check is under way
            new = container(client, name)
            if new is not None and new["Image"] == images["v2"] and new["State"]["Running"]:
                break
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        client.api.remove_container(name + SIDE_SUFFIX, force=True)  # someone removes the old container
        (tmp_path / "ctl" / "fail").touch()  # and the new one fails its check
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == SwapFailedNotRolledBack.exit_code, (out, err)
    assert_one_line_error(err, f"the old container {old[:12]} is gone (removed outside deltaimg during the update); "
                               f"the new container {new['Id'][:12]} keeps the name {name}; by hand: docker logs {name} "
                               "shows why the new container failed")
    kept = container(client, name)
    assert kept["Id"] == new["Id"] and kept["Image"] == images["v2"] and kept["State"]["ExitCode"] == 3
    assert container(client, name + SIDE_SUFFIX) is None
    [attempt] = Journal(os.path.join(state_dir, JOURNAL)).attempts()
    assert attempt.interrupted  # left open: the next run's recovery settles it

    after = run_cli("apply", images["bundle"], "--trust", keypair[1], "--grace", "1", "--json")
    assert after.returncode == 0, after.stderr
    recovered, applied = json.loads(after.stdout)["outcomes"]
    assert recovered["event"] == "recovered" and applied["event"] == "already-applied"
    assert [(c["name"], c["action"], c["container"]) for c in recovered["containers"]] == [
        (name, "rolled-forward", new["Id"])]
    assert container(client, name)["Id"] == new["Id"]


def test_recovery_removes_only_the_container_it_journalled_not_one_on_the_target_image_under_the_name_exit_27(
        docker_client, engine_resources, images, keypair, state_dir, tmp_path):
    client, name = docker_client, engine_resources.name("app")
    old = start_app(client, images, name, tmp_path / "ctl")
    killed = run_cli("apply", images["bundle"], "--trust", keypair[1], "--grace", "1",
                     env={"DELTAIMG_TEST_KILL_AT": "create"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    made = container(client, name)
    [attempt] = Journal(os.path.join(state_dir, JOURNAL)).attempts()
    assert attempt.created == {name: made["Id"]} and made["Image"] == images["v2"]
    client.api.remove_container(made["Id"], force=True)  # the operator clears it and runs the target image themselves
    theirs = client.api.create_container(images["tag"]["v2"], ["sh", "-c", SLEEP_FOREVER], name=name)["Id"]
    client.api.start(theirs)
    journal = Path(state_dir, JOURNAL).read_bytes()

    again = run_cli("apply", images["bundle"], "--trust", keypair[1], "--grace", "1")
    assert again.returncode == RecoveryError.exit_code, again.stderr
    assert_one_line_error(again.stderr, f"{name}: an interrupted update left its old container as {name}{SIDE_SUFFIX}, "
                                        f"and the container now named {name} ({theirs[:12]}) is not the one it "
                                        "created; by hand: ")
    mine, aside = container(client, name), container(client, name + SIDE_SUFFIX)
    assert mine["Id"] == theirs and mine["State"]["Running"] and mine["Image"] == images["v2"]
    assert aside["Id"] == old and not aside["State"]["Running"]
    assert Path(state_dir, JOURNAL).read_bytes() == journal
    assert [a.interrupted for a in Journal(os.path.join(state_dir, JOURNAL)).attempts()] == [True]


def test_recovery_refuses_a_container_the_operator_put_under_the_name_exit_27(
        docker_client, engine_resources, images, keypair, state_dir, tmp_path):
    client, name = docker_client, engine_resources.name("app")
    old = start_app(client, images, name, tmp_path / "ctl")
    killed = run_cli("apply", images["bundle"], "--trust", keypair[1], "--grace", "1",
                     env={"DELTAIMG_TEST_KILL_AT": "rename"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert container(client, name) is None and container(client, name + SIDE_SUFFIX)["Id"] == old
    theirs = client.api.create_container(images["tag"]["v1"], ["sh", "-c", SLEEP_FOREVER], name=name)["Id"]
    client.api.start(theirs)  # the operator, seeing the name free, runs their own container under it
    journal = Path(state_dir, JOURNAL).read_bytes()

    again = run_cli("apply", images["bundle"], "--trust", keypair[1], "--grace", "1")
    assert again.returncode == RecoveryError.exit_code, again.stderr
    assert_one_line_error(again.stderr, f"{name}: an interrupted update left its old container as {name}{SIDE_SUFFIX}, "
                                        f"and the container now named {name} is not on the update's image; by hand: ")
    mine, aside = container(client, name), container(client, name + SIDE_SUFFIX)
    assert mine["Id"] == theirs and mine["State"]["Running"] and mine["Image"] == images["v1"]
    assert aside["Id"] == old and not aside["State"]["Running"]
    assert Path(state_dir, JOURNAL).read_bytes() == journal
    assert [a.interrupted for a in Journal(os.path.join(state_dir, JOURNAL)).attempts()] == [True]
