"""Receipts: what an apply from a stick did on each host, written onto the stick, read back home.

A run given ``--receipts`` (the stick unit passes it) writes, when it ends however it ends, one
small JSON file into ``receipts/`` beside the bundles (the first folder given), named for the host,
its machine id and the time: ``receipts/<host>-<machine-id[:12]>-<UTC time>.json``. It is written
to a hidden temporary file in that folder, fsynced and renamed onto a name no file has, so a
stick pulled out mid-write leaves a hidden stub, never a torn receipt, and no host's receipt
replaces another's. Where the stick cannot be written (mounted read-only, full, pulled out), the
receipt is kept in the journal instead (a ``receipt`` record, shown by ``deltaimg status``) and
the run's log says so; the run's own outcome and exit code stay what they were.

``deltaimg receipts DIR`` reads them back on the build host. A receipt is input from the field:
each file is capped in size and checked field by field; one that is not a receipt is one row
saying so, never an error.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import stat
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from deltaimg import __version__
from deltaimg.apply.journal import Journal, new_id
from deltaimg.errors import DeltaimgError, OutputError, printable
from deltaimg.safejson import load_json

FOLDER = "receipts"
MACHINE_ID = "/etc/machine-id"
RECEIPT_VERSION = 1
MAX_RECEIPT = 64 << 10  # a receipt names a few bundles, images and containers: far less than this
MAX_RECEIPTS = 10000  # files read from one folder; past that the table says how many were left out
INTERRUPTED = 130
ATTEMPT_RESULTS = {"applied": "applied", "rolled-back": "rolled-back", "failed": "failed"}


# -- writing, at the end of a run


@dataclass
class _Tee:
    """The run's reporter, passed through; keeps the outcomes the receipt lists."""

    reporter: object
    outcomes: list[tuple[str, dict]] = field(default_factory=list)

    def progress(self, message: str) -> None:
        self.reporter.progress(message)  # type: ignore[attr-defined]

    def outcome(self, event: str, record: dict, text: str) -> None:
        self.outcomes.append((event, record))
        self.reporter.outcome(event, record, text)  # type: ignore[attr-defined]


@contextmanager
def kept(folder: str | None, journal: Journal, reporter: object) -> Iterator[object]:
    """Run the body with a reporter that remembers its outcomes; then, ``folder`` being the stick's
    folder of bundles (None: no receipt), write the run's receipt there, or into ``journal``."""
    if folder is None:
        yield reporter
        return
    tee = _Tee(reporter)
    started, pid = _now(), os.getpid()
    try:
        yield tee
    except DeltaimgError as exc:
        leave(folder, journal, tee.progress, build(tee.outcomes, journal, started, pid, exc.exit_code, str(exc)))
        raise
    except KeyboardInterrupt:
        leave(folder, journal, tee.progress, build(tee.outcomes, journal, started, pid, INTERRUPTED, "interrupted"))
        raise
    except Exception as exc:
        leave(folder, journal, tee.progress, build(tee.outcomes, journal, started, pid, 1, f"unexpected {type(exc).__name__}"))
        raise
    leave(folder, journal, tee.progress, build(tee.outcomes, journal, started, pid, 0, None))


def build(outcomes: list[tuple[str, dict]], journal: Journal, started: str, pid: int, exit_code: int,
          message: str | None) -> dict:
    """The receipt: the bundles this run (``pid``, since ``started``) attempted, as the journal closed
    them, then those it left alone, as the run reported them."""
    try:
        attempts = [a for a in journal.attempts() if a.begin.get("pid") == pid and a.begin.get("time", "") >= started]
    except DeltaimgError:  # a damaged journal: the run's own error says so
        attempts = []
    attempted = []
    for attempt in attempts:
        closed = attempt.closed or {}
        result = ATTEMPT_RESULTS.get(str(closed.get("outcome")), "interrupted" if attempt.interrupted else "failed")
        swapped = [c["name"] for c in closed.get("containers") or [] if result == "applied"]
        attempted.append(_bundle(attempt.begin, result, swapped))
    left = [_bundle(record, event, []) for event, record in outcomes if event != "applied"]
    applied = [b for b in attempted if b["result"] == "applied"]
    done = [b for b in left if b["result"] == "already-applied"]
    current = [b["target"] for b in done if b["target"] not in {d["base"] for d in done}]  # a chain's last
    if exit_code == INTERRUPTED:
        result = "interrupted"
    elif exit_code:
        result = "rolled-back" if any(b["result"] == "rolled-back" for b in attempted) else "failed"
    else:
        result = "applied" if applied else "up-to-date" if current else "nothing-to-do"
    before = attempted[0]["base"] if attempted else current[0] if current else None
    after = applied[-1]["target"] if applied else before
    bundles = attempted + left
    return {"receipt": RECEIPT_VERSION, "host": socket.gethostname(), "machine_id": machine_id(),
            "time": _now(), "deltaimg": __version__, "result": result, "exit_code": exit_code,
            "message": message, "before": before, "after": after, "bundles": bundles}


