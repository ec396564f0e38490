"""Split a layer tar into raw segments and file payloads, the way tar-split does.

A layer tar is read as a sequence of :class:`Entry` objects. Each entry keeps its raw header
bytes verbatim (PAX and GNU extension headers included) in ``pre``, then ``size`` payload bytes,
then padding to the next 512-byte block (``pad`` is ``None`` when it is all zeros, as writers
produce it). Everything from the end-of-archive marker on (the zero blocks, and whatever follows
them) is one final entry of kind ``TRAILER`` whose payload is those raw bytes.

Concatenating ``pre + payload + pad`` of every entry gives back the original stream byte for byte,
whatever the input: bytes that do not parse as a tar header simply start the trailer. Parsing is
only needed to name entries so that their content can be matched against the base image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
TRAILER = "trailer"
EXTENSION_TYPES = {b"x", b"g", b"L", b"K"}
HEADER_ONLY_TYPES = {b"1", b"2", b"3", b"4", b"5", b"6"}  # as Go's archive/tar reads them
MAX_EXTENSION_BYTES = 1 << 20  # PAX/GNU long-name records larger than this are not headers
READ_CHUNK = 1 << 20
REGULAR_TYPES = ("0", "\x00", "7")  # regular file (old and new typeflag) and contiguous file


@dataclass
class Entry:
    """One tar member as raw bytes plus its payload's place in the stream."""

    index: int
    name: str
    typeflag: str
    pre: bytes
    size: int
    pad: bytes | None
    offset: int  # where ``pre`` starts in the stream
    linkname: str = ""

    @property
    def pad_len(self) -> int:
        return 0 if self.typeflag == TRAILER else (-self.size) % BLOCK

    @property
    def is_file(self) -> bool:
        return self.typeflag in REGULAR_TYPES and self.size > 0


class TarSplitter:
    """Iterate over the entries of a tar stream; read each payload before asking for the next."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._pos = 0
        self._pending = 0  # unread payload bytes of the current entry
        self._current: Entry | None = None
        self._seekable = _is_seekable(stream)

    def __iter__(self) -> Iterator[Entry]:
        index = 0
        while True:
            self.finish_entry()
            entry = self._next_entry(index)
            self._current = entry
            self._pending = 1 if entry.typeflag == TRAILER else entry.size
            yield entry
            if entry.typeflag == TRAILER:
                self.finish_entry()
                return
            index += 1

    def read_payload(self, limit: int = READ_CHUNK) -> bytes:
        """Next piece of the current entry's payload; b"" at its end."""
        entry = self._current
        if entry is None or self._pending <= 0:
            return b""
        if entry.typeflag == TRAILER:  # runs to the end of the stream; its size grows as read
            data = self._stream.read(limit)
            if not data:
                self._pending = 0
            entry.size += len(data)
        else:
            data = self._stream.read(min(limit, self._pending))
            if not data:
                raise EOFError("tar stream ends inside a payload")
            self._pending -= len(data)
        self._pos += len(data)
        return data

    def payload_chunks(self) -> Iterator[bytes]:
        while chunk := self.read_payload():
            yield chunk

    def finish_entry(self) -> None:
        """Skip what is left of the current payload and read its padding into ``entry.pad``."""
        entry = self._current
        if entry is None:
            return
        if self._pending and self._seekable and entry.typeflag != TRAILER:
            self._stream.seek(self._pending, 1)
            self._pos += self._pending
            self._pending = 0
        while self.read_payload():
            pass
        if entry.typeflag != TRAILER and entry.pad_len:
            pad = self._read_exact(entry.pad_len)
            if len(pad) < entry.pad_len:
                raise EOFError("tar stream ends inside padding")
            entry.pad = None if pad == bytes(len(pad)) else pad
        self._current = None

    def _read_exact(self, n: int) -> bytes:
        parts = []
        while n > 0:
            data = self._stream.read(n)
            if not data:
                break
            parts.append(data)
            n -= len(data)
            self._pos += len(data)
        return b"".join(parts)

    def _next_entry(self, index: int) -> Entry:
        start = self._pos
        pre = bytearray()
        pax: dict[str, str] = {}
        gnu_name = gnu_link = None
        while True:
            block = self._read_exact(BLOCK)
            header = _parse_header(block)
            if header is None:
                return self._trailer(index, start, bytes(pre) + block)
            typeflag, size = header
            pre += block
            if typeflag in EXTENSION_TYPES:
                if size > MAX_EXTENSION_BYTES:
                    return self._trailer(index, start, bytes(pre))
                body = self._read_exact(size + (-size) % BLOCK)
                pre += body
                if len(body) < size + (-size) % BLOCK:
                    return self._trailer(index, start, bytes(pre))
                if typeflag == b"x":
                    pax.update(parse_pax(body[:size]))
                elif typeflag == b"L":
                    gnu_name = body[:size].split(b"\0", 1)[0]
                elif typeflag == b"K":
                    gnu_link = body[:size].split(b"\0", 1)[0]
                continue
            if typeflag == b"S":
                extended = block[482]
                while extended:
                    ext = self._read_exact(BLOCK)
                    pre += ext
                    if len(ext) < BLOCK:
                        return self._trailer(index, start, bytes(pre))
                    extended = ext[504]
            pax_size = pax_number(pax.get("size"))
            if pax_size is not None:
                size = pax_size
            if typeflag in HEADER_ONLY_TYPES:
                size = 0
            return Entry(
                index=index,
                name=_entry_name(block, pax, gnu_name),
                typeflag=typeflag.decode("latin-1"),
                pre=bytes(pre),
                size=size,
                pad=None,
                offset=start,
                linkname=pax.get("linkpath") or _decode(gnu_link or _cstr(block[157:257])),
            )

    def _trailer(self, index: int, start: int, head: bytes) -> Entry:
        """Everything from ``start`` to the end of the stream, as one raw payload.

        ``head`` was already read; it is put back in front of the rest.
        """
        self._stream = _Prepend(head, self._stream)
        self._pos = start
        self._seekable = False
        return Entry(index=index, name="", typeflag=TRAILER, pre=b"", size=0, pad=None, offset=start)


