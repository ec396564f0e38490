"""Receipts (docs/site.md): an apply from a stick given ``--receipts`` leaves on the stick what it did
on this host, never losing another host's receipt; a read-only stick keeps it in the journal
instead; ``deltaimg receipts DIR`` prints the site's table from whatever the hosts wrote."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess

from deltaimg import __version__
from deltaimg.apply import receipts
from deltaimg.errors import SwapFailedRolledBack
from tests.conftest import Tmpfs, run_cli
from tests.test_unattended import apply, app  # noqa: F401  (the app's versions and bundles, a module fixture)

NAME = re.compile(r"(?P<host>[A-Za-z0-9._-]+)-(?P<mid>[0-9a-f]{12}|unknown)-\d{8}T\d{12}Z\.json")


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read(folder) -> list[dict]:
    return [json.loads((folder / name).read_text()) for name in sorted(os.listdir(folder))]


def test_each_run_from_a_stick_leaves_its_receipt_and_keeps_the_ones_before(
        app, engine_resources, keypair, tmp_path):  # noqa: F811
    app.host_has("1")
    app.start(engine_resources, "1")
    stick = app.stick(tmp_path / "stick", {"b.dimg": ("1", "2")})
    container = engine_resources.name("app")

    first = apply(stick, "--trust", keypair[1], "--receipts")
    assert first.returncode == 0, first.stderr
    [name] = os.listdir(stick / "receipts")
    assert f"receipt written: {stick / 'receipts' / name}" in first.stdout
    match = NAME.fullmatch(name)
    mid = receipts.machine_id()
    assert match and match["host"] == socket.gethostname() and match["mid"] == (mid or "unknown")[:12]
    [receipt] = read(stick / "receipts")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", receipt.pop("time"))
    assert receipt == {
        "receipt": 1, "host": socket.gethostname(), "machine_id": mid, "deltaimg": __version__,
        "result": "applied", "exit_code": 0, "message": None, "before": app.ids["1"], "after": app.ids["2"],
        "bundles": [{"file": "b.dimg", "sha256": sha256(str(stick / "b.dimg")), "result": "applied",
                     "base": app.ids["1"], "target": app.ids["2"], "containers": [container]}]}

    shutil.copy(app.bundles["2", "3"], stick / "c.dimg")
    os.chmod(stick / "receipts" / name, 0o444)  # what the first run wrote is never rewritten
    shutil.copy(app.bundles["1", "bad"], stick / "d.dimg")  # for a base this host no longer runs
    second = apply(stick, "--trust", keypair[1], "--receipts")
    assert second.returncode == 0, second.stderr
    third = apply(stick, "--trust", keypair[1], "--receipts")
    assert third.returncode == 0, third.stderr
    files = sorted(os.listdir(stick / "receipts"))
    assert len(files) == 3 and files[0] == name
    first_again, applied, current = read(stick / "receipts")
    assert first_again["result"] == "applied" and first_again["bundles"][0]["file"] == "b.dimg"
    assert (applied["result"], applied["before"], applied["after"]) == ("applied", app.ids["2"], app.ids["3"])
    assert [(b["file"], b["result"]) for b in applied["bundles"]] == [
        ("c.dimg", "applied"), ("b.dimg", "already-applied"), ("d.dimg", "skipped")]
    assert (current["result"], current["exit_code"], current["before"], current["after"]) == (
        "up-to-date", 0, app.ids["3"], app.ids["3"])

    table = json.loads(run_cli("receipts", str(stick), "--json").stdout)
    assert (table["folder"], table["hosts"], table["unreadable"], table["left_out"]) == (
        str(stick / "receipts"), 1, 0, 0)
    assert [(r["result"], r["before"], r["after"]) for r in table["receipts"]] == [  # newest first
        ("up-to-date", app.ids["3"], app.ids["3"]), ("applied", app.ids["2"], app.ids["3"]),
        ("applied", app.ids["1"], app.ids["2"])]
    assert table["receipts"][1]["bundle"] == "c.dimg, b.dimg"


def test_a_failed_run_says_so_in_its_receipt(app, engine_resources, keypair, tmp_path):  # noqa: F811
    app.host_has("1")
    app.start(engine_resources, "1")
    stick = app.stick(tmp_path / "stick", {"bad.dimg": ("1", "bad")})

    result = apply(stick, "--trust", keypair[1], "--receipts")
    assert result.returncode == SwapFailedRolledBack.exit_code
    [receipt] = read(stick / "receipts")
    assert (receipt["result"], receipt["exit_code"], receipt["before"], receipt["after"]) == (
        "rolled-back", 21, app.ids["1"], app.ids["1"])
    assert receipt["message"] == result.stderr.strip().removeprefix("deltaimg: error: ")
    assert [(b["file"], b["result"], b["containers"]) for b in receipt["bundles"]] == [("bad.dimg", "rolled-back", [])]


def test_a_read_only_stick_keeps_the_receipt_in_the_journal_and_the_run_succeeds(
        app, engine_resources, keypair, tmp_path):  # noqa: F811
    app.host_has("1")
    app.start(engine_resources, "1")
    disk = Tmpfs(str(tmp_path / "stick"), 16 << 20)
    try:
        shutil.copy(app.bundles["1", "2"], os.path.join(disk.path, "b.dimg"))
        subprocess.run(["mount", "-o", "remount,ro", disk.path], check=True)

        result = apply(disk.path, "--trust", keypair[1], "--receipts")
        assert result.returncode == 0, result.stderr
        assert (f"receipt kept in the journal {os.environ['DELTAIMG_STATE_DIR']}/journal.jsonl (deltaimg status shows "
                f"it): cannot write {disk.path}/receipts: Read-only file system") in result.stdout
        assert app.running(engine_resources)[1] == app.ids["2"]
        assert os.listdir(disk.path) == ["b.dimg"]
    finally:
        disk.unmount()
    status = run_cli("status")
    assert ("1 receipt(s) kept in the journal, as the stick could not take them; the last, " in status.stdout
            and f": applied (cannot write {disk.path}/receipts: Read-only file system)" in status.stdout)
    [kept] = json.loads(run_cli("status", "--json").stdout)["kept_receipts"]
    assert (kept["folder"], kept["reason"]) == (f"{disk.path}/receipts", "Read-only file system")
    assert (kept["receipt"]["result"], kept["receipt"]["after"]) == ("applied", app.ids["2"])


def receipt(host: str, time: str, result: str = "applied", exit_code: int = 0) -> dict:
    return {"receipt": 1, "host": host, "machine_id": "0123456789abcdef0123456789abcdef", "time": time,
            "deltaimg": "0.1.0", "result": result, "exit_code": exit_code, "message": None,
            "before": "sha256:" + "a" * 64, "after": "sha256:" + "b" * 64,
            "bundles": [{"file": "app.dimg", "sha256": "c" * 64, "result": result, "base": "sha256:" + "a" * 64,
                         "target": "sha256:" + "b" * 64, "containers": ["web"]}]}


def test_the_site_table_lists_hosts_in_order_each_newest_first_and_shows_bad_files_as_unreadable(tmp_path):
    folder = tmp_path / "stick" / "receipts"
    folder.mkdir(parents=True)
    files = {"b-1.json": receipt("edge-b", "2026-12-04T10:00:00.000000Z"),
             "a-1.json": receipt("edge-a", "2026-12-04T09:00:00.000000Z", "rolled-back", 21),
             "a-2.json": receipt("edge-a", "2026-12-04T11:00:00.000000Z"),
             "evil.json": receipt("edge-\x1b[31mred\n", "2026-12-04T12:00:00.000000Z"),
             "types.json": {**receipt("edge-c", "2026-12-04T12:00:00.000000Z"), "exit_code": "0", "bundles": [{}]}}
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))
    (folder / "huge.json").write_bytes(b" " * (receipts.MAX_RECEIPT + 1))
    (folder / "list.json").write_text("[1, 2]")
    (folder / "torn.json").write_text('{"host": "edge-')
    (folder / "link.json").symlink_to("/etc/passwd")
    os.mkfifo(folder / "fifo.json")
    (folder / ".edge-d-x.tmp").write_text("{")  # a write a pulled-out stick cut short: not a receipt

    result = run_cli("receipts", str(tmp_path / "stick"))
    assert result.returncode == 0, result.stderr
    ids = "aaaaaaaaaaaa -> bbbbbbbbbbbb"
    none = "-             -         unreadable   -     -                             "
    assert result.stdout.splitlines() == [
        f"{folder}: 10 receipt(s) from 3 host(s), 6 unreadable",
        "HOST                MACHINE ID    BUNDLE    RESULT       EXIT  BEFORE -> AFTER               TIME",
        f"edge-\\x1b[31mred\\n  0123456789ab  app.dimg  applied      0     {ids}  2026-12-04T12:00:00.000000Z",
        f"edge-a              0123456789ab  app.dimg  applied      0     {ids}  2026-12-04T11:00:00.000000Z",
        f"edge-a              0123456789ab  app.dimg  rolled-back  21    {ids}  2026-12-04T09:00:00.000000Z",
        f"edge-b              0123456789ab  app.dimg  applied      0     {ids}  2026-12-04T10:00:00.000000Z",
        f"(fifo.json)         {none}not a regular file",
        f"(huge.json)         {none}{receipts.MAX_RECEIPT + 1} bytes, more than any receipt ({receipts.MAX_RECEIPT})",
        f"(link.json)         {none}Too many levels of symbolic links",
        f"(list.json)         {none}not a JSON object",
        f"(torn.json)         {none}the receipt is not valid JSON (Unterminated string starting at: line 1 column 10 "
        "(char 9))",
        f"(types.json)        {none}missing or of the wrong type: exit_code, bundles",
    ]
    data = json.loads(run_cli("receipts", str(folder), "--json").stdout)
    assert (data["folder"], data["hosts"], data["unreadable"]) == (str(folder), 3, 6)
    assert [r["file"] for r in data["receipts"]] == ["evil.json", "a-2.json", "a-1.json", "b-1.json", "fifo.json",
                                                     "huge.json", "link.json", "list.json", "torn.json", "types.json"]
    assert data["receipts"][0]["host"] == "edge-\x1b[31mred\n"  # JSON escapes it


def test_receipts_of_a_folder_that_is_not_there_is_one_line(tmp_path):
    result = run_cli("receipts", str(tmp_path / "none"))
    assert (result.returncode, result.stdout) == (14, "")
    assert result.stderr == (f"deltaimg: error: cannot read the receipts folder {tmp_path / 'none'}: No such file or "
                             "directory; name the stick or its receipts folder\n")
