"""The state directory and its journal: what every apply did, written down before it does it.

Layout of the state directory (``/var/lib/deltaimg``, ``--state-dir``, ``$DELTAIMG_STATE_DIR``)::

    journal.jsonl   one JSON record per line, appended and fsynced
    lock            the run lock (see deltaimg.apply.lock)
    work/           scratch space for rebuilding images; emptied at the start of every run

Each bundle an apply works on is an *attempt* with its own ``id``. Its records, in order:

- ``begin``: the bundle (path, sha256 of all its bytes, signer key id), from/to images, written
  after the bundle verified and before anything on the host changes;
- ``swap``: the containers about to be recreated (name, old container ID, whether it ran);
- ``container`` with ``step`` ``begin`` (before the container is touched), ``ready`` (the new
  container passed its check) and ``done`` (the old one is removed);
- ``end`` with an ``outcome`` (``applied``, ``rolled-back``, ``failed``), written only when the
  host is in a known state again; or ``recovered``, written by the next run's recovery.

An attempt with a ``begin`` and neither ``end`` nor ``recovered`` was interrupted: the next run
recovers it (deltaimg.recovery) before doing anything else. Records are written whole with one
``write`` on an ``O_APPEND`` descriptor; a reader skips a line it cannot parse (a torn last line),
and a writer that finds the last line torn starts its record on a line of its own.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field

from deltaimg.errors import OutputError

DEFAULT_STATE_DIR = "/var/lib/deltaimg"
STATE_DIR_ENV = "DELTAIMG_STATE_DIR"
JOURNAL = "journal.jsonl"
CLOSING = ("end", "recovered")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def state_dir_path(option: str | None) -> str:
    return option or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR


@dataclass
class StateDir:
    path: str

    @property
    def journal(self) -> Journal:
        return Journal(os.path.join(self.path, JOURNAL))

    @property
    def lock_path(self) -> str:
        return os.path.join(self.path, "lock")

    @property
    def work_path(self) -> str:
        return os.path.join(self.path, "work")

    def create(self) -> None:
        try:
            os.makedirs(self.path, mode=0o755, exist_ok=True)
            if not os.access(self.path, os.W_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            raise OutputError(f"cannot use the state directory {self.path}: {exc.strerror}; run as root or pass "
                              "--state-dir DIR") from None

    def clean_work(self) -> None:
        """Empty the scratch directory: whatever is in it is left over from a run that was killed."""
        try:
            shutil.rmtree(self.work_path, ignore_errors=True)
            os.makedirs(self.work_path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot prepare {self.work_path}: {exc.strerror}") from None


@dataclass
class Attempt:
    """The records of one attempt, in the order they were written."""

    id: str
    begin: dict
    containers: list[dict] = field(default_factory=list)  # from the last ``swap`` record
    steps: dict[str, set[str]] = field(default_factory=dict)  # container name -> steps recorded
    notes: list[str] = field(default_factory=list)
    closed: dict | None = None  # the ``end`` or ``recovered`` record

    @property
    def interrupted(self) -> bool:
        return self.closed is None


class Journal:
    def __init__(self, path: str) -> None:
        self.path = path

    def append(self, record: dict) -> dict:
        """Write one record durably (fsync) before returning it, stamped with the time."""
        record = {"time": now(), **record}
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        created = not os.path.exists(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a power cut tore the last line: do not glue this record onto it
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(os.path.dirname(self.path))
        except OSError as exc:
            raise OutputError(f"cannot write the journal {self.path}: {exc.strerror}") from None
        return record

    def records(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise OutputError(f"cannot read the journal {self.path}: {exc.strerror}") from None
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                records.append(record)
        return records

    def attempts(self) -> list[Attempt]:
        """Every attempt, oldest first."""
        attempts: dict[str, Attempt] = {}
        for record in self.records():
            kind = record.get("type")
            if kind == "begin":
                attempts[record["id"]] = Attempt(record["id"], record)
                continue
            attempt = attempts.get(record["id"])
            if attempt is None:
                continue
            if kind == "swap":
                attempt.containers = [c for c in record.get("containers") or [] if isinstance(c, dict)]
            elif kind == "container":
                attempt.steps.setdefault(str(record.get("name")), set()).add(str(record.get("step")))
            elif kind == "note":
                attempt.notes.append(str(record.get("message")))
            elif kind in CLOSING:
                attempt.closed = record
        return list(attempts.values())


def _fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
