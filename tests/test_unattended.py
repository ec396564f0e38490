"""Unattended apply on an edge host (docs/edge-operation.md), through the command line, on the real
engine: a stick with a chain of bundles in any order, the run lock, the journal and ``status``, the
disk-space and downgrade checks, split bundles, and JSON log lines."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deltaimg.engine.dockerd import DockerEngine
from deltaimg.bundle import keys
from deltaimg.errors import (
    BundlePartError,
    DiskSpaceError,
    DowngradeError,
    PartialChainError,
    RunLockedError,
    SwapFailedRolledBack,
)
from deltaimg.apply.engine import shared_prefix
from deltaimg.apply.journal import Journal
from deltaimg.apply.rebuild import read_rebuild, rebuild_size
from deltaimg.bundle import signing
from deltaimg.bundle.reader import open_bundle
from deltaimg.units import human_size
from deltaimg.apply.lock import RunLock
from tests.conftest import run_cli
from tests.engine_helpers import SLEEP_FOREVER, EngineResources, run

APP = "deltaimg-edge-app"  # the repository every version is tagged in (with the module's prefix)
CMD = json.dumps(["sh", "-c", SLEEP_FOREVER])
# Built in this order, so their ``created`` times are too: "old" (a sibling of 2 made before 3)
# is older than 3, and a bundle from 3 to it is a downgrade.
VERSIONS = {
    "1": (None, ["RUN echo 1 > /version", f"CMD {CMD}"]),
    "2": ("1", ["RUN echo 2 > /version && head -c 60000 /dev/urandom > /payload"]),
    "old": ("1", ["RUN echo old > /version"]),
    "3": ("2", ["RUN echo 3 > /version"]),
    "bad": ("1", ["RUN echo bad > /version", 'HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD ["false"]']),
}
EDGES = [("1", "2"), ("2", "3"), ("3", "old"), ("1", "bad")]


@pytest.fixture(scope="module")
def app(docker_client, keypair, tmp_path_factory):
    """The app's versions, saved as archives (to put on the host what a test needs), the bundles
    between them, made from the engine; then the engine is emptied of them."""
    client = docker_client
    resources = EngineResources(client)
    repo = resources.name(APP)
    ids: dict[str, str] = {}
    for version, (parent, lines) in VERSIONS.items():
        ids[version] = resources.build(f"v{version}", lines, base=ids[parent] if parent else None)
        client.api.tag(ids[version], repo, version)
        client.api.remove_image(f"{resources.name(f'v{version}')}:test")  # only the app's tag is left
        resources.images.append(f"{repo}:{version}")
    directory = tmp_path_factory.mktemp("app")
    archives = {}
    for version in VERSIONS:
        archives[version] = str(directory / f"{version}.tar")
        with open(archives[version], "wb") as out:
            for chunk in client.api.get_image(f"{repo}:{version}"):
                out.write(chunk)
    bundles = {}
    for old, new in EDGES:
        bundles[old, new] = str(directory / f"{old}-to-{new}.dimg")
        made = run_cli("make", f"docker-daemon:{repo}:{old}", f"docker-daemon:{repo}:{new}", "-o", bundles[old, new],
                       "--key", keypair[0])
        assert made.returncode == 0, made.stderr
    app = App(client, repo, ids, archives, bundles)
    app.host_has()
    yield app
    resources.cleanup()


class App:
    def __init__(self, client, repo: str, ids: dict[str, str], archives: dict[str, str],
                 bundles: dict[tuple[str, str], str]) -> None:
        self.client = client
        self.repo = repo
        self.ids = ids
        self.archives = archives
        self.bundles = bundles

    def tag(self, version: str) -> str:
        return f"{self.repo}:{version}"

    def in_engine(self, version: str) -> bool:
        """The version's tag is in the engine and names that version's image (not just any image)."""
        return [i["Id"] for i in self.client.api.images(filters={"reference": self.tag(version)})] == [self.ids[version]]

    def host_has(self, *versions: str) -> None:
        """The engine holds exactly these versions of the app (children removed before parents)."""
        for version in ("3", "old", "2", "bad", "1"):
            if version not in versions and self.client.api.images(all=True, filters={"reference": self.tag(version)}):
                self.client.api.remove_image(self.ids[version], force=True)
        for version in versions:
            if not self.in_engine(version):
                with open(self.archives[version], "rb") as archive:
                    self.client.api.load_image(archive.read())
        assert [v for v in VERSIONS if self.in_engine(v)] == [v for v in VERSIONS if v in versions]

    def start(self, res: EngineResources, version: str) -> str:
        container = self.client.api.create_container(
            self.tag(version), name=res.name("app"),
            host_config=self.client.api.create_host_config(restart_policy={"Name": "unless-stopped"}))["Id"]
        self.client.api.start(container)
        return container

    def running(self, res: EngineResources) -> tuple[str, str, str]:
        """(container ID, image ID, /version) of the app's container, which must run."""
        info = self.client.api.inspect_container(res.name("app"))
        assert info["State"]["Running"], info["State"]
        return info["Id"], info["Image"], run(self.client, info["Id"], "cat /version").strip()

    def stick(self, directory: Path, names: dict[str, tuple[str, str]]) -> Path:
        """A folder as a USB stick holds it: bundles under the given file names."""
        directory.mkdir()
        for name, edge in names.items():
            shutil.copy(self.bundles[edge], directory / name)
        return directory


