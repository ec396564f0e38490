"""apply's core: rebuild one layer tar from its recipe, the literal stream and the base image."""

from __future__ import annotations

import io
from typing import BinaryIO, Callable, Iterator

from deltaimg.codec import bsdiff, zstd_ref

from deltaimg.codec import varint
from deltaimg.errors import BundleFormatError, IntegrityError
from deltaimg.delta.recipe import (
    DATA_DELTA,
    DATA_LITERAL,
    DATA_PARTNER,
    DATA_REF,
    PART_DATA,
    PART_PRE,
    PRE_EDITED_CHECKSUM,
    PRE_LITERAL,
    PRE_PARTNER,
    SEGMENT_ELF,
    SEGMENT_INSIDE,
    SEGMENT_LITERAL,
    Chunk,
    RecordReader,
    decode_recipe,
    with_checksum,
    read_header,
)
from deltaimg.delta.base_content import BaseContent, BaseEntry, BaseRead
from deltaimg.delta import executable, inside
from deltaimg.delta.choice import WHOLE_OLD_MAX
from deltaimg.tar.split import BLOCK

PIECE = 1 << 20
MAX_BSDIFF_BYTES = 64 << 20  # a bsdiff record larger than this is not one deltaimg writes

Write = Callable[[bytes], object]


class LiteralReader:
    """The literal stream, decompressed one chunk at a time against its reference spans."""

    def __init__(self, payload: BinaryIO, chunks: list[Chunk], base: BaseContent) -> None:
        self._payload = payload
        self._chunks = iter(chunks)
        self._old = base
        self._buffer = b""
        self._pos = 0

    def read(self, n: int) -> bytes:
        parts = []
        while n > 0:
            if self._pos >= len(self._buffer):
                self._load_next()
            take = self._buffer[self._pos : self._pos + n]
            self._pos += len(take)
            n -= len(take)
            parts.append(take)
        return b"".join(parts)

    def copy(self, n: int, write: Write) -> None:
        while n > 0:
            piece = self.read(min(n, PIECE))
            write(piece)
            n -= len(piece)

    def _load_next(self) -> None:
        chunk = next(self._chunks, None)
        if chunk is None:
            raise IntegrityError("a layer delta needs more literal bytes than it carries: the bundle is damaged")
        frame = self._payload.read(chunk.frame_len)
        if len(frame) != chunk.frame_len:
            raise IntegrityError("a layer delta ends early: the bundle is damaged")
        prefix = b"".join(self._span(span) for span in chunk.spans)
        self._buffer = zstd_ref.decompress(frame, chunk.literal_len, prefix)
        self._pos = 0

    def _span(self, span) -> bytes:
        return self._old.read(*_byte_range(self._old, span.layer, span.index, span.part, span.start, span.length))

    def finish(self) -> None:
        if self._pos != len(self._buffer) or next(self._chunks, None) is not None:
            raise IntegrityError("a layer delta carries unused literal bytes: the bundle is damaged")
        if self._payload.read(1):
            raise IntegrityError("a layer delta has trailing bytes: the bundle is damaged")


def base_entry(base: BaseContent, coords: tuple[int, int]) -> BaseEntry:
    """The base entry a recipe names. The base was checked to be the image the bundle was made
    against, so naming an entry it lacks is the bundle's fault, not the base's."""
    layer, index = coords
    if layer >= len(base.image.layers) or index >= len(base.entries(layer)):
        raise BundleFormatError(f"a layer delta refers to entry {index} of base layer {layer}, which the "
                                "base lacks: the bundle is damaged")
    return base.entry(layer, index)


def rebuild_layer(payload: BinaryIO, base: BaseContent, write: Write) -> None:
    """Write the layer tar that ``payload`` describes; raises on any inconsistency."""
    chunks, reader = read_recipe(payload)
    literal = LiteralReader(payload, chunks, base)
    records = RecordReader(reader)
    while True:
        record = records.next()
        partner = base_entry(base, record.partner) if record.partner else None
        _write_pre(record, partner, literal, base, write)
        if record.trailer:
            literal.copy(record.size, write)
            break
        size = _write_data(record, partner, literal, base, write)
        pad_len = (-size) % BLOCK
        write(literal.read(pad_len) if record.pad_literal else bytes(pad_len))
    if not reader.at_end():
        raise BundleFormatError("layer recipe has records after its end: the bundle is damaged")
    literal.finish()


def _write_pre(record, partner: BaseEntry | None, literal: LiteralReader, base: BaseContent, write: Write) -> None:
    if record.pre_kind == PRE_LITERAL:
        literal.copy(record.pre_len, write)
        return
    assert partner is not None
    pre = base.read_pre(partner)
    if record.pre_kind == PRE_PARTNER:
        write(pre)
        return
    edited = bytearray(pre)
    for offset, length in record.edits:
        if offset + length > len(edited):
            raise BundleFormatError("a header edit runs past the header: the bundle is damaged")
        edited[offset : offset + length] = literal.read(length)
    if record.pre_kind == PRE_EDITED_CHECKSUM:
        if len(edited) < BLOCK:
            raise BundleFormatError("a header edit names a header shorter than a block: the bundle is damaged")
        edited = bytearray(with_checksum(bytes(edited)))
    write(bytes(edited))


