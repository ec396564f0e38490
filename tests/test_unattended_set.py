"""An unattended apply of one bundle to several containers, through the command line on the real
engine: a later failure rolls the whole set back and the journal, ``status`` and the JSON log say
so; a dependent joins the set (or, run with ``--rm``, refuses the run before the image is loaded); a
``--rm`` container is reported before the image is loaded and left alone."""

from __future__ import annotations

import json

from deltaimg.apply.journal import Journal
from deltaimg.errors import DependentsError, SwapFailedRolledBack
from tests.conftest import run_cli
from tests.engine_helpers import EngineResources
from tests.test_unattended import app, apply, attempts  # noqa: F401  (the app's versions and bundles)

ON_V1_ONLY = {"test": ["CMD-SHELL", "grep -q 1 /version"], "interval": 500_000_000, "timeout": 1_000_000_000,
              "retries": 1}


def create(app, res: EngineResources, suffix: str, *, start: bool = True, healthcheck: dict | None = None,
           **host) -> str:
    api = app.client.api
    container = api.create_container(app.tag("1"), name=res.name(suffix), healthcheck=healthcheck,
                                     host_config=api.create_host_config(**host))["Id"]
    if start:
        api.start(container)
    return container


def test_a_later_container_failing_rolls_the_whole_update_back_and_status_says_which(
        app, engine_resources, keypair, state_dir):
    app.host_has("1")
    res = engine_resources
    first = create(app, res, "first")
    second = create(app, res, "second", healthcheck=ON_V1_ONLY)

    failed = apply(app.bundles["1", "2"], "--trust", keypair[1], "--log-format", "json")

    assert failed.returncode == SwapFailedRolledBack.exit_code, failed.stderr
    for name, old in ((res.name("first"), first), (res.name("second"), second)):
        info = app.client.api.inspect_container(name)
        assert (info["Id"], info["Image"], info["State"]["Status"]) == (old, app.ids["1"], "running")
    assert attempts(state_dir) == [(app.ids["1"], app.ids["2"], "rolled-back")]
    [row] = json.loads(run_cli("status", "--json").stdout)["attempts"]
    assert [(c["name"], c["action"]) for c in row["containers"]] == \
        [(res.name("first"), "rolled-back"), (res.name("second"), "rolled-back")]
    assert row["message"].endswith(f"rolled back too: {res.name('first')} (every container of the update is on its "
                                   "old container again)")
    last = json.loads(failed.stdout.splitlines()[-1])
    assert (last["event"], last["exit_code"]) == ("error", SwapFailedRolledBack.exit_code)
    assert f"rolled back too: {res.name('first')}" in last["message"]


def test_a_dependent_that_cannot_be_recreated_refuses_the_run_before_the_image_is_loaded(
        app, engine_resources, keypair, state_dir):
    app.host_has("1")
    res = engine_resources
    db = create(app, res, "db")
    create(app, res, "sidecar", network_mode=f"container:{db}", auto_remove=True)

    refused = apply(app.bundles["1", "2"], "--trust", keypair[1])

    assert refused.returncode == DependentsError.exit_code == 28
    assert refused.stderr == (f"deltaimg: error: container {res.name('sidecar')} depends on one this update recreates "
                              "and runs with --rm, so it cannot be recreated; remove it first (and run it again after "
                              "the update)\n")
    assert not app.in_engine("2") and attempts(state_dir) == []
    assert app.client.api.inspect_container(db)["State"]["Running"]


def test_a_sidecar_on_the_same_image_is_swapped_after_the_container_whose_network_it_shares(
        app, engine_resources, keypair, state_dir):
    app.host_has("1")
    res = engine_resources
    db = create(app, res, "db")
    create(app, res, "sidecar", network_mode=f"container:{db}")

    done = apply(app.bundles["1", "2"], "--trust", keypair[1])

    assert done.returncode == 0, done.stderr
    new_db = app.client.api.inspect_container(res.name("db"))
    sidecar = app.client.api.inspect_container(res.name("sidecar"))
    assert (new_db["Image"], sidecar["Image"]) == (app.ids["2"], app.ids["2"])
    assert sidecar["HostConfig"]["NetworkMode"] == f"container:{new_db['Id']}" and sidecar["State"]["Running"]
    [attempt] = Journal(f"{state_dir}/journal.jsonl").attempts()
    assert [(c["name"], c["image"]) for c in attempt.containers] == [(res.name("db"), app.ids["2"]),
                                                                     (res.name("sidecar"), app.ids["2"])]


def test_an_rm_container_is_reported_before_the_load_and_left_alone(app, engine_resources, keypair, state_dir):
    app.host_has("1")
    res = engine_resources
    create(app, res, "app")
    ephemeral = create(app, res, "ephemeral", auto_remove=True)

    done = apply(app.bundles["1", "2"], "--trust", keypair[1], "--log-format", "json")

    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    messages = [line["message"] for line in lines]
    said = f"container {res.name('ephemeral')} will be left on {app.tag('1')}"
    [left] = [i for i, m in enumerate(messages) if said in m]
    [rebuilt] = [i for i, m in enumerate(messages) if m.startswith(("rebuilt ", "rebuilding "))]
    assert left < rebuilt
    [applied] = [line for line in lines if line["event"] == "applied"]
    assert [c["name"] for c in applied["containers"]] == [res.name("app")]
    assert [s["name"] for s in applied["skipped_containers"]] == [res.name("ephemeral")]
    info = app.client.api.inspect_container(ephemeral)
    assert (info["Image"], info["State"]["Running"]) == (app.ids["1"], True)
    assert app.client.api.inspect_container(res.name("app"))["Image"] == app.ids["2"]

    again = apply(app.bundles["1", "2"], "--trust", keypair[1], "--log-format", "json")
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["event"] for line in again.stdout.splitlines()][-1] == "already-applied"
    assert [a[2] for a in attempts(state_dir)] == ["applied"]  # nothing journalled for the container left out
