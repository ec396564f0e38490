"""make's core: encode one target layer tar as a recipe against the base image.

For every tar entry of the target layer, in order:

- its header bytes come from the partner's header (same base path, or a similar one), from the
  partner's header with a few bytes edited (a rebuild that only moved timestamps), or literally;
- its payload comes from identical content anywhere in the base image (by sha256), from a bsdiff
  of the partner, or literally, with the partner in the zstd reference prefix;
- everything literal goes into one stream, cut into chunks that are zstd-compressed with the
  base bytes they resemble as reference prefix.

Memory stays bounded: payloads are held in memory only up to ``MEMORY_PAYLOAD_MAX`` (larger
ones are read again from the layer's file, or spilled: :mod:`deltaimg.delta.payloads`), a bounded
number of chunks and bsdiff jobs run at once.
"""

from __future__ import annotations

import collections
import hashlib
import io
import tempfile
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from deltaimg.codec import zstd_ref
from deltaimg.errors import ImageReadError
from deltaimg.delta.recipe import (DATA_DELTA, DATA_LITERAL, DATA_PARTNER, DATA_REF, PART_DATA, PART_PRE, PRE_EDITED,
                                   PRE_EDITED_CHECKSUM, PRE_LITERAL, PRE_PARTNER, SEGMENT_BSDIFF, SEGMENT_ELF, SEGMENT_INSIDE,
                                   SEGMENT_LITERAL, MAX_RECIPE_BYTES, Chunk, Record, RecordWriter, Segment, Span,
                                   encode_recipe, pack_header, with_checksum)
from deltaimg.delta.base_content import BaseEntry, BaseIndex, BaseRead, truncated
from deltaimg.delta.payloads import Held, hold
from deltaimg.delta.choice import WHOLE_OLD_MAX, base_region, code, edit_runs
from deltaimg.delta.inside import code_file
from deltaimg.tar.split import BLOCK, REGULAR_TYPES, TRAILER, Entry, TarSplitter

CHUNK_LITERAL = 8 << 20  # literal bytes per zstd frame
REF_BUDGET = 24 << 20  # reference bytes per zstd frame
PIECE = 1 << 20
BSDIFF_MIN = 256
SEGMENT = 6 << 20  # larger payloads are coded in segments against the partner's matching region
SEGMENT_JOBS = 2
MEMORY_PAYLOAD_MAX = WHOLE_OLD_MAX  # the payloads bsdiff may take whole
LOOKAHEAD_BYTES = 32 << 20
MAX_CHUNKS_IN_FLIGHT = 3


@dataclass
class LayerStats:
    """What the encoder did with one layer, for inspect and the benchmark."""

    entries: int = 0
    files: int = 0
    identical: int = 0
    bsdiff: int = 0
    zstd_delta: int = 0
    literal: int = 0
    headers_from_old: int = 0
    literal_bytes: int = 0
    executables: int = 0  # files coded under the branch transform (not stored: they make the bundle format 3)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Part:
    """A piece of the literal stream: bytes now, bytes later (a future), or a spilled file."""

    data: bytes | Future | Held | _Segmented
    partner: BaseEntry | None = None  # reference spans come from this entry's payload
    spans: list[Span] = field(default_factory=list)
    fallback: bytes = b""  # a bsdiff candidate's target payload, coded literally if bsdiff loses
    base_len: int = 0  # a bsdiff candidate's reference: the partner's first base_len bytes

    @property
    def held(self) -> int:
        return len(self.fallback) + self.base_len + (len(self.data) if isinstance(self.data, bytes) else 0)


@dataclass
class _Segmented:
    """A payload too large for one bsdiff, coded segment by segment when its turn comes."""

    payload: bytes | Held


