"""The state directory and its journal: what every apply did, written down before it does it.

Layout of the state directory (``/var/lib/deltaimg``, ``--state-dir``, ``$DELTAIMG_STATE_DIR``)::

    journal.jsonl   one JSON record per line, appended and fsynced
    lock            the run lock (see deltaimg.apply.lock)
    work/           scratch space for rebuilding images; emptied at the start of every run

Each bundle an apply works on is an *attempt* with its own ``id``. Its records, in order:

- ``begin``: the bundle (path, sha256 of all its bytes, signer key id), from/to images, written
  after the bundle verified and before anything on the host changes;
- ``swap``: the containers about to be recreated (name, old container ID, whether it ran; for a
  compose service, ``compose``: its project, folder, files, service, tag and old image);
- ``container`` with ``step`` ``begin`` (before the container is touched), ``created`` (with the
  new container's ID in ``container``: the one container a recovery may remove), ``ready`` (the new
  container passed its check) and ``done`` (the old one is removed);
- ``end`` with an ``outcome`` (``applied``, ``rolled-back``, ``failed``), written only when the
  host is in a known state again; or ``recovered``, written by the next run's recovery.

A ``push`` record, of no attempt, is an ``apply --to docker://…`` into a registry (deltaimg.apply.
site_push): written once it ended, with its ``outcome`` (``pushed``, ``already there``,
``failed``, ``interrupted``), the registry reference, the manifest digest and the Swarm services it
moved; a push changes nothing on this host, so it is never recovered.

A ``receipt`` record, of no attempt, holds a run's receipt that its stick could not take (its
``folder`` and the ``reason``; see deltaimg.apply.receipts).

An attempt with a ``begin`` and neither ``end`` nor ``recovered`` was interrupted: the next run
recovers it (deltaimg.recovery) before doing anything else. Records are written whole with one
``write`` on an ``O_APPEND`` descriptor; a reader skips a line that is not JSON (a torn last line),
and a writer that finds the last line torn starts its record on a line of its own.

Anything else is not a line deltaimg wrote: JSON of other types than the records above, nested
deeper than Python parses, or longer than any record. Then the journal was edited or damaged,
recovery cannot know what it would be settling, and reading it raises JournalError.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Callable, NoReturn

from deltaimg.errors import JournalError, OutputError

DEFAULT_STATE_DIR = "/var/lib/deltaimg"
STATE_DIR_ENV = "DELTAIMG_STATE_DIR"
JOURNAL = "journal.jsonl"
CLOSING = ("end", "recovered")
MAX_LINE = 1 << 20  # a record names a bundle, two images and the containers swapped: far less than this

Check = Callable[[object], bool]


def _text(value: object) -> bool:
    return isinstance(value, str)


def _maybe(check: Check) -> Check:
    return lambda value: value is None or check(value)


def _list(check: Check) -> Check:
    return lambda value: isinstance(value, list) and all(map(check, value))


def _object(required: tuple[str, ...] = (), **fields: Check) -> Check:
    """A JSON object holding ``required`` and, of ``fields``, only values they accept; other keys pass."""
    return lambda value: (isinstance(value, dict) and all(key in value for key in required)
                          and all(key not in value or check(value[key]) for key, check in fields.items()))


_IMAGE = _object(("image_id",), image_id=_text, tags=_list(_text), created=_maybe(_text))
_BUNDLE = _object(path=_maybe(_text), sha256=_maybe(_text), key_id=_maybe(_text), parts=lambda v: type(v) is int)
_CONTAINER = _object(("name",), name=_text, old_container=_maybe(_text), new_container=_maybe(_text))
_OUTCOME = {"bundle": _maybe(_BUNDLE), "from": _maybe(_IMAGE), "to": _maybe(_IMAGE), "outcome": _text,
            "message": _maybe(_text), "containers": _list(_CONTAINER)}
RECORDS: dict[str, Check] = {  # what the readers of each record type rely on
    "begin": _object(bundle=_BUNDLE, containers=_list(_text), **{"from": _IMAGE, "to": _IMAGE}),
    "swap": _object(containers=_list(_CONTAINER)),
    "container": _object(("name", "step"), name=_text, step=_text, container=_maybe(_text)),
    "note": _object(message=_text),
    "end": _object(**_OUTCOME),
    "recovered": _object(**_OUTCOME),
    "push": _object(("outcome", "registry"), outcome=_text, registry=_text, digest=_maybe(_text), message=_maybe(_text),
                    bundle=_maybe(_BUNDLE), services=_list(_object(("name",), name=_text)),
                    **{"from": _maybe(_IMAGE), "to": _maybe(_IMAGE)}),
    "receipt": _object(("folder", "reason", "receipt"), folder=_text, reason=_text, receipt=lambda v: isinstance(v, dict)),
}


def bundle_record(bundle) -> dict:
    """What the journal says of a bundle (deltaimg.bundle.reader.Bundle)."""
    return {"path": bundle.path, "sha256": bundle.sha256, "key_id": bundle.signer.key_id if bundle.signer else None,
            "parts": len(bundle.parts) or 1}


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
    created: dict[str, str] = field(default_factory=dict)  # container name -> ID of the new container made for it
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
        records = []
        try:
            with open(self.path, "rb") as f:
                for number, line in enumerate(iter(lambda: f.readline(MAX_LINE + 1), b""), 1):
                    if len(line) > MAX_LINE:
                        self._not_ours(number, f"longer than {MAX_LINE} bytes")
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # torn by a power cut: the record was never complete
                    except RecursionError:
                        self._not_ours(number, "nested too deep")
                    if not (isinstance(record, dict) and isinstance(record.get("id"), str)
                            and record.get("type") in RECORDS and _maybe(_text)(record.get("time"))
                            and RECORDS[record["type"]](record)):
                        self._not_ours(number, "not the fields or types of a journal record")
                    records.append(record)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise OutputError(f"cannot read the journal {self.path}: {exc.strerror}") from None
        return records

    def _not_ours(self, line: int, why: str) -> NoReturn:
        raise JournalError(
            f"the journal {self.path} line {line} is not a record deltaimg writes ({why}): it was edited or damaged, "
            "so what earlier runs did is unknown; check the containers by hand (docker ps -a --filter "
            f"name=-deltaimg-old), then move the journal aside (mv {self.path} {self.path}.damaged) and run again"
        )

    def pushes(self) -> list[dict]:
        """The ``push`` records: applies into a registry, oldest first."""
        return [record for record in self.records() if record.get("type") == "push"]

    def kept_receipts(self) -> list[dict]:
        """The ``receipt`` records: receipts a stick could not take (deltaimg.apply.receipts), oldest first."""
        return [record for record in self.records() if record.get("type") == "receipt"]

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
                if record.get("step") == "created" and record.get("container"):
                    attempt.created[str(record.get("name"))] = record["container"]
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
