"""Compressed files taken apart into their content and put back together byte for byte.

A file is a list of pieces: raw bytes (an ar member header, a gzip header or trailer) and
compressed streams (raw deflate as zlib writes it at a level, xz as liblzma's multi-threaded
encoder writes it at a preset). Concatenating the pieces' contents gives the file's *content*;
:func:`pack` compresses each piece's content again. Supported files: gzip (one member), xz (one
stream) and ar archives (.deb) whose members are either.

:func:`split_target` only reports a compressed piece when compressing its content again gives its
bytes exactly; :func:`split_base` only needs the pieces to decompress. Content is capped at
``MAX_CONTENT`` bytes and ``MAX_RATIO`` times the file's size.
"""

from __future__ import annotations

import lzma
import zlib
from dataclasses import dataclass
from typing import Iterator

from deltaimg.codec import xz

RAW, DEFLATE, XZ_MT = 0, 1, 2
MAX_CONTENT = 64 << 20
MAX_RATIO = 64
PIECE = 1 << 20
DEFLATE_LEVELS = (9, 6, 1, 2, 3, 4, 5, 7, 8)
XZ_PRESETS = (6, 9, 0, 1, 2, 3, 4, 5, 7, 8)
AR_MAGIC = b"!<arch>\n"
GZIP_MAGIC = b"\x1f\x8b\x08"
XZ_MAGIC = b"\xfd7zXZ\x00"


class NotPacked(Exception):
    """The bytes are not a file this module can take apart (or put back together)."""


@dataclass(frozen=True)
class Piece:
    kind: int
    level: int  # the deflate level or xz preset; 0 for raw bytes
    stored_len: int
    content_len: int


def content_cap(size: int) -> int:
    return min(MAX_CONTENT, MAX_RATIO * size + PIECE)


def split_target(data: bytes) -> tuple[list[Piece], bytes]:
    """The pieces of ``data`` and its content, every compressed piece verified to recompress exactly."""
    return _split(data, verify=True)


def split_base(data: bytes) -> tuple[list[Piece], bytes]:
    return _split(data, verify=False)


def _split(data: bytes, verify: bool) -> tuple[list[Piece], bytes]:
    pieces: list[tuple[Piece, bytes]] = []
    cap = content_cap(len(data))
    if data.startswith(AR_MAGIC):
        pieces = list(_ar(data, verify, cap))
    else:
        pieces = _streams(data, verify, cap)
    if not any(piece.kind != RAW for piece, _ in pieces):
        raise NotPacked("nothing compressed")
    content = b"".join(c for _, c in pieces)
    if len(content) > cap:
        raise NotPacked("too much content")
    return [piece for piece, _ in pieces], content


