"""A journal that is not what deltaimg wrote (edited by hand, damaged, planted) is never half
believed: ``deltaimg status`` and the recovery every apply runs first both stop at it with one line
naming the line and how to clear it, exit 29, and change nothing. A line torn by a power cut (not
JSON at all) is still skipped, as the writer expects."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deltaimg.apply.journal import JOURNAL, MAX_LINE, Journal
from deltaimg.errors import JournalError
from tests.engine_proxy import recording_engine
from tests.memory import MINUTE, measured

BUDGET = 512 << 20
GOOD = {"type": "begin", "id": "a1", "time": "2026-01-01T00:00:00.000000Z", "pid": 1, "containers": ["web"],
        "bundle": {"path": "/media/app.dimg", "sha256": "ab" * 32, "key_id": "0123456789abcdef", "parts": 1},
        "from": {"image_id": "sha256:" + "1" * 64, "tags": ["app:1"], "created": None},
        "to": {"image_id": "sha256:" + "2" * 64, "tags": ["app:2"], "created": None}}
TYPES = "not the fields or types of a journal record"

HOSTILE: dict[str, tuple[bytes, str]] = {
    "nested a million deep": (b'{"id":"a1","type":"note","message":' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}",
                              f"longer than {MAX_LINE} bytes"),
    "nested a hundred thousand deep": (b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
    "a list, not a record": (b"[1, 2]", TYPES),
    "an id that is a number": (json.dumps({**GOOD, "id": 7}).encode(), TYPES),
    "a type deltaimg never writes": (json.dumps({**GOOD, "type": "rm -rf"}).encode(), TYPES),
    "a target that is a string": (json.dumps({**GOOD, "to": "sha256:x"}).encode(), TYPES),
    "an image id that is an object": (json.dumps({**GOOD, "from": {"image_id": {"a": 1}}}).encode(), TYPES),
    "tags that are not strings": (json.dumps({**GOOD, "to": {**GOOD["to"], "tags": [1]}}).encode(), TYPES),
    "swapped containers that are a number": (json.dumps({"type": "swap", "id": "a1", "containers": 5}).encode(), TYPES),
    "a container without a name": (json.dumps({"type": "swap", "id": "a1", "containers": [{"old_container": "x"}]}).encode(),
                                   TYPES),
    "a step that is a list": (json.dumps({"type": "container", "id": "a1", "name": "web", "step": ["begin"]}).encode(), TYPES),
    "an outcome that is a number": (json.dumps({"type": "end", "id": "a1", "outcome": 3}).encode(), TYPES),
}


def planted(state_dir: str, line: bytes) -> Path:
    """A journal whose first line is a good ``begin`` record and whose second is ``line``."""
    os.makedirs(state_dir, exist_ok=True)
    path = Path(state_dir) / JOURNAL
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + line + b"\n")
    return path


def expected_error(path: Path, why: str) -> str:
    return (f"deltaimg: error: the journal {path} line 2 is not a record deltaimg writes ({why}): it was edited or damaged, "
            "so what earlier runs did is unknown; check the containers by hand (docker ps -a --filter name=-deltaimg-old), "
            f"then move the journal aside (mv {path} {path}.damaged) and run again\n")


@pytest.mark.parametrize("case", HOSTILE)
def test_status_stops_at_a_journal_line_deltaimg_did_not_write(state_dir, case):
    line, why = HOSTILE[case]
    path = planted(state_dir, line)
    before = path.read_bytes()
    outcome = measured("status", timeout=MINUTE)
    assert (outcome.returncode, outcome.stderr) == (JournalError.exit_code, expected_error(path, why))
    assert outcome.stdout == "" and outcome.peak_rss < BUDGET
    assert path.read_bytes() == before


@pytest.mark.parametrize("case", ["nested a million deep", "nested a hundred thousand deep", "a target that is a string",
                                  "swapped containers that are a number"])
def test_the_recovery_every_apply_runs_first_stops_at_it_and_changes_nothing(docker_client, state_dir, example_bundle,
                                                                              keypair, case):
    line, why = HOSTILE[case]
    path = planted(state_dir, line)
    before = path.read_bytes()
    with recording_engine() as engine:
        outcome = measured("apply", example_bundle, "--trust", keypair[1], timeout=MINUTE, env={"DOCKER_HOST": engine.url})
    assert (outcome.returncode, outcome.stderr) == (JournalError.exit_code, expected_error(path, why))
    assert outcome.peak_rss < BUDGET
    assert path.read_bytes() == before, "recovery wrote to a journal it could not read"
    assert engine.writes() == [], "apply changed the engine"


def test_a_torn_line_is_still_skipped_and_the_records_around_it_count(tmp_path):
    journal = Journal(str(tmp_path / JOURNAL))
    journal.append(GOOD)
    with open(journal.path, "ab") as f:
        f.write(b'{"type":"container","id":"a1","na\n\xff\xfe\n')  # torn, then bytes that are not UTF-8
    journal.append({"type": "end", "id": "a1", "outcome": "applied", "containers": [{"name": "web"}]})
    [attempt] = journal.attempts()
    assert attempt.closed is not None and attempt.closed["outcome"] == "applied"
    assert attempt.begin["to"] == GOOD["to"]


def test_every_record_deltaimg_writes_is_one_it_reads(tmp_path):
    """The schema the reader checks accepts each record type as the writers write it."""
    journal = Journal(str(tmp_path / JOURNAL))
    journal.append(GOOD)
    journal.append({"type": "swap", "id": "a1", "containers": [{"name": "web", "old_container": "c" * 64, "started": True}]})
    journal.append({"type": "container", "id": "a1", "name": "web", "step": "begin"})
    journal.append({"type": "note", "id": "a1", "message": "rollback failed"})
    journal.append({"type": "recovered", "id": "a1", "outcome": "recovered", "bundle": GOOD["bundle"], "from": GOOD["from"],
                    "to": GOOD["to"], "containers": [{"name": "web", "action": "rolled-back", "container": "c" * 64,
                                                      "image": GOOD["from"]["image_id"]}]})
    journal.append({"type": "end", "id": "a1", "outcome": "failed", "message": "x", "loaded": None, "containers": [],
                    "bundle": GOOD["bundle"], "from": GOOD["from"], "to": GOOD["to"]})
    assert [r["type"] for r in journal.records()] == ["begin", "swap", "container", "note", "recovered", "end"]