class LiteralStream:
    """The literal stream, cut into chunks compressed in parallel against their reference spans."""

    def __init__(self, index: BaseIndex, out: BinaryIO, pool: Executor) -> None:
        self._index = index
        self._out = out
        self._pool = pool
        self.chunks: list[Chunk] = []
        self._buffer = bytearray()
        self._spans: list[Span] = []
        self._span_at: dict[tuple[int, int, int], int] = {}
        self._prefix_len = 0
        self._in_flight: collections.deque[tuple[Chunk, Future]] = collections.deque()

    def add(self, data: bytes, spans: list[Span]) -> None:
        if self._buffer and self._prefix_len + sum(self._growth(span) for span in spans) > REF_BUDGET:
            self._cut()  # a fresh chunk rather than bytes coded without the reference they need
        for span in spans:
            self._add_span(span)
        self._buffer += data
        if len(self._buffer) >= CHUNK_LITERAL:
            self._cut()

    def _merged(self, span: Span) -> Span | None:
        """``span`` joined with the chunk's span of the same base bytes, when they touch."""
        at = self._span_at.get((span.layer, span.index, span.part))
        if at is None:
            return None
        base = self._spans[at]
        if span.start > base.start + base.length or base.start > span.start + span.length:
            return base  # disjoint: the later piece keeps the reference it already has
        start, end = min(base.start, span.start), max(base.start + base.length, span.start + span.length)
        return Span(span.layer, span.index, span.part, start, end - start)

    def _growth(self, span: Span) -> int:
        """How many reference bytes adding ``span`` would cost this chunk."""
        merged = self._merged(span)
        if merged is None:
            return span.length
        return merged.length - self._spans[self._span_at[(span.layer, span.index, span.part)]].length

    def _add_span(self, span: Span) -> None:
        key = (span.layer, span.index, span.part)
        merged = self._merged(span)
        if merged is not None:
            at = self._span_at[key]
            grow = merged.length - self._spans[at].length
            if self._prefix_len + grow <= REF_BUDGET:
                self._spans[at] = merged
                self._prefix_len += grow
            return
        if span.length and self._prefix_len + span.length <= REF_BUDGET:
            self._span_at[key] = len(self._spans)
            self._spans.append(span)
            self._prefix_len += span.length

    def _cut(self) -> None:
        if not self._buffer:
            return
        chunk = Chunk(literal_len=len(self._buffer), frame_len=0, spans=self._spans)
        prefix = b"".join(self._read_span(s) for s in chunk.spans)
        future = self._pool.submit(zstd_ref.compress, bytes(self._buffer), prefix)
        self._in_flight.append((chunk, future))
        self.chunks.append(chunk)
        self._buffer = bytearray()
        self._spans, self._span_at, self._prefix_len = [], {}, 0
        while len(self._in_flight) > MAX_CHUNKS_IN_FLIGHT:
            self._write_oldest()

    def _read_span(self, span: Span) -> bytes:
        offset, _ = self._index.content.entry(span.layer, span.index).part(span.part)
        return self._index.content.read(span.layer, offset + span.start, span.length)

    def _write_oldest(self) -> None:
        chunk, future = self._in_flight.popleft()
        frame = future.result()
        chunk.frame_len = len(frame)
        self._out.write(frame)

    def close(self) -> list[Chunk]:
        self._cut()
        while self._in_flight:
            self._write_oldest()
        return self.chunks


def whole(entry: BaseEntry, part: int) -> Span:
    return Span(entry.layer, entry.index, part, 0, entry.part(part)[1])


def _header_edits(base: bytes, target: bytes) -> tuple[int, list[tuple[int, int]] | None]:
    """How to edit ``base`` into ``target``, leaving out the checksum when the applier can compute it."""
    if len(target) >= BLOCK and len(base) == len(target) and with_checksum(target) == target:
        field = slice(len(target) - BLOCK + 148, len(target) - BLOCK + 156)
        masked = target[: field.start] + base[field] + target[field.stop :]
        runs = edit_runs(base, masked)
        if runs is not None:
            return PRE_EDITED_CHECKSUM, runs
    return PRE_EDITED, edit_runs(base, target)


