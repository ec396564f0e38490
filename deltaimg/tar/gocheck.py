"""Whether Go's archive/tar reader, and so ``docker load``, accepts a layer tar's headers.

deltaimg carries a layer tar byte for byte whatever it holds (:mod:`deltaimg.tar.split`), but Docker
unpacks layers with Go's archive/tar, which stops with "archive/tar: invalid tar header" at a header
it rejects. Found with Docker 20.10 (docs/bundle-format.md): a header whose checksum does not match,
a numeric field that is not octal or base-256, a negative size, a malformed PAX record (bad length,
no newline, no ``=``), a NUL in a PAX path, linkpath, uname or gname, and a non-zero block right
after a zero block. Bytes after the end-of-archive blocks and a short last block are not read, so
they pass. This module applies those rules, reading the headers only (payloads are skipped).
"""

from __future__ import annotations

import re
from typing import BinaryIO, Generator

from deltaimg.tar.split import BLOCK, EXTENSION_TYPES, HEADER_ONLY_TYPES, MAX_EXTENSION_BYTES, ZERO_BLOCK

NUMERIC_FIELDS = (("mode", 100, 108), ("uid", 108, 116), ("gid", 116, 124), ("size", 124, 136), ("mtime", 136, 148))
DEVICE_FIELDS = (("devmajor", 329, 337), ("devminor", 337, 345))
NUL_FREE_KEYS = {"path", "linkpath", "uname", "gname"}
PAX_INTEGERS = {"size", "uid", "gid"}
PAX_TIMES = {"mtime", "atime", "ctime"}
PAX_TIME = re.compile(rb"[+-]?[0-9]+(\.[0-9]*)?\Z")
PAX_INTEGER = re.compile(rb"[+-]?[0-9]+\Z")
SKIP_CHUNK = 1 << 20


def go_rejects(stream: BinaryIO) -> str | None:
    """What Go's tar reader rejects first in ``stream`` (e.g. "has a negative size at byte 1024"), or None."""
    rules = _rules()
    try:
        want = next(rules)
        while True:
            if want < 0:
                _skip(stream, -want)
                want = rules.send(b"")
            else:
                want = rules.send(stream.read(want))
    except StopIteration as done:
        return done.value


class GoTarCheck:
    """:func:`go_rejects` on a layer as it is written: :meth:`feed` it every piece in order (it
    returns the problem as soon as one is found), then :meth:`finish`. Payloads are skipped, not kept."""

    def __init__(self) -> None:
        self._rules = _rules()
        self._want = next(self._rules)
        self._held = bytearray()
        self.problem: str | None = None
        self._done = False

    def feed(self, data: bytes) -> str | None:
        view = memoryview(data)
        while view and not self._done:
            if self._want < 0:
                taken = min(-self._want, len(view))
                self._want += taken
                view = view[taken:]
                if not self._want:
                    self._step(b"")
            else:
                taken = min(self._want - len(self._held), len(view))
                self._held += view[:taken]
                view = view[taken:]
                if len(self._held) == self._want:
                    held, self._held = bytes(self._held), bytearray()
                    self._step(held)
        return self.problem

    def finish(self) -> str | None:
        """The problem, once the whole layer went by (a short last read ends the check, as in Go)."""
        while not self._done:
            held, self._held = bytes(self._held), bytearray()
            self._step(held if self._want >= 0 else b"")
        return self.problem

    def _step(self, data: bytes) -> None:
        try:
            self._want = self._rules.send(data)
        except StopIteration as done:
            self.problem, self._done = done.value, True


