"""Crash safety on a real engine: ``kill -9`` at every step of an apply, then a new run.

Each case starts two containers on v1 (each with a named volume, the image's anonymous volume
and a bind mount, all holding data), removes v2 from the engine so the apply must rebuild and
load it, and runs ``deltaimg apply`` with ``DELTAIMG_TEST_KILL_AT`` (deltaimg.faults) so it dies
by SIGKILL at one step. The state it leaves is checked, then the same apply runs again without the
switch and must end with both containers on v2 under their own names, running, with every byte of
their data, and nothing left over: no side container, no new volume, no scratch file, every
journalled attempt closed (the killed one as ``recovered``) and ``deltaimg status`` agreeing.
The two containers are one update: the recovery rolls both back unless both had passed their check.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from deltaimg.apply.journal import JOURNAL, Journal
from deltaimg.apply.swap import SIDE_SUFFIX
from tests.conftest import run_cli
from tests.engine_helpers import SLEEP_FOREVER, EngineResources, run

APPS = ("a", "b")
DATA_DIRS = ("/named", "/anon", "/bind")
GRACE = "1"
# Where each swap kill point leaves the container being swapped: (has its name, runs the new
# image under that name, new container running, old one renamed aside).
SWAP_STATES = {
    "stop": ("old", False, True),
    "rename": (None, False, False),
    "create": ("new", False, False),
    "start": ("new", True, False),
    "cleanup": ("new", True, False),
}


def recovery_actions(names: list[str], step: str, nth: int) -> list[dict]:
    """The killed attempt's recovery: every container whose swap had begun goes back, unless every
    container of the update had passed its check (killed at the last one's ``cleanup``)."""
    if step not in SWAP_STATES:
        return []
    action = "rolled-forward" if step == "cleanup" and nth == len(names) else "rolled-back"
    return [{"name": name, "action": action} for name in names[:nth]]


@pytest.fixture(scope="module")
def images(docker_client):
    """v1 (busybox, VOLUME /anon) and v2 on it with a 2 MB layer, so its load takes two reads, and a
    VOLUME /cache of its own: each new container gets a fresh anonymous volume there."""
    resources = EngineResources(docker_client)
    cmd = ["sh", "-c", SLEEP_FOREVER]
    v1 = resources.build("v1", ["VOLUME /anon", "ENV VERSION=1", f"CMD {json.dumps(cmd)}"])
    v2 = resources.build("v2", ["RUN cp /bin/busybox /bin/busybox-2", "ENV VERSION=2", "VOLUME /cache"], base=v1)
    yield {"v1": v1, "v2": v2, "tag": {k: f"{resources.name(k)}:test" for k in ("v1", "v2")}}
    resources.cleanup()


@pytest.fixture(scope="module")
def bundle(images, keypair, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("crash") / "v2.dimg")
    result = run_cli("make", f"docker-daemon:{images['tag']['v1']}", f"docker-daemon:{images['tag']['v2']}",
                     "-o", path, "--key", keypair[0])
    assert result.returncode == 0, result.stderr
    return path


@dataclass
class Host:
    """The edge host of one case: two apps on v1, their data, and what the engine held before."""

    client: object
    res: EngineResources
    images: dict
    state_dir: str
    old: dict[str, str]  # app name -> old container ID
    data: dict[str, str]  # app name -> checksums of its data
    dangling: set[str]  # the volumes no container used once the apps ran

    def apply(self, bundle: str, trust: str, kill_at: str | None = None, *extra: str) -> subprocess.CompletedProcess:
        env = {"DELTAIMG_TEST_KILL_AT": kill_at} if kill_at else {}
        return run_cli("apply", bundle, "--trust", trust, "--grace", GRACE, *extra, env=env)

    def container(self, name: str) -> dict | None:
        found = self.client.api.containers(all=True, filters={"name": f"^/{name}$"})
        return self.client.api.inspect_container(found[0]["Id"]) if found else None

    def names(self) -> set[str]:
        return {c["Names"][0].lstrip("/") for c in self.client.api.containers(all=True, filters={"name": self.res.prefix})}

    def attempts(self):
        return Journal(os.path.join(self.state_dir, JOURNAL)).attempts()

    def swap_order(self) -> list[str]:
        """The apps in the order the first attempt swaps them (its ``swap`` record), else as created."""
        attempts = self.attempts()
        planned = [c["name"] for c in attempts[0].containers] if attempts else []
        return planned or list(self.old)

    def work_files(self) -> list[str]:
        work = Path(self.state_dir, "work")
        return sorted(str(p.relative_to(work)) for p in work.rglob("*")) if work.exists() else []


@pytest.fixture
def host(docker_client, engine_resources, images, state_dir, tmp_path) -> Host:
    client, res = docker_client, engine_resources
    remove_v2(client, images)
    old, data = {}, {}
    for app in APPS:
        name = res.name(app)
        volume = res.name(f"{app}-data")
        client.api.create_volume(volume)
        bind = tmp_path / f"{app}-bind"
        bind.mkdir()
        binds = {volume: {"bind": "/named", "mode": "rw"}, str(bind): {"bind": "/bind", "mode": "rw"}}
        old[name] = client.api.create_container(
            images["tag"]["v1"], name=name, environment={"APP": app},
            host_config=client.api.create_host_config(binds=binds, restart_policy={"Name": "unless-stopped"}))["Id"]
        client.api.start(old[name])
        run(client, old[name], " && ".join(f"head -c 100000 /dev/urandom > {d}/blob" for d in DATA_DIRS))
        data[name] = checksums(client, old[name])
    return Host(client, res, images, state_dir, old, data, dangling_volumes(client))


def remove_v2(client, images: dict) -> None:
    """The edge host does not have the new image yet: the apply must rebuild and load it."""
    if client.api.images(filters={"reference": images["tag"]["v2"]}):
        client.api.remove_image(images["tag"]["v2"])
    assert not client.api.images(filters={"reference": images["tag"]["v2"]})


def dangling_volumes(client) -> set[str]:
    return {v["Name"] for v in client.api.volumes(filters={"dangling": True}).get("Volumes") or []}


def checksums(client, container: str) -> str:
    return run(client, container, "sha256sum " + " ".join(f"{d}/blob" for d in DATA_DIRS))


def status(state_dir: str) -> dict:
    result = run_cli("status", "--state-dir", state_dir, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def split(kill_at: str) -> tuple[str, int]:
    step, _, nth = kill_at.partition("#")
    return step, int(nth or 1)


def assert_killed_state(host: Host, kill_at: str) -> None:
    """What the killed run left: nothing touched before the swap, then the cut container half swapped."""
    step, nth = split(kill_at)
    images = host.images
    attempts = host.attempts()
    if step == "verify":
        assert attempts == []  # killed before it journalled anything: nothing changed
    else:
        assert [a.interrupted for a in attempts] == [True]
        assert [row["outcome"] for row in status(host.state_dir)["attempts"]] == ["interrupted"]
    loaded = host.client.api.images(filters={"reference": images["tag"]["v2"]}) != []
    assert loaded == (step in SWAP_STATES), "the target is loaded before any container is touched"
    if step in ("rebuild", "load"):
        assert host.work_files(), "the killed rebuild left its scratch files (the next run removes them)"
    names = host.swap_order()
    for done in names[: nth - 1]:  # swapped before the cut one: its old container waits aside for the set
        info, side = host.container(done), host.container(done + SIDE_SUFFIX)
        assert info["Image"] == images["v2"] and info["State"]["Running"]
        assert side["Id"] == host.old[done] and not side["State"]["Running"]
    for untouched in names[nth:] if step in SWAP_STATES else names:
        info = host.container(untouched)
        assert info["Id"] == host.old[untouched] and info["State"]["Running"]
    if step not in SWAP_STATES:
        return
    cut = names[nth - 1]
    holder, running, renamed = SWAP_STATES[step]
    info, side = host.container(cut), host.container(cut + SIDE_SUFFIX)
    if holder is None:
        assert info is None
    else:
        assert info["Id"] == host.old[cut] if holder == "old" else info["Image"] == images["v2"]
        assert info["State"]["Running"] == running
    assert (side is None) == (holder == "old") and (side is None or side["Id"] == host.old[cut])
    if side is not None:
        assert not side["State"]["Running"]


def assert_converged(host: Host) -> None:
    """Both apps on v2 under their own names, running, every byte kept; nothing left over."""
    images = host.images
    assert host.names() == set(host.old), "no side container, no extra container"
    for name in host.old:
        info = host.container(name)
        assert info["Image"] == images["v2"] and info["State"]["Running"], name
        assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert run(host.client, info["Id"], "echo $APP $VERSION").split() == [name.rsplit("-", 1)[1], "2"]
        assert checksums(host.client, info["Id"]) == host.data[name], f"{name} lost data"
    assert dangling_volumes(host.client) <= host.dangling, "a volume was left behind"
    assert host.work_files() == []
    dangling = host.client.api.images(filters={"dangling": True, "label": "deltaimg.test"})
    assert [i["Id"] for i in dangling] == []
    state = status(host.state_dir)
    assert state["running"] is None
    assert "interrupted" not in [row["outcome"] for row in state["attempts"]]
    assert all(not a.interrupted for a in host.attempts())


@pytest.mark.parametrize("kill_at", ["verify", "rebuild", "load", "stop", "rename", "create", "start", "cleanup",
                                     "stop#2", "create#2", "start#2", "cleanup#2"])
def test_a_run_killed_at_any_step_is_settled_by_the_next_run(host, bundle, keypair, kill_at):
    step, nth = split(kill_at)
    killed = host.apply(bundle, keypair[1], kill_at)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
    assert_killed_state(host, kill_at)

    final = host.apply(bundle, keypair[1], None, "--json")
    assert final.returncode == 0, final.stderr
    events = [o["event"] for o in json.loads(final.stdout)["outcomes"]]
    attempts = host.attempts()
    if step == "verify":
        assert events == ["applied"]
        assert [a.closed["outcome"] for a in attempts] == ["applied"]
    else:
        recovered = attempts[0].closed
        assert recovered["type"] == "recovered"
        expected = recovery_actions(host.swap_order(), step, nth)
        assert [{"name": c["name"], "action": c["action"]} for c in recovered["containers"]] == expected
        # Everything on v2 after the recovery (the whole set rolled forward): nothing left to apply.
        everything_swapped = step == "cleanup" and nth == len(APPS)
        assert events == ["recovered", "already-applied" if everything_swapped else "applied"]
        assert [a.closed["outcome"] for a in attempts] == ["recovered"] + ([] if everything_swapped else ["applied"])
        if not everything_swapped:
            swapped = sorted(c["name"] for c in attempts[1].closed["containers"])
            assert swapped == sorted(host.old)  # the whole set, again
    assert [row["outcome"] for row in status(host.state_dir)["attempts"]] == [a.closed["outcome"] for a in attempts]
    assert_converged(host)


def test_a_recovery_killed_half_way_is_done_again(host, bundle, keypair):
    first = host.apply(bundle, keypair[1], "start#2")
    assert first.returncode == -signal.SIGKILL
    second = host.apply(bundle, keypair[1], "recover")  # dies once the cut container is back on v1
    assert second.returncode == -signal.SIGKILL
    assert [a.interrupted for a in host.attempts()] == [True]
    third = host.apply(bundle, keypair[1])
    assert third.returncode == 0, third.stderr
    attempts = host.attempts()
    assert [a.closed["outcome"] for a in attempts] == ["recovered", "applied"]
    both = [(name, "rolled-back") for name in host.swap_order()]  # the first was ready, the second cut
    assert [(c["name"], c["action"]) for c in attempts[0].closed["containers"]] == both
    assert_converged(host)


@pytest.mark.parametrize("first, second", [("load", "rebuild"), ("rename", "cleanup")])
def test_a_run_killed_after_recovering_is_recovered_in_turn(host, bundle, keypair, first, second):
    assert host.apply(bundle, keypair[1], first).returncode == -signal.SIGKILL
    assert host.apply(bundle, keypair[1], second).returncode == -signal.SIGKILL
    outcomes = [a.closed["outcome"] if a.closed else "interrupted" for a in host.attempts()]
    assert outcomes == ["recovered", "interrupted"]
    third = host.apply(bundle, keypair[1])
    assert third.returncode == 0, third.stderr
    assert [a.closed["outcome"] for a in host.attempts()] == ["recovered", "recovered", "applied"]
    assert_converged(host)


def terminate_when(bundle: str, trust: str, grace: str, ready: Callable[[], object],
                   signum: int = signal.SIGTERM) -> tuple[int, str, str]:
    """Run apply, SIGTERM it (as systemd stops a service; or ``signum``) once ``ready()`` is true; its
    exit code and output."""
    command = [sys.executable, "-m", "deltaimg", "apply", bundle, "--trust", trust, "--grace", grace]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in err
    return process.returncode, out, err


def test_sigterm_during_a_swap_rolls_back_and_the_next_run_applies(host, bundle, keypair):
    def new_container_up() -> list[str]:  # the first app's new container runs: the apply waits out its grace
        infos = {name: host.container(name) for name in host.old}
        return [name for name, info in infos.items()
                if info is not None and info["Image"] == host.images["v2"] and info["State"]["Running"]]

    code, out, err = terminate_when(bundle, keypair[1], "60", new_container_up)
    assert code == 130, (out, err)
    cut = host.swap_order()[0]
    for name in host.old:
        info = host.container(name)
        assert info["Id"] == host.old[name] and info["State"]["Running"] and info["Image"] == host.images["v1"]
    assert host.names() == set(host.old)
    assert host.work_files() == []
    assert [row["outcome"] for row in status(host.state_dir)["attempts"]] == ["interrupted"]

    final = host.apply(bundle, keypair[1])
    assert final.returncode == 0, final.stderr
    attempts = host.attempts()
    assert [a.closed["outcome"] for a in attempts] == ["recovered", "applied"]
    assert [(c["name"], c["action"]) for c in attempts[0].closed["containers"]] == [(cut, "rolled-back")]
    assert_converged(host)


def test_a_record_written_after_a_torn_line_is_not_lost(tmp_path):
    """A power cut can tear the journal's last line; the next run's records still count."""
    journal = Journal(str(tmp_path / JOURNAL))
    journal.append({"type": "begin", "id": "a1"})
    with open(journal.path, "ab") as f:
        f.write(b'{"type":"container","id":"a1","na')
    journal.append({"type": "recovered", "id": "a1", "outcome": "recovered"})
    [attempt] = journal.attempts()
    assert not attempt.interrupted and attempt.closed["outcome"] == "recovered"


def test_sigterm_while_the_old_container_stops_leaves_it_running(docker_client, engine_resources, images, bundle,
                                                                 keypair, state_dir):
    """systemd stops deltaimg while the old container takes its time to stop: the rollback must not
    start it before the engine's stop is through (a no-op on a running container), or it ends stopped."""
    client, res = docker_client, engine_resources
    remove_v2(client, images)
    slow_stop = f"trap 'sleep 3; exit 0' TERM; {SLEEP_FOREVER.split('; ', 1)[1]}"
    old = client.api.create_container(images["tag"]["v1"], ["sh", "-c", slow_stop], name=res.name("slow"))["Id"]
    client.api.start(old)
    journal = Journal(os.path.join(state_dir, JOURNAL))
    stopping_since: list[float] = []

    def stopping() -> bool:  # half a second after the container's swap began: the engine is stopping it
        if not stopping_since and any(r.get("step") == "begin" for r in journal.records()):
            stopping_since.append(time.monotonic())
        return bool(stopping_since) and time.monotonic() - stopping_since[0] > 0.5

    code, out, err = terminate_when(bundle, keypair[1], "1", stopping)
    assert code == 130, (out, err)
    time.sleep(4)  # longer than the container takes to stop
    info = client.api.inspect_container(res.name("slow"))
    assert info["Id"] == old and info["State"]["Running"], info["State"]

    final = run_cli("apply", bundle, "--trust", keypair[1], "--grace", GRACE)
    assert final.returncode == 0, final.stderr
    assert [a.closed["outcome"] for a in journal.attempts()] == ["recovered", "applied"]
    info = client.api.inspect_container(res.name("slow"))
    assert info["Image"] == images["v2"] and info["State"]["Running"]


def test_a_stopped_container_cut_at_create_stays_stopped_and_keeps_its_volumes(docker_client, engine_resources, images,
                                                                                bundle, keypair, state_dir):
    client, res = docker_client, engine_resources
    remove_v2(client, images)
    volume = res.name("idle-data")
    client.api.create_volume(volume)
    old = client.api.create_container(images["tag"]["v1"], name=res.name("idle"), host_config=client.api.create_host_config(
        binds={volume: {"bind": "/named", "mode": "rw"}}))["Id"]
    client.api.start(old)
    client.api.stop(old, timeout=1)
    mounts = {m["Destination"]: m["Name"] for m in client.api.inspect_container(old)["Mounts"]}

    killed = run_cli("apply", bundle, "--trust", keypair[1], "--grace", GRACE, env={"DELTAIMG_TEST_KILL_AT": "create"})
    assert killed.returncode == -signal.SIGKILL
    final = run_cli("apply", bundle, "--trust", keypair[1], "--grace", GRACE)
    assert final.returncode == 0, final.stderr
    attempts = Journal(os.path.join(state_dir, JOURNAL)).attempts()
    assert [a.closed["outcome"] for a in attempts] == ["recovered", "applied"]
    assert [c["action"] for c in attempts[0].closed["containers"]] == ["rolled-back"]
    [found] = client.api.containers(all=True, filters={"name": res.prefix})
    info = client.api.inspect_container(found["Id"])
    assert info["Name"] == "/" + res.name("idle") and info["Image"] == images["v2"] and not info["State"]["Running"]
    kept = {m["Destination"]: m["Name"] for m in info["Mounts"] if m["Destination"] in mounts}
    assert kept == mounts  # the named volume and the anonymous /anon one, by name