def push_receipt(record: dict, exit_code: int) -> dict:
    """The receipt of an apply into a registry, from its journal ``push`` record: ``after`` is the
    image the pushed tag names, ``services`` the Swarm services moved onto it."""
    outcome = record["outcome"]
    result = {"pushed": "applied", "already there": "up-to-date"}.get(outcome, outcome)
    base, target = (record.get("from") or {}).get("image_id"), (record.get("to") or {}).get("image_id")
    bundle = _bundle(record, {"up-to-date": "already-applied"}.get(result, result), [])
    return {"receipt": RECEIPT_VERSION, "host": socket.gethostname(), "machine_id": machine_id(), "time": _now(),
            "deltaimg": __version__, "result": result, "exit_code": exit_code, "message": record.get("message"),
            "before": base, "after": target if record.get("digest") else None,
            "registry": record["registry"], "digest": record.get("digest"),
            "services": [s["name"] for s in record.get("services") or []], "bundles": [bundle]}


def _bundle(record: dict, result: str, containers: list[str]) -> dict:
    bundle = record.get("bundle") or {}
    return {"file": os.path.basename(bundle.get("path") or "?"), "sha256": bundle.get("sha256"), "result": result,
            "base": (record.get("from") or {}).get("image_id"), "target": (record.get("to") or {}).get("image_id"),
            "containers": containers}


def machine_id(path: str = MACHINE_ID) -> str | None:
    """The host's machine id (systemd's 32 hex digits), or None when the file lacks one."""
    try:
        with open(path, "rb") as f:
            text = f.read(100).strip().decode("ascii", "replace")
    except OSError:
        return None
    return text if re.fullmatch(r"[0-9a-f]{32}", text) else None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def leave(folder: str, journal: Journal, log: Callable[[str], None], receipt: dict) -> None:
    """Write ``receipt`` into ``folder``'s receipts, or, when it cannot be written, into the journal."""
    target = os.path.join(folder, FOLDER)
    try:
        path = write(target, receipt)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        try:
            journal.append({"type": "receipt", "id": new_id(), "folder": target, "reason": reason, "receipt": receipt})
        except OutputError as lost:
            log(f"receipt lost: cannot write {target} ({reason}) nor the journal ({lost})")
            return
        log(f"receipt kept in the journal {journal.path} (deltaimg status shows it): cannot write "
                     f"{target}: {reason}")
        return
    log(f"receipt written: {path}")