def _ar(data: bytes, verify: bool, cap: int) -> Iterator[tuple[Piece, bytes]]:
    yield Piece(RAW, 0, len(AR_MAGIC), len(AR_MAGIC)), AR_MAGIC
    at = len(AR_MAGIC)
    while at < len(data):
        header = data[at : at + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise NotPacked("not an ar archive")
        try:
            size = int(header[48:58])
        except ValueError:
            raise NotPacked("not an ar archive") from None
        member = data[at + 60 : at + 60 + size]
        if len(member) != size or size < 0:
            raise NotPacked("truncated ar archive")
        yield Piece(RAW, 0, 60, 60), header
        try:
            yield from _streams(member, verify, cap)
        except NotPacked:
            yield Piece(RAW, 0, size, size), member
        at += 60 + size
        if size % 2 and at < len(data):
            yield Piece(RAW, 0, 1, 1), data[at : at + 1]
            at += 1


def _streams(data: bytes, verify: bool, cap: int) -> list[tuple[Piece, bytes]]:
    """The pieces of one compressed stream: an xz stream, or a gzip member's header, deflate
    stream and trailer. Computed whole before any is returned, so a failure leaves none behind."""
    if data.startswith(XZ_MAGIC):
        content = _unxz(data, cap)
        preset = _xz_preset(data, content) if verify else 0
        return [(Piece(XZ_MT, preset, len(data), len(content)), content)]
    if data.startswith(GZIP_MAGIC):
        return _gzip(data, verify, cap)
    raise NotPacked("not a compressed stream")


def _unxz(data: bytes, cap: int) -> bytes:
    decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    try:
        content = decoder.decompress(data, max_length=cap + 1)
    except lzma.LZMAError:
        raise NotPacked("not xz") from None
    if len(content) > cap or not decoder.eof or decoder.unused_data:
        raise NotPacked("xz stream too large or not alone")
    return content


def _xz_preset(data: bytes, content: bytes) -> int:
    if not xz.available():
        raise NotPacked("no liblzma")
    for preset in XZ_PRESETS:
        if _same_stream(xz.compress_mt(_pieces(content), preset), data):
            return preset
    raise NotPacked("xz stream not reproducible")


def _same_stream(produced: Iterator[bytes], expected: bytes) -> bool:
    """Whether ``produced`` yields exactly ``expected``, stopping at the first difference."""
    at = 0
    for block in produced:
        if expected[at : at + len(block)] != block:
            return False
        at += len(block)
    return at == len(expected)


def _pieces(content: bytes) -> Iterator[bytes]:
    for at in range(0, len(content), PIECE):
        yield content[at : at + PIECE]


def _deflate(content: bytes, level: int) -> Iterator[bytes]:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
    for piece in _pieces(content):
        yield compressor.compress(piece)
    yield compressor.flush()


def gzip_parts(data: bytes) -> tuple[int, int]:
    """Where a gzip member's deflate stream starts and ends."""
    if not data.startswith(GZIP_MAGIC) or len(data) < 18:
        raise NotPacked("not gzip")
    flags, at = data[3], 10
    if flags & 0xE0:
        raise NotPacked("reserved gzip flags")
    if flags & 4:
        at += 2 + int.from_bytes(data[at : at + 2], "little")
    for bit in (8, 16):
        if flags & bit:
            at = data.find(b"\0", at) + 1
            if not at:
                raise NotPacked("bad gzip header")
    if flags & 2:
        at += 2
    return at, len(data) - 8


def _gzip(data: bytes, verify: bool, cap: int) -> list[tuple[Piece, bytes]]:
    start, end = gzip_parts(data)
    decoder = zlib.decompressobj(-15)
    try:
        content = decoder.decompress(data[start:end], cap + 1)
    except zlib.error:
        raise NotPacked("not deflate") from None
    if len(content) > cap or not decoder.eof or decoder.unused_data or decoder.unconsumed_tail:
        raise NotPacked("deflate stream too large or not alone")
    level = 0
    if verify:
        level = next((lv for lv in DEFLATE_LEVELS if _same_stream(_deflate(content, lv), data[start:end])), 0)
        if not level:
            raise NotPacked("deflate stream not reproducible")
    return [(Piece(RAW, 0, start, start), data[:start]), (Piece(DEFLATE, level, end - start, len(content)), content),
            (Piece(RAW, 0, 8, 8), data[end:])]


def unpack(data: bytes, pieces: list[Piece]) -> bytes:
    """The content of ``data`` taken apart as ``pieces`` say (a base file, from a bundle's record)."""
    out, at = [], 0
    for piece in pieces:
        stored = data[at : at + piece.stored_len]
        at += piece.stored_len
        if piece.kind == RAW:
            content = stored
        elif piece.kind == XZ_MT:
            content = _unxz(stored, piece.content_len)
        else:
            decoder = zlib.decompressobj(-15)
            try:
                content = decoder.decompress(stored, piece.content_len + 1)
            except zlib.error:
                raise NotPacked("a deflate stream does not decode") from None
        if len(content) != piece.content_len:
            raise NotPacked("a piece decodes to another size than recorded")
        out.append(content)
    if at != len(data):
        raise NotPacked("the pieces do not cover the file")
    return b"".join(out)


def pack(content: bytes, pieces: list[Piece]) -> bytes:
    """The file whose ``content`` was taken apart as ``pieces``."""
    out, at = [], 0
    for piece in pieces:
        part = content[at : at + piece.content_len]
        at += piece.content_len
        if piece.kind == RAW:
            out.append(part)
        elif piece.kind == XZ_MT:
            out.extend(xz.compress_mt(_pieces(part), piece.level))
        else:
            out.extend(_deflate(part, piece.level))
    return b"".join(out)
