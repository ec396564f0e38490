"""The recipe that rebuilds one layer tar: its records and their binary form.

A layer delta payload is::

    varint recipe length | varint compressed recipe length | zstd(recipe) | chunk frames...

The recipe lists the chunks of the *literal stream* (every byte the base image could not supply,
in layer order), then one record per tar entry saying where its header, payload and padding come
from. Each chunk is one zstd frame whose reference prefix is a list of spans of base content, so
headers, literals and bsdiff streams are coded in one context with the base bytes they resemble.
See docs/bundle-format.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

from deltaimg.codec import varint
from deltaimg.errors import BundleFormatError
from deltaimg.tar.split import BLOCK

RECIPE_VERSION = 1
# A recipe costs a few bytes per tar entry: 128 MiB is tens of millions of entries. Decoding it
# takes about twice its size in memory, which keeps apply within its budget whatever a bundle says.
MAX_RECIPE_BYTES = 128 * 1024 * 1024
MAX_CHUNK_BYTES = 64 * 1024 * 1024  # literal bytes in one chunk, and reference bytes per chunk
MAX_FRAME_BYTES = MAX_CHUNK_BYTES + (MAX_CHUNK_BYTES >> 8) + (1 << 16)  # zstd's worst case for a chunk
MAX_SPANS = 1 << 20
MAX_SEGMENTS = 1 << 16
MAX_EDITS = 1 << 16  # byte runs replaced in one header; more and the encoder writes the header literally

# entry record flags
PRE_LITERAL, PRE_PARTNER, PRE_EDITED, PRE_EDITED_CHECKSUM = 0, 1, 2, 3
DATA_LITERAL, DATA_PARTNER, DATA_DELTA, DATA_REF = 0, 1, 2, 3
SEGMENT_LITERAL, SEGMENT_BSDIFF, SEGMENT_INSIDE, SEGMENT_ELF = 0, 1, 2, 3  # see delta/inside.py, delta/executable.py
HAS_PARTNER = 1 << 4
PAD_LITERAL = 1 << 5
TRAILER = 1 << 6
NEXT_PARTNER = 1 << 7  # the partner is the entry after the previous record's partner

PART_PRE, PART_DATA = 0, 1


@dataclass(frozen=True, slots=True)
class Span:
    """``length`` bytes from ``start`` in the header (PART_PRE) or payload of base entry (layer, index)."""

    layer: int
    index: int
    part: int
    start: int
    length: int


@dataclass(slots=True)
class Chunk:
    literal_len: int
    frame_len: int
    spans: list[Span] = field(default_factory=list)

    @property
    def prefix_len(self) -> int:
        return sum(span.length for span in self.spans)


@dataclass
class Segment:
    """A piece of a payload coded against the partner: literally (with the partner's bytes
    ``base_start``..+``base_len`` in the zstd reference) or as bsdiff streams against those bytes."""

    kind: int
    target_len: int
    base_start: int
    base_len: int
    bsdiff_lens: tuple[int, int, int] = (0, 0, 0)  # control, diff, extra; SEGMENT_INSIDE, SEGMENT_ELF: (blob, 0, 0)


@dataclass
class Record:
    """Where one tar entry's bytes come from. Lengths of literal parts are in the literal stream."""

    pre_kind: int
    data_kind: int
    partner: tuple[int, int] | None = None
    ref: tuple[int, int] | None = None  # DATA_REF: identical content elsewhere in the base image
    pre_len: int = 0  # PRE_LITERAL
    edits: list[tuple[int, int]] = field(default_factory=list)  # PRE_EDITED*: (offset, length)
    size: int = 0  # DATA_LITERAL and DATA_DELTA: the payload size
    segments: list[Segment] = field(default_factory=list)  # DATA_DELTA, in payload order
    pad_literal: bool = False
    trailer: bool = False


class _Coords:
    """Base-entry coordinates, delta-coded per layer so runs of neighbours cost one byte."""

    def __init__(self) -> None:
        self._last: dict[int, int] = {}

    def put(self, out: bytearray, coords: tuple[int, int]) -> None:
        layer, index = coords
        varint.put(out, layer)
        varint.put_signed(out, index - self._last.get(layer, -1) - 1)
        self._last[layer] = index

    def note(self, coords: tuple[int, int]) -> None:
        """Coordinates given otherwise (NEXT_PARTNER): later ones are coded from them."""
        self._last[coords[0]] = coords[1]

    def get(self, reader: varint.Reader) -> tuple[int, int]:
        layer = reader.get()
        index = self._last.get(layer, -1) + 1 + reader.get_signed()
        if index < 0:
            raise BundleFormatError("layer recipe refers to a negative entry: the bundle is damaged")
        self._last[layer] = index
        return layer, index