def _rules() -> Generator[int, bytes, str | None]:
    """Go's rules as a reader-independent generator: it yields how many bytes it wants next (a
    negative count: bytes to skip, answered with b"" once skipped) and is sent them (fewer at the
    stream's end); it returns what Go rejects first, or None."""
    at = 0
    pax_size: int | None = None
    while True:
        block = yield BLOCK
        if len(block) < BLOCK:
            return None
        if block == ZERO_BLOCK:
            following = yield BLOCK
            if len(following) < BLOCK or following == ZERO_BLOCK:
                return None
            return f"has a non-zero block after a zero block at byte {at + BLOCK}"
        problem = _header_problem(block)
        if problem is not None:
            return f"{problem} at byte {at}"
        typeflag, size = block[156:157], _numeric(block[124:136])
        assert size is not None
        if typeflag in EXTENSION_TYPES:
            if size > MAX_EXTENSION_BYTES:
                return f"has an extension header of {size} bytes, more than Go reads, at byte {at}"
            body = yield size + (-size) % BLOCK
            if typeflag in (b"x", b"g"):
                records = _pax_records(body[:size])
                if records is None:
                    return f"has a malformed PAX record at byte {at}"
                if typeflag == b"x" and "size" in records:
                    pax_size = int(records["size"])
            at += BLOCK + len(body)
            continue
        if typeflag == b"S":
            return None  # GNU sparse files: not checked further
        if pax_size is not None:
            size, pax_size = pax_size, None
        if typeflag in HEADER_ONLY_TYPES:
            size = 0
        skip = size + (-size) % BLOCK
        if skip:
            yield -skip
        at += BLOCK + skip


def _header_problem(block: bytes) -> str | None:
    stored = _octal(block[148:156])
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = sum(b - 256 if b > 127 else b for b in block[:148]) + 8 * 32 + sum(b - 256 if b > 127 else b for b in block[156:])
    if stored is None or stored not in (unsigned, signed):
        return "has a header whose checksum does not match"
    fields = NUMERIC_FIELDS + (DEVICE_FIELDS if block[257:262] == b"ustar" else ())
    for name, start, end in fields:
        if _numeric(block[start:end]) is None:
            return f"has a header whose {name} field is not a number"
    if _numeric(block[124:136]) < 0:  # type: ignore[operator]
        return "has a negative size"
    return None


def _numeric(field: bytes) -> int | None:
    """The field as Go's parseNumeric reads it: base-256 when the high bit is set, else octal."""
    if field[0] & 0x80:
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        return value - (1 << (8 * len(field) - 1)) if field[0] & 0x40 else value
    return _octal(field)


def _octal(field: bytes) -> int | None:
    text = field.strip(b" \0").split(b"\0", 1)[0]
    if not text:
        return 0
    return int(text, 8) if re.fullmatch(rb"[0-7]+", text) else None


def _pax_records(body: bytes) -> dict[str, str] | None:
    """The PAX records, or None where Go's parsePAXRecord fails (its checks, in its order)."""
    records: dict[str, str] = {}
    while body:
        digits, space, rest = body.partition(b" ")
        if not space or not re.fullmatch(rb"[+-]?[0-9]+", digits):
            return None
        length = int(digits)
        end = length - len(digits) - 1  # the record's end in ``rest``
        if length < 5 or length > len(body) or end <= 0:
            return None
        record, newline, body = rest[: end - 1], rest[end - 1 : end], rest[end:]
        key, equals, value = record.partition(b"=")
        if newline != b"\n" or not equals or not key:
            return None
        name = key.decode("utf-8", "surrogateescape")
        if b"\0" in (value if name in NUL_FREE_KEYS else key):
            return None
        pattern = PAX_INTEGER if name in PAX_INTEGERS else PAX_TIME if name in PAX_TIMES else None
        if pattern is not None and not pattern.match(value):
            return None
        if name == "size" and int(value) < 0:
            return None
        records[name] = value.decode("utf-8", "surrogateescape")
    return records


def _skip(stream: BinaryIO, count: int) -> int:
    """Skip ``count`` bytes (fewer at the stream's end); returns how many were skipped."""
    skipped = 0
    while skipped < count and (data := stream.read(min(SKIP_CHUNK, count - skipped))):
        skipped += len(data)
    return skipped