def _write_data(record, partner: BaseEntry | None, literal: LiteralReader, base: BaseContent, write: Write) -> int:
    """Write the entry's payload and return its size."""
    if record.data_kind == DATA_LITERAL:
        literal.copy(record.size, write)
        return record.size
    if record.data_kind == DATA_REF:
        source = base_entry(base, record.ref)
        base.copy_data(source, write)
        return source.size
    assert partner is not None
    if record.data_kind == DATA_PARTNER:
        base.copy_data(partner, write)
        return partner.size
    assert record.data_kind == DATA_DELTA
    for segment in record.segments:
        if segment.base_start + segment.base_len > partner.size:
            raise BundleFormatError("a delta segment refers past its base file's end: the bundle is damaged")
        if segment.kind == SEGMENT_LITERAL:
            literal.copy(segment.target_len, write)
            continue
        if segment.kind in (SEGMENT_INSIDE, SEGMENT_ELF):
            _write_whole(segment, partner, literal, base, write)
            continue
        if max(segment.target_len, segment.base_len, *segment.bsdiff_lens) > MAX_BSDIFF_BYTES:
            raise BundleFormatError("a binary delta is larger than any deltaimg writes: the bundle is damaged")
        if not bsdiff_fits(segment.target_len, *segment.bsdiff_lens):
            raise BundleFormatError("a binary delta is larger than the bytes it makes: the bundle is damaged")
        control, diff, extra = (literal.read(n) for n in segment.bsdiff_lens)
        base_bytes = base.read_data(partner, segment.base_start, segment.base_len)
        write(bsdiff.patch(base_bytes, segment.target_len, control, diff, extra))
    return record.size


def _write_whole(segment, partner: BaseEntry, literal: LiteralReader, base: BaseContent, write: Write) -> None:
    """A file coded on its content (delta/inside.py) or under the branch transform
    (delta/executable.py): make writes either only for a whole base file of at most
    ``WHOLE_OLD_MAX`` bytes, the first with a blob at most half the file's size."""
    blob_len = segment.bsdiff_lens[0]
    cap = segment.target_len if segment.kind == SEGMENT_INSIDE else executable.blob_cap(segment.target_len)
    if segment.base_start or segment.base_len != partner.size or partner.size > WHOLE_OLD_MAX or \
            blob_len > cap or segment.target_len > MAX_BSDIFF_BYTES:
        raise BundleFormatError("a whole-file delta is larger than any deltaimg writes: the bundle is damaged")
    blob = literal.read(blob_len)
    decode = inside.decode if segment.kind == SEGMENT_INSIDE else executable.decode
    write(decode(base.read_data(partner, 0, partner.size), segment.target_len, blob))


def bsdiff_fits(target_len: int, control_len: int, diff_len: int, extra_len: int) -> bool:
    """Whether bsdiff streams are no larger than bsdiff makes for ``target_len`` bytes: at most one
    24-byte control triple per byte made (plus one), a diff stream no longer than those bytes
    (plus the run coding's few bytes), an extra stream no longer than them. So the literal bytes
    apply reads stay in proportion to the bytes it writes, which the layer's size bounds."""
    return control_len <= 24 * (target_len + 1) and diff_len <= target_len + 32 and extra_len <= target_len


def base_references(payload: BinaryIO) -> Iterator[BaseRead]:
    """What a layer delta reads of the base, from its recipe alone (the chunks are not decoded). A
    partner read for nothing comes with length 0: the decoder still looks its entry up."""
    chunks, reader = read_recipe(payload)
    for chunk in chunks:
        for span in chunk.spans:
            yield BaseRead(span.layer, span.index, span.part, span.start, span.length)
    records = RecordReader(reader)
    while True:
        record = records.next()
        if record.partner:
            yield BaseRead(*record.partner, PART_PRE, 0, 0 if record.pre_kind == PRE_LITERAL else None)
            if record.data_kind == DATA_PARTNER:
                yield BaseRead(*record.partner, PART_DATA, 0, None)
            for segment in record.segments if record.data_kind == DATA_DELTA else ():
                if segment.kind != SEGMENT_LITERAL:
                    yield BaseRead(*record.partner, PART_DATA, segment.base_start, segment.base_len)
        if record.ref and record.data_kind == DATA_REF:
            yield BaseRead(*record.ref, PART_DATA, 0, None)
        if record.trailer:
            return


def read_recipe(payload: BinaryIO) -> tuple[list[Chunk], varint.Reader]:
    """A layer delta's chunk table and its entry records, the payload left at the first chunk frame."""
    recipe_len, frame_len = read_header(payload)
    recipe = zstd_ref.decompress(payload.read(frame_len), recipe_len)
    here = payload.tell()
    frames_size = payload.seek(0, io.SEEK_END) - here
    payload.seek(here)
    return decode_recipe(recipe, frames_size)


def _byte_range(base: BaseContent, layer: int, index: int, part: int, start: int, length: int | None) -> tuple[int, int, int]:
    """Where ``length`` bytes from ``start`` of a base entry's header or payload lie in its layer."""
    offset, limit = base_entry(base, (layer, index)).part(part)
    length = limit - start if length is None else length
    if start + length > limit:
        raise BundleFormatError("a layer delta refers past a base entry's end: the bundle is damaged")
    return layer, offset + start, length