class LayerEncoder:
    """Encodes one target layer; see the module docstring."""

    def __init__(self, index: BaseIndex, pool: Executor, workdir: str, home: int | None, name: str,
                 local: tuple[str, int, int] | None = None) -> None:
        """``home``: the base layer this one replaces (:meth:`BaseIndex.home`); ``name``: it in messages;
        ``local``: where the layer's bytes sit in a file, if they do (:attr:`Layer.local`)."""
        self._local = local
        self._name = name
        self._index = index
        self._home = index.home(home)
        self._pool = pool
        self._workdir = workdir
        self.stats = LayerStats()
        self._held = 0  # payload bytes waiting in the pending queue

    def encode(self, layer_stream: BinaryIO, out: BinaryIO) -> LayerStats:
        """Write the layer's delta payload to ``out``."""
        with tempfile.TemporaryFile(dir=self._workdir) as frames:
            literal = LiteralStream(self._index, frames, self._pool)
            records = RecordWriter()
            pending: collections.deque[tuple[Record, list[_Part]]] = collections.deque()
            splitter = TarSplitter(layer_stream)
            try:
                for entry in splitter:
                    self.stats.entries += 1
                    if entry.typeflag == TRAILER:
                        self._drain(pending, literal, records, everything=True)
                        self._emit_trailer(splitter, entry, literal, records)
                        break
                    record, parts = self._plan(splitter, entry)
                    pending.append((record, parts))
                    self._held += sum(p.held for p in parts)
                    self._drain(pending, literal, records, everything=False)
            except EOFError:
                raise truncated(f"{self._name} of the target image") from None
            chunks = literal.close()
            recipe = encode_recipe(chunks, bytes(records.out))
            if len(recipe) > MAX_RECIPE_BYTES:  # apply would refuse it: say so now, not on the edge host
                raise ImageReadError(f"a layer of the target image has {self.stats.entries} entries, more than "
                                     "a bundle can describe; split it into several layers")
            frame = zstd_ref.compress(recipe)
            out.write(pack_header(len(recipe), len(frame)))
            out.write(frame)
            frames.seek(0)
            while block := frames.read(PIECE):
                out.write(block)
        return self.stats

    # -- deciding ---------------------------------------------------------------------------
    def _plan(self, splitter: TarSplitter, entry: Entry) -> tuple[Record, list[_Part]]:
        regular = entry.typeflag in REGULAR_TYPES
        partner = self._index.partner(entry.name, entry.size, regular, self._home)
        record = Record(pre_kind=PRE_LITERAL, data_kind=DATA_LITERAL)
        parts: list[_Part] = []
        if partner is not None:
            record.partner = (partner.layer, partner.index)
        self._plan_pre(entry, partner, record, parts)
        if entry.size:
            self._plan_data(splitter, entry, partner, record, parts)
        elif partner is not None and not partner.size:
            record.data_kind = DATA_PARTNER  # no bytes either way; so runs of unchanged entries read alike
        splitter.finish_entry()
        if entry.pad is not None:
            record.pad_literal = True
            parts.append(_Part(entry.pad))
        return record, parts

    def _plan_pre(self, entry: Entry, partner: BaseEntry | None, record: Record, parts: list[_Part]) -> None:
        if partner is not None:
            base_pre = self._index.content.read_pre(partner)
            if base_pre == entry.pre:
                record.pre_kind = PRE_PARTNER
                self.stats.headers_from_old += 1
                return
            kind, runs = _header_edits(base_pre, entry.pre)
            if runs is not None:
                record.pre_kind, record.edits = kind, runs
                parts.append(_Part(b"".join(entry.pre[o : o + n] for o, n in runs)))
                self.stats.headers_from_old += 1
                return
        record.pre_len = len(entry.pre)
        parts.append(_Part(entry.pre, spans=[whole(partner, PART_PRE)] if partner else []))

    def _plan_data(self, splitter: TarSplitter, entry: Entry, partner: BaseEntry | None, record: Record, parts: list[_Part]) -> None:
        self.stats.files += 1
        digest = hashlib.sha256()
        if entry.size <= MEMORY_PAYLOAD_MAX:
            payload: bytes | Held = b"".join(splitter.payload_chunks())
            digest.update(payload)  # type: ignore[arg-type]
        else:
            payload = hold(splitter, entry, digest, self._workdir, self._local)
        same = _same_content(self._index, entry, digest.digest())
        if same is not None:
            self.stats.identical += 1
            if partner is not None and (same.layer, same.index) == (partner.layer, partner.index):
                record.data_kind = DATA_PARTNER
            else:
                record.data_kind, record.ref = DATA_REF, (same.layer, same.index)
            _discard(payload)
            return
        record.size = entry.size
        usable = _usable(partner)
        if usable is None or entry.size < BSDIFF_MIN:
            self.stats.literal += 1
            parts.append(_Part(payload, partner=usable))
            return
        record.data_kind = DATA_DELTA
        if isinstance(payload, bytes) and usable.size <= WHOLE_OLD_MAX:
            base = self._index.content.read_data(usable)
            job = self._pool.submit(code_file, base, payload)
            parts.append(_Part(job, partner=usable, fallback=payload, base_len=usable.size))
        else:
            parts.append(_Part(_Segmented(payload), partner=usable))

    # -- emitting, in layer order -----------------------------------------------------------
    def _drain(self, pending, literal: LiteralStream, records: RecordWriter, everything: bool) -> None:
        while pending:
            record, parts = pending[0]
            waiting = any(isinstance(p.data, Future) and not p.data.done() for p in parts)
            if waiting and not everything and self._held < LOOKAHEAD_BYTES and len(pending) < 4096:
                return
            pending.popleft()
            self._held -= sum(p.held for p in parts)
            for part in parts:
                self._emit_part(record, part, literal)
            records.add(record)

    def _emit_part(self, record: Record, part: _Part, literal: LiteralStream) -> None:
        data = part.data
        if isinstance(data, Future):
            assert part.partner is not None
            self._emit_pieces(record, part.partner, part.fallback, data, literal)
        elif isinstance(data, _Segmented):
            assert part.partner is not None
            self._emit_segmented(record, part.partner, data.payload, literal)
        elif isinstance(data, Held):
            self._emit_held(data, literal)
        else:
            spans = list(part.spans)
            if part.partner is not None:
                spans.append(whole(part.partner, PART_DATA))
            self._add_literal(data, spans, literal)
        if record.data_kind == DATA_DELTA and part.partner is not None:
            if any(segment.kind == SEGMENT_BSDIFF for segment in record.segments):
                self.stats.bsdiff += 1
            else:
                self.stats.zstd_delta += 1

    def _emit_pieces(self, record: Record, partner: BaseEntry, target: bytes, job: Future, literal: LiteralStream) -> None:
        """One segment per piece of ``target`` that :func:`code` made: bsdiff streams or literal bytes."""
        for piece in job.result():
            if piece.inside is not None:  # the whole file, coded on its content
                record.segments.append(Segment(SEGMENT_INSIDE, piece.length, 0, piece.base_len, (len(piece.inside), 0, 0)))
                self._add_literal(piece.inside, [], literal)
                continue
            if piece.executable is not None:  # the whole file, coded under the branch transform
                record.segments.append(Segment(SEGMENT_ELF, piece.length, 0, piece.base_len,
                                               (len(piece.executable), 0, 0)))
                self._add_literal(piece.executable, [Span(partner.layer, partner.index, PART_DATA, 0, piece.base_len)],
                                  literal)
                self.stats.executables += 1
                continue
            span = Span(partner.layer, partner.index, PART_DATA, piece.base_start, piece.base_len)
            if (streams := piece.streams) is None:
                record.segments.append(Segment(SEGMENT_LITERAL, piece.length, piece.base_start, piece.base_len))
                self._add_literal(target[piece.start : piece.start + piece.length], [span], literal)
            else:
                lens = (len(streams[0]), len(streams[1]), len(streams[2]))
                record.segments.append(Segment(SEGMENT_BSDIFF, piece.length, piece.base_start, piece.base_len, lens))
                self._add_literal(b"".join(streams), [span] if piece.as_reference else [], literal)

    def _emit_segmented(self, record: Record, partner: BaseEntry, payload: bytes | Held, literal: LiteralStream) -> None:
        """Segments of a large payload, bsdiffed in parallel a few at a time, emitted in order."""
        window: collections.deque[tuple[bytes, Future]] = collections.deque()
        source = io.BytesIO(payload) if isinstance(payload, bytes) else payload.open()
        with source:
            for start in range(0, record.size, SEGMENT):
                target = source.read(SEGMENT)
                lo, hi = base_region(partner.size, start, start + len(target), record.size)
                base = self._index.content.read_data(partner, lo, hi - lo)
                aligned = int(start * partner.size / record.size) - lo  # where ``target`` lines up in ``base``
                window.append((target, self._pool.submit(code, base, lo, target, aligned)))
                if len(window) >= SEGMENT_JOBS:
                    self._emit_pieces(record, partner, *window.popleft(), literal)
            while window:
                self._emit_pieces(record, partner, *window.popleft(), literal)
        _discard(payload)

    def _add_literal(self, data: bytes, spans: list[Span], literal: LiteralStream) -> None:
        self.stats.literal_bytes += len(data)
        literal.add(data, spans)

    def _emit_held(self, held: Held, literal: LiteralStream) -> None:
        with held.open() as source:
            while piece := source.read(PIECE):
                self._add_literal(piece, [], literal)
        held.discard()

    def _emit_trailer(self, splitter: TarSplitter, entry: Entry, literal: LiteralStream, records: RecordWriter) -> None:
        for chunk in splitter.payload_chunks():
            self._add_literal(chunk, [], literal)
        records.add(Record(pre_kind=PRE_LITERAL, data_kind=DATA_LITERAL, size=entry.size, trailer=True))