def apply(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("apply", *map(str, args), "--grace", "1", env=env)


def attempts(state_dir: str) -> list[tuple[str, str, str]]:
    """(from image ID, to image ID, outcome) of every attempt the journal holds."""
    journal = Journal(os.path.join(state_dir, "journal.jsonl"))
    return [(a.begin["from"]["image_id"], a.begin["to"]["image_id"], (a.closed or {}).get("outcome", "interrupted"))
            for a in journal.attempts()]


def test_a_chain_in_a_folder_is_applied_in_order_whatever_the_file_names(
        app, engine_resources, keypair, example_bundle, state_dir, tmp_path):
    app.host_has("1")
    before = app.start(engine_resources, "1")
    stick = app.stick(tmp_path / "stick", {"a.dimg": ("2", "3"), "b.dimg": ("1", "2")})
    shutil.copy(example_bundle, stick / "c-other-app.dimg")  # for an image this host does not have

    result = apply(stick, "--trust", keypair[1])
    assert (result.returncode, result.stderr) == (0, "")  # no progress bar without a terminal
    container, image, version = app.running(engine_resources)
    assert (image, version) == (app.ids["3"], "3") and container != before
    assert attempts(state_dir) == [(app.ids["1"], app.ids["2"], "applied"), (app.ids["2"], app.ids["3"], "applied")]
    assert result.stdout.index(f"{stick / 'b.dimg'}: applied") < result.stdout.index(f"{stick / 'a.dimg'}: applied")
    assert f"{stick / 'c-other-app.dimg'}: skipped: this host does not have its base example/app:1.0" in result.stdout

    again = apply(stick, "--trust", keypair[1])
    assert again.returncode == 0, again.stderr
    assert f"{stick / 'a.dimg'}: already applied" in again.stdout
    assert f"{stick / 'b.dimg'}: already applied" in again.stdout
    assert app.running(engine_resources)[0] == container
    assert len(attempts(state_dir)) == 2


def test_a_chain_with_a_missing_link_applies_nothing_and_says_what_is_missing(
        app, engine_resources, keypair, state_dir, tmp_path):
    app.host_has("1")
    before = app.start(engine_resources, "1")
    stick = app.stick(tmp_path / "stick", {"second.dimg": ("2", "3")})

    result = apply(stick, "--trust", keypair[1])
    assert result.returncode == PartialChainError.exit_code, result.stderr
    assert "partial chain" in result.stderr and "missing" in result.stderr
    assert app.running(engine_resources)[:2] == (before, app.ids["1"])
    assert attempts(state_dir) == []


def test_a_dry_run_plans_the_whole_chain_and_changes_nothing(app, engine_resources, keypair, state_dir, tmp_path):
    app.host_has("1")
    before = app.start(engine_resources, "1")
    stick = app.stick(tmp_path / "stick", {"a.dimg": ("2", "3"), "b.dimg": ("1", "2")})

    result = apply(stick, "--trust", keypair[1], "--dry-run")
    assert result.returncode == 0, result.stderr
    planned = [line for line in result.stdout.splitlines() if "nothing changed (dry run)" in line]
    assert [line.split(":")[0] for line in planned] == [str(stick / "b.dimg"), str(stick / "a.dimg")]
    assert f"would rebuild and load {app.tag('2')}" in result.stdout
    assert f"would rebuild and load {app.tag('3')}" in result.stdout
    assert app.running(engine_resources)[:2] == (before, app.ids["1"])
    assert not app.in_engine("2") and not app.in_engine("3")
    assert not os.path.exists(state_dir)  # a dry run writes no state


def test_a_bundle_rolled_back_once_is_not_tried_again_unless_retry(app, engine_resources, keypair, state_dir):
    app.host_has("1")
    before = app.start(engine_resources, "1")
    bundle = app.bundles["1", "bad"]

    failed = apply(bundle, "--trust", keypair[1])
    assert failed.returncode == SwapFailedRolledBack.exit_code, failed.stderr
    assert app.running(engine_resources)[:2] == (before, app.ids["1"])
    assert attempts(state_dir) == [(app.ids["1"], app.ids["bad"], "rolled-back")]

    again = apply(bundle, "--trust", keypair[1])
    assert again.returncode == SwapFailedRolledBack.exit_code
    assert "was rolled back at" in again.stderr and "--retry" in again.stderr
    assert len(attempts(state_dir)) == 1  # refused before trying

    retried = apply(bundle, "--trust", keypair[1], "--retry")
    assert retried.returncode == SwapFailedRolledBack.exit_code
    assert [a[2] for a in attempts(state_dir)] == ["rolled-back", "rolled-back"]
    assert app.running(engine_resources)[:2] == (before, app.ids["1"])
    [row] = json.loads(run_cli("status", "--json", "--limit", "1").stdout)["attempts"]
    assert row["outcome"] == "rolled-back" and row["message"]


def test_a_bundle_held_back_after_a_rollback_does_not_stall_the_other_updates_on_the_stick(
        app, engine_resources, keypair, example_pair, example_bundle, state_dir, tmp_path):
    app.host_has("1")
    before = app.start(engine_resources, "1")
    assert apply(app.bundles["1", "bad"], "--trust", keypair[1]).returncode == SwapFailedRolledBack.exit_code
    stick = app.stick(tmp_path / "stick", {"app.dimg": ("1", "bad")})
    shutil.copy(example_bundle, stick / "example.dimg")
    with open(example_pair[0], "rb") as archive:  # the host runs the example's 1.0 too
        app.client.api.load_image(archive.read())
    try:
        result = apply(stick, "--trust", keypair[1])
        assert result.returncode == SwapFailedRolledBack.exit_code, result.stderr
        assert f"{stick / 'app.dimg'}: held back: " in result.stdout and "--retry" in result.stderr
        assert f"{stick / 'example.dimg'}: applied" in result.stdout
        assert app.client.api.images(filters={"reference": "example/app:1.1"})
        assert app.running(engine_resources)[:2] == (before, app.ids["1"])
        assert [a[2] for a in attempts(state_dir)] == ["rolled-back", "applied"]
    finally:
        for tag in ("example/app:1.1", "example/app:1.0"):
            if app.client.api.images(filters={"reference": tag}):
                app.client.api.remove_image(tag, force=True)


def test_a_second_run_exits_at_once_while_one_holds_the_lock_or_waits_for_it_with_wait(
        app, keypair, state_dir):
    app.host_has("1")
    os.makedirs(state_dir)
    lock = os.path.join(state_dir, "lock")
    with RunLock(lock):
        started = time.monotonic()
        refused = apply(app.bundles["1", "2"], "--trust", keypair[1])
        assert refused.returncode == RunLockedError.exit_code, refused.stderr
        assert time.monotonic() - started < 15
        assert f"pid {os.getpid()}" in refused.stderr and "--wait" in refused.stderr
        status = run_cli("status")
        assert f"a run is in progress now (pid {os.getpid()})" in status.stdout
        assert json.loads(run_cli("status", "--json").stdout)["running"] == os.getpid()

        waiting = subprocess.Popen([sys.executable, "-m", "deltaimg", "apply", app.bundles["1", "2"], "--trust",
                                    keypair[1], "--wait", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        time.sleep(3)
        assert waiting.poll() is None  # still waiting for the lock
        assert not app.in_engine("2")
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert app.in_engine("2") and "applied" in out
    assert attempts(state_dir) == [(app.ids["1"], app.ids["2"], "applied")]


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(app, keypair, state_dir):
    app.host_has("1")
    os.makedirs(state_dir)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from deltaimg.apply.lock import RunLock\n"
                               f"with RunLock({os.path.join(state_dir, 'lock')!r}):\n"
                               "    print('held', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait()
    result = apply(app.bundles["1", "2"], "--trust", keypair[1])
    assert result.returncode == 0, result.stderr
    assert app.in_engine("2") and attempts(state_dir) == [(app.ids["1"], app.ids["2"], "applied")]


def test_status_shows_each_bundle_applied_its_digest_key_images_containers_and_outcome(
        app, engine_resources, keypair, tmp_path):
    app.host_has("1")
    app.start(engine_resources, "1")
    state = str(tmp_path / "elsewhere")  # --state-dir wins over $DELTAIMG_STATE_DIR
    assert apply(app.bundles["1", "2"], "--trust", keypair[1], "--state-dir", state).returncode == 0
    with open(app.bundles["1", "2"], "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    [key] = keys.trusted_keys([keypair[1]], None)
    name = engine_resources.name("app")

    data = json.loads(run_cli("status", "--state-dir", state, "--json").stdout)
    [row] = data["attempts"]
    assert (data["state_dir"], data["running"], data["total_attempts"]) == (state, None, 1)
    assert (row["bundle"], row["bundle_sha256"], row["key_id"]) == (app.bundles["1", "2"], digest, key.key_id)
    assert (row["from"], row["to"]) == (f"{app.tag('1')} {app.ids['1'][:19]}", f"{app.tag('2')} {app.ids['2'][:19]}")
    assert (row["from_image"], row["to_image"]) == (app.ids["1"], app.ids["2"])
    assert (row["outcome"], [c["name"] for c in row["containers"]]) == ("applied", [name])
    assert row["time"] <= row["ended"]

    text = run_cli("status", "--state-dir", state)
    assert text.returncode == 0 and f"{state}: 1 update(s) journalled" in text.stdout
    [line] = [line for line in text.stdout.splitlines() if "applied" in line]
    for shown in (app.tag("1"), app.tag("2"), f"[{name}]", key.key_id, app.bundles["1", "2"]):
        assert shown in line


def test_status_without_a_state_directory_says_nothing_was_applied(tmp_path):
    result = run_cli("status", "--state-dir", str(tmp_path / "none"))
    assert result.returncode == 2 and "nothing was applied on this host yet" in result.stderr


def test_too_little_disk_space_refuses_the_update_before_anything_changes(app, engine_resources, keypair,
                                                                         small_state_dir):
    app.host_has("1")
    before = app.start(engine_resources, "1")
    result = apply(app.bundles["1", "2"], "--trust", keypair[1])
    assert result.returncode == DiskSpaceError.exit_code, result.stderr
    rebuild = read_rebuild(open_bundle(app.bundles["1", "2"], [signing.load_public(keypair[1])]))
    need = 2 * rebuild_size(rebuild, shared_prefix(rebuild))  # scratch space: the base bytes read and the archive
    assert result.stderr == (f"deltaimg: error: not enough disk space: the update needs {human_size(need)} free in "
                             f"{small_state_dir.path}/work (the rebuild's scratch space), which has 4.1 KB; free some "
                             "(docker image prune) and run again\n")  # 8 KiB less the lock's page
    assert app.running(engine_resources)[:2] == (before, app.ids["1"])
    assert not app.in_engine("2") and attempts(small_state_dir.path) == []


def test_an_older_target_is_refused_unless_allow_downgrade(app, engine_resources, keypair, state_dir, tmp_path):
    app.host_has("3")
    before = app.start(engine_resources, "3")
    bundle = app.bundles["3", "old"]
    stick = app.stick(tmp_path / "stick", {"back.dimg": ("3", "old")})

    in_folder = apply(stick, "--trust", keypair[1])  # never picked from a folder
    assert in_folder.returncode == 0, in_folder.stderr
    assert "skipped: it goes back to the older" in in_folder.stdout

    refused = apply(bundle, "--trust", keypair[1])
    assert refused.returncode == DowngradeError.exit_code, refused.stderr
    assert "--allow-downgrade" in refused.stderr and "older" in refused.stderr
    assert app.running(engine_resources)[:2] == (before, app.ids["3"])
    assert not app.in_engine("old") and attempts(state_dir) == []

    allowed = apply(bundle, "--trust", keypair[1], "--allow-downgrade")
    assert allowed.returncode == 0, allowed.stderr
    assert app.running(engine_resources)[1:] == (app.ids["old"], "old")
    assert attempts(state_dir) == [(app.ids["3"], app.ids["old"], "applied")]


def test_a_split_bundle_applies_from_its_first_part_or_its_folder_and_needs_every_part(
        app, keypair, state_dir, tmp_path):
    stick = tmp_path / "stick"
    stick.mkdir()
    made = run_cli("make", app.archives["1"], app.archives["2"], "-o", str(stick / "app.dimg"), "--key", keypair[0],
                   "--split-size", "20K", "--json")
    assert made.returncode == 0, made.stderr
    parts = sorted(os.listdir(stick))
    assert json.loads(made.stdout)["files"] == [str(stick / p) for p in parts]
    assert len(parts) >= 3 and all(os.path.getsize(stick / p) == 20 * 1024 for p in parts[:-1])

    for given in (stick / "app.dimg.001", stick):
        app.host_has("1")
        result = apply(given, "--trust", keypair[1], "--no-swap")
        assert result.returncode == 0, result.stderr
        assert app.in_engine("2")
    assert [a[2] for a in attempts(state_dir)] == ["applied", "applied"]

    app.host_has("1")
    later = apply(stick / "app.dimg.002", "--trust", keypair[1])
    assert later.returncode == BundlePartError.exit_code and "pass its first part (app.dimg.001)" in later.stderr
    third = (stick / "app.dimg.003").read_bytes()
    (stick / "app.dimg.003").write_bytes(third[:-1] + bytes([third[-1] ^ 1]))
    damaged = apply(stick, "--trust", keypair[1])
    assert damaged.returncode == BundlePartError.exit_code, damaged.stderr
    assert "app.dimg.003 is not part 3 of this bundle" in damaged.stderr
    (stick / "app.dimg.003").unlink()
    missing = apply(stick / "app.dimg.001", "--trust", keypair[1])
    assert missing.returncode == BundlePartError.exit_code, missing.stderr
    assert "app.dimg.003 is missing" in missing.stderr
    assert not app.in_engine("2") and len(attempts(state_dir)) == 2


def test_log_format_json_prints_only_json_lines_ending_with_the_error_on_failure(app, keypair, small_state_dir, tmp_path):
    app.host_has("1")
    stick = app.stick(tmp_path / "stick", {"x.dimg": ("2", "3"), "y.dimg": ("1", "2")})

    refused = apply(stick, "--trust", keypair[1], "--log-format", "json")
    assert refused.returncode == DiskSpaceError.exit_code
    lines = [json.loads(line) for line in refused.stdout.splitlines()]
    assert lines and all({"time", "event", "message"} <= set(line) for line in lines)
    assert lines[-1]["event"] == "error" and lines[-1]["exit_code"] == DiskSpaceError.exit_code
    assert refused.stderr.startswith("deltaimg: error: not enough disk space") and len(refused.stderr.splitlines()) == 1

    small_state_dir.resize(256 << 20)
    done = apply(stick, "--trust", keypair[1], "--log-format", "json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    applied = [line for line in lines if line["event"] == "applied"]
    assert [(a["from"]["image_id"], a["to"]["image_id"]) for a in applied] == \
        [(app.ids["1"], app.ids["2"]), (app.ids["2"], app.ids["3"])]
    assert all(a["bundle"]["sha256"] and a["bundle"]["key_id"] for a in applied)
    assert done.stderr == ""


def test_stopped_by_systemd_the_run_rolls_back_and_logs_its_end_as_a_json_line(app, engine_resources, keypair):
    app.host_has("1")
    before = app.start(engine_resources, "1")
    process = subprocess.Popen([sys.executable, "-m", "deltaimg", "apply", app.bundles["1", "2"], "--trust", keypair[1],
                                "--grace", "60", "--log-format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    lines = []
    for line in process.stdout:
        lines.append(json.loads(line))
        if "waiting up to 60 s" in lines[-1]["message"]:
            process.terminate()  # SIGTERM, as systemctl stop sends
            break
    lines += [json.loads(line) for line in process.stdout]  # not communicate(): it skips what is buffered
    err = process.stderr.read()
    process.wait(timeout=60)
    assert process.returncode == 130, err
    assert (lines[-1]["event"], lines[-1]["exit_code"]) == ("error", 130)
    assert err == "deltaimg: interrupted\n"
    assert app.running(engine_resources)[:2] == (before, app.ids["1"])


def test_a_bundle_file_named_alone_for_an_image_the_host_lacks_is_an_error(app, keypair, example_bundle, tmp_path):
    app.host_has("1")
    result = apply(example_bundle, "--trust", keypair[1], "--log-format", "json")
    assert result.returncode == 15
    assert json.loads(result.stdout.splitlines()[-1])["exit_code"] == 15


def test_the_rebuild_reports_every_byte_it_writes_and_a_terminal_shows_it_as_a_bar(app, keypair, tmp_path):
    from deltaimg.apply.rebuild import read_rebuild, rebuild_size
    from deltaimg.bundle.reader import open_bundle
    from deltaimg.apply.engine import apply_to_engine, layers_to_load
    from tests.test_progress import on_terminal

    app.host_has("1")
    bundle = open_bundle(app.bundles["1", "2"], keys.trusted_keys([keypair[1]], None))
    done: list[int] = []
    apply_to_engine(bundle, DockerEngine(app.client), containers=None, swap_containers=False, grace=1, dry_run=False,
                    log=lambda line: None, work_dir=str(tmp_path), advance=done.append)
    plan = read_rebuild(bundle)
    assert app.in_engine("2") and sum(done) == rebuild_size(plan, layers_to_load(DockerEngine(app.client), plan)) > 60000

    args = ["apply", app.bundles["1", "2"], "--trust", keypair[1], "--no-swap"]
    app.host_has("1")
    assert "apply" in on_terminal(*args)
    for silent in ("--quiet", "--json", "--log-format=json"):
        app.host_has("1")
        assert on_terminal(*args, silent) == "", silent