def encode_recipe(chunks: list[Chunk], records: bytes) -> bytes:
    out = bytearray()
    varint.put(out, RECIPE_VERSION)
    varint.put(out, len(chunks))
    coords = _Coords()
    for chunk in chunks:
        varint.put(out, chunk.literal_len)
        varint.put(out, chunk.frame_len)
        varint.put(out, len(chunk.spans))
        for span in chunk.spans:
            coords.put(out, (span.layer, span.index))
            varint.put(out, span.part)
            varint.put(out, span.start)
            varint.put(out, span.length)
    return bytes(out) + records


class RecordWriter:
    """Appends entry records to the recipe's byte form."""

    def __init__(self) -> None:
        self.out = bytearray()
        self._coords = _Coords()
        self._last_partner: tuple[int, int] | None = None

    def add(self, r: Record) -> None:
        out = self.out
        flags = r.pre_kind | (r.data_kind << 2)
        if r.partner:
            last = self._last_partner
            flags |= NEXT_PARTNER if last and r.partner == (last[0], last[1] + 1) else HAS_PARTNER
            self._last_partner = r.partner
        flags |= PAD_LITERAL if r.pad_literal else 0
        flags |= TRAILER if r.trailer else 0
        out.append(flags)
        if flags & HAS_PARTNER:
            self._coords.put(out, r.partner)  # type: ignore[arg-type]
        elif flags & NEXT_PARTNER:
            self._coords.note(r.partner)  # type: ignore[arg-type]
        if r.pre_kind == PRE_LITERAL:
            varint.put(out, r.pre_len)
        elif r.pre_kind in (PRE_EDITED, PRE_EDITED_CHECKSUM):
            varint.put(out, len(r.edits))
            last = 0
            for offset, length in r.edits:
                varint.put(out, offset - last)
                varint.put(out, length)
                last = offset + length
        if r.data_kind == DATA_REF:
            assert r.ref is not None
            self._coords.put(out, r.ref)
        elif r.data_kind == DATA_LITERAL:
            varint.put(out, r.size)
        elif r.data_kind == DATA_DELTA:
            varint.put(out, len(r.segments))
            for segment in r.segments:
                for n in (segment.kind, segment.target_len, segment.base_start, segment.base_len):
                    varint.put(out, n)
                if segment.kind == SEGMENT_BSDIFF:
                    for n in segment.bsdiff_lens:
                        varint.put(out, n)
                elif segment.kind in (SEGMENT_INSIDE, SEGMENT_ELF):
                    varint.put(out, segment.bsdiff_lens[0])


def decode_recipe(data: bytes, frames_size: int) -> tuple[list[Chunk], varint.Reader]:
    """The chunk table, and a reader positioned at the first entry record. ``frames_size`` is what
    the payload holds after the recipe: each chunk's frame is at least a byte of it and together
    they fit in it, so the table is as long as the payload is, not as a count says."""
    reader = varint.Reader(data)
    if reader.get() != RECIPE_VERSION:
        raise BundleFormatError("layer recipe is of an unknown version: upgrade deltaimg")
    count = reader.get()
    if count > MAX_SPANS:
        raise BundleFormatError("layer recipe lists too many chunks: the bundle is damaged")
    if count > frames_size:
        raise BundleFormatError("layer recipe lists more chunks than its payload holds: the bundle is damaged")
    chunks = []
    coords = _Coords()
    spans_total = frames_total = 0
    for _ in range(count):
        literal_len, frame_len, n_spans = reader.get(), reader.get(), reader.get()
        spans_total += n_spans
        frames_total += frame_len
        if literal_len > MAX_CHUNK_BYTES or frame_len > MAX_FRAME_BYTES or spans_total > MAX_SPANS:
            raise BundleFormatError("layer recipe has an oversized chunk: the bundle is damaged")
        if not frame_len or frames_total > frames_size:
            raise BundleFormatError("layer recipe has chunk frames its payload does not hold: the bundle is damaged")
        spans = []
        for _ in range(n_spans):
            layer, index = coords.get(reader)
            part, start, length = reader.get(), reader.get(), reader.get()
            if part not in (PART_PRE, PART_DATA):
                raise BundleFormatError("layer recipe has an invalid span: the bundle is damaged")
            spans.append(Span(layer, index, part, start, length))
        chunk = Chunk(literal_len, frame_len, spans)
        if chunk.prefix_len > MAX_CHUNK_BYTES:
            raise BundleFormatError("layer recipe has an oversized reference: the bundle is damaged")
        chunks.append(chunk)
    return chunks, reader