def base_reads(index: BaseIndex, layer_stream: BinaryIO, home: int | None, name: str) -> Iterator[BaseRead]:
    """What :meth:`LayerEncoder.encode` reads of the base image to encode this target layer, by the
    same rules, as :meth:`BaseContent.fetch_entries` references: each partner's header, and the
    partner's payload unless the target payload is found whole in the base image."""
    splitter = TarSplitter(layer_stream)
    paths = index.home(home)
    try:
        for entry in splitter:
            if entry.typeflag == TRAILER:
                return
            partner = index.partner(entry.name, entry.size, entry.typeflag in REGULAR_TYPES, paths)
            if partner is None:
                continue
            yield BaseRead(partner.layer, partner.index, PART_PRE, 0, None)
            usable = _usable(partner)
            if entry.size and usable is not None:
                digest = hashlib.sha256()
                for chunk in splitter.payload_chunks():
                    digest.update(chunk)
                if _same_content(index, entry, digest.digest()) is None:
                    yield BaseRead(usable.layer, usable.index, PART_DATA, 0, None)
    except EOFError:
        raise truncated(f"{name} of the target image") from None


def _usable(partner: BaseEntry | None) -> BaseEntry | None:
    """The partner, if its payload can be a delta's reference."""
    return partner if partner is not None and partner.is_regular and partner.size else None


def _same_content(index: BaseIndex, entry: Entry, digest: bytes) -> BaseEntry | None:
    """A base file with exactly this (regular) entry's payload."""
    same = index.by_digest.get(digest) if entry.is_file else None
    return same if same is not None and same.size == entry.size else None


def _discard(payload: bytes | Held) -> None:
    if isinstance(payload, Held):
        payload.discard()