def write(directory: str, receipt: dict) -> str:
    """Write ``receipt`` into ``directory`` under a name no file there has; its path."""
    os.makedirs(directory, exist_ok=True)
    host = re.sub(r"[^A-Za-z0-9._-]", "_", str(receipt["host"]))[:64].lstrip(".") or "host"
    stamp = str(receipt["time"]).replace("-", "").replace(":", "").replace(".", "")
    stem = f"{host}-{(receipt['machine_id'] or 'unknown')[:12]}-{stamp}"
    temporary = os.path.join(directory, f".{stem}-{uuid.uuid4().hex[:8]}.tmp")
    data = (json.dumps(receipt, indent=2, sort_keys=True) + "\n").encode()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        for n in range(1, 1000):
            path = os.path.join(directory, f"{stem}.json" if n == 1 else f"{stem}-{n}.json")
            if not os.path.lexists(path):
                os.rename(temporary, path)
                break
        else:
            raise OSError(0, f"{stem}.json and 998 more names are taken")
    except OSError:
        _remove(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# -- reading, on the build host


def _text(value: object) -> bool:
    return isinstance(value, str)


def _maybe_text(value: object) -> bool:
    return value is None or isinstance(value, str)


_BUNDLE_FIELDS: dict[str, Callable[[object], bool]] = {
    "file": _text, "sha256": _maybe_text, "result": _text, "base": _maybe_text, "target": _maybe_text,
    "containers": lambda v: isinstance(v, list) and all(map(_text, v))}
_FIELDS: dict[str, Callable[[object], bool]] = {
    "host": _text, "machine_id": _maybe_text, "time": _text, "deltaimg": _text, "result": _text,
    "exit_code": lambda v: type(v) is int, "message": _maybe_text, "before": _maybe_text, "after": _maybe_text,
    "bundles": lambda v: isinstance(v, list) and all(
        isinstance(b, dict) and all(k in b and check(b[k]) for k, check in _BUNDLE_FIELDS.items()) for b in v)}


def folder_of(directory: str) -> str:
    """The receipts folder ``directory`` names: its ``receipts/`` (a stick), else itself."""
    inner = os.path.join(directory, FOLDER)
    return inner if os.path.isdir(inner) else directory


def read_all(directory: str) -> tuple[str, list[dict], int]:
    """Every receipt in the folder ``directory`` names, as table rows (host by host, each host's
    newest first; the unreadable last); and how many files past :data:`MAX_RECEIPTS` were left out."""
    folder = folder_of(directory)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    except OSError as exc:
        raise OutputError(f"cannot read the receipts folder {folder}: {exc.strerror}; name the stick or its "
                          "receipts folder") from None
    rows = [read_one(os.path.join(folder, name)) for name in names[:MAX_RECEIPTS]]
    rows.sort(key=lambda r: r["time"] or "", reverse=True)
    rows.sort(key=lambda r: (r["result"] == "unreadable", r["host"] or "", r["file"] if r["host"] is None else ""))
    return folder, rows, max(0, len(names) - MAX_RECEIPTS)


def read_one(path: str) -> dict:
    """One receipt file as a table row; a file that is not a receipt is a row saying why."""
    name = os.path.basename(path)
    try:
        data = _read_capped(path)
    except OSError as exc:
        return _unreadable(name, exc.strerror or str(exc))
    except ValueError as exc:
        return _unreadable(name, str(exc))
    try:
        receipt = load_json(data, "the receipt", "a receipt")
    except DeltaimgError as exc:
        return _unreadable(name, str(exc))
    if not isinstance(receipt, dict):
        return _unreadable(name, "not a JSON object")
    wrong = [key for key, check in _FIELDS.items() if key not in receipt or not check(receipt[key])]
    if wrong:
        return _unreadable(name, f"missing or of the wrong type: {', '.join(wrong)}")
    bundles = receipt["bundles"]
    return {"file": name, "host": receipt["host"], "machine_id": receipt["machine_id"],
            "bundle": ", ".join(b["file"] for b in bundles if b["result"] not in ("skipped",)) or None,
            "result": receipt["result"], "exit_code": receipt["exit_code"], "before": receipt["before"],
            "after": receipt["after"], "time": receipt["time"], "message": receipt["message"],
            "deltaimg": receipt["deltaimg"], "bundles": bundles}


def _read_capped(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > MAX_RECEIPT:
            raise ValueError(f"{info.st_size} bytes, more than any receipt ({MAX_RECEIPT})")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(MAX_RECEIPT + 1)[:MAX_RECEIPT]
    finally:
        os.close(fd)


def _unreadable(name: str, reason: str) -> dict:
    return {"file": name, "host": None, "machine_id": None, "bundle": None, "result": "unreadable",
            "exit_code": None, "before": None, "after": None, "time": None, "message": printable(reason),
            "deltaimg": None, "bundles": []}