class RecordReader:
    def __init__(self, reader: varint.Reader) -> None:
        self._r = reader
        self._coords = _Coords()
        self._last_partner: tuple[int, int] | None = None

    def next(self) -> Record:
        r = self._r
        flags = r.byte()
        record = Record(pre_kind=flags & 3, data_kind=(flags >> 2) & 3)
        if flags & HAS_PARTNER and flags & NEXT_PARTNER:
            raise BundleFormatError("layer recipe has an invalid record: the bundle is damaged")
        record.pad_literal = bool(flags & PAD_LITERAL)
        record.trailer = bool(flags & TRAILER)
        if flags & HAS_PARTNER:
            record.partner = self._coords.get(r)
        elif flags & NEXT_PARTNER:
            if self._last_partner is None:
                raise BundleFormatError("layer recipe has a partner after none: the bundle is damaged")
            record.partner = (self._last_partner[0], self._last_partner[1] + 1)
            self._coords.note(record.partner)
        if record.partner:
            self._last_partner = record.partner
        if record.pre_kind != PRE_LITERAL or record.data_kind in (DATA_PARTNER, DATA_DELTA):
            if record.partner is None:
                raise BundleFormatError("layer recipe uses a partner it does not name: the bundle is damaged")
        if record.pre_kind == PRE_LITERAL:
            record.pre_len = r.get()
            # An entry's header is whole tar blocks: so every record but the trailer writes at least
            # 512 bytes, and the work of a recipe is bounded by the layer size the writer caps (44
            # million records that write nothing took 154 s).
            if not record.trailer and (record.pre_len < BLOCK or record.pre_len % BLOCK):
                raise BundleFormatError("layer recipe has an entry header that is not whole tar blocks: the bundle "
                                        "is damaged")
        elif record.pre_kind in (PRE_EDITED, PRE_EDITED_CHECKSUM):
            count = r.get()
            if count > MAX_EDITS:
                raise BundleFormatError("layer recipe has too many header edits: the bundle is damaged")
            offset = 0
            for _ in range(count):
                offset += r.get()
                length = r.get()
                if not length:  # never written; allowed, they would let one header take any number of runs
                    raise BundleFormatError("layer recipe has an empty header edit: the bundle is damaged")
                record.edits.append((offset, length))
                offset += length
        if record.data_kind == DATA_REF:
            record.ref = self._coords.get(r)
        elif record.data_kind == DATA_LITERAL:
            record.size = r.get()
        elif record.data_kind == DATA_DELTA:
            count = r.get()
            if count > MAX_SEGMENTS:
                raise BundleFormatError("layer recipe has too many delta segments: the bundle is damaged")
            for _ in range(count):
                segment = Segment(r.get(), r.get(), r.get(), r.get())
                if segment.kind == SEGMENT_BSDIFF:
                    segment.bsdiff_lens = (r.get(), r.get(), r.get())
                elif segment.kind in (SEGMENT_INSIDE, SEGMENT_ELF):
                    segment.bsdiff_lens = (r.get(), 0, 0)
                elif segment.kind != SEGMENT_LITERAL:
                    raise BundleFormatError("layer recipe has an invalid delta segment: the bundle is damaged")
                record.segments.append(segment)
            record.size = sum(segment.target_len for segment in record.segments)
        return record


def with_checksum(header: bytes) -> bytes:
    """``header`` with the checksum of its last 512-byte block computed as every tar writer does
    (six octal digits, NUL, space): a rebuild that moves timestamps need not ship checksums."""
    block = bytearray(header[-512:])
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return header[:-512] + bytes(block)


def pack_header(recipe_len: int, frame_len: int) -> bytes:
    out = bytearray()
    varint.put(out, recipe_len)
    varint.put(out, frame_len)
    return bytes(out)


def read_header(payload: BinaryIO) -> tuple[int, int]:
    """The recipe's length and its frame's, from the start of a layer delta payload."""
    recipe_len, frame_len = varint.read(payload), varint.read(payload)
    if recipe_len > MAX_RECIPE_BYTES or frame_len > MAX_RECIPE_BYTES:
        raise BundleFormatError("layer recipe is implausibly large: the bundle is damaged")
    return recipe_len, frame_len