class _Prepend:
    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if self._head:
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._rest.read(n)


def _is_seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError):
        return False


_CHECKSUM_AS_SPACES = b" " * 8
_HIGH_BIT = bytes(b >> 7 for b in range(256))  # 1 for a byte over 127, else 0


def _parse_header(block: bytes) -> tuple[bytes, int] | None:
    """(typeflag, size) of a valid header block, or None where the archive's end or junk starts."""
    if len(block) < BLOCK or block == ZERO_BLOCK:
        return None
    stored = _octal(block[148:156])
    if stored is None:
        return None
    counted = block[:148] + _CHECKSUM_AS_SPACES + block[156:]
    unsigned = sum(counted)
    if stored != unsigned:  # some old tars summed signed chars: each byte over 127 counts 256 less
        if stored != unsigned - 256 * sum(counted.translate(_HIGH_BIT)):
            return None
    size = _number(block[124:136])
    if size is None or size < 0:
        return None
    return block[156:157], size


def _octal(field: bytes) -> int | None:
    text = field.replace(b"\0", b" ").strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        return None


def _number(field: bytes) -> int | None:
    if field[0] & 0x80:  # GNU base-256
        value = int.from_bytes(field[1:], "big")
        return -value if field[0] & 0x40 else value
    return _octal(field)


def pax_number(value: str | None) -> int | None:
    """A PAX record's decimal number (size, uid, gid), or None where it holds none: only ASCII
    digits, at most 20 (str.isdigit() also takes '²', which int() refuses, and int() refuses
    numbers of more than 4,300 digits)."""
    if value is None or not 0 < len(value) <= 20 or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def parse_pax(body: bytes) -> dict[str, str]:
    """The records of a PAX extended header body; parsing stops at the first malformed record."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(body[pos:space])
        except ValueError:
            break
        if length <= 0:
            break
        record = body[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _cstr(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _entry_name(block: bytes, pax: dict[str, str], gnu_name: bytes | None) -> str:
    if "path" in pax:
        return pax["path"]
    if gnu_name is not None:
        return _decode(gnu_name)
    name = _cstr(block[0:100])
    if block[257:263] == b"ustar\x00":
        prefix = _cstr(block[345:500])
        if prefix:
            name = prefix + b"/" + name
    return _decode(name)
