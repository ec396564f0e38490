"""Deltas inside compressed files: a changed .deb, .gz or .xz coded on its content.

A small change of content changes every byte of a compressed file, so the codecs see noise. When
both versions come apart (``codec/packed``) and the target's compression is reproduced exactly,
the target's content is coded as one zstd frame against the base's content, with the pieces of
both. Apply takes the base file apart as recorded, decodes the content, compresses it again; the
layer's diff_id check proves the result. The segment's bytes in the literal stream (the *blob*)::

    varint base piece count | pieces | varint target piece count | pieces | zstd frame

each piece four varints: kind, level, stored length, content length. ``DELTAIMG_INSIDE=0``
switches the coding off (make only; apply always reads it).
"""

from __future__ import annotations

import os

from deltaimg.codec import packed, varint, xz, zstd_ref
from deltaimg.delta import executable
from deltaimg.delta.choice import Piece
from deltaimg.errors import BundleFormatError, IntegrityError

MAX_PIECES = 1 << 12
WORTH = 2  # coded inside only when that is at most half the file's size


def enabled() -> bool:
    return os.environ.get("DELTAIMG_INSIDE", "1") != "0"


def encode(base: bytes, target: bytes) -> bytes | None:
    """The blob that rebuilds ``target`` from ``base``; None when the files do not come apart, the
    target's compression is not reproduced, or the blob would not pay."""
    if not enabled() or not target.startswith((packed.AR_MAGIC, packed.GZIP_MAGIC, packed.XZ_MAGIC)):
        return None
    try:
        target_pieces, target_content = packed.split_target(target)
        base_pieces, base_content = packed.split_base(base)
    except packed.NotPacked:
        return None
    if packed.pack(target_content, target_pieces) != target:  # checked piece by piece; this checks the whole
        return None
    out = bytearray()
    for pieces in (base_pieces, target_pieces):
        varint.put(out, len(pieces))
        for piece in pieces:
            for n in (piece.kind, piece.level, piece.stored_len, piece.content_len):
                varint.put(out, n)
    out += zstd_ref.compress(target_content, prefix=base_content)
    return bytes(out) if len(out) * WORTH <= len(target) else None


def code_file(base: bytes, target: bytes) -> list[Piece]:
    """``target`` coded against the whole ``base``: inside when that pays, else by
    :func:`executable.code_file` (under the branch transform, or by :func:`choice.code`)."""
    blob = encode(base, target)
    if blob is None:
        return executable.code_file(base, target)
    return [Piece(0, len(target), 0, len(base), None, as_reference=False, inside=blob)]


def _pieces(reader: varint.Reader, size: int) -> list[packed.Piece]:
    """A piece list for a file of ``size`` bytes, every size checked against the file's."""
    count = reader.get()
    if count > MAX_PIECES:
        raise BundleFormatError("a compressed file's delta lists too many pieces: the bundle is damaged")
    pieces = [packed.Piece(reader.get(), reader.get(), reader.get(), reader.get()) for _ in range(count)]
    content = sum(piece.content_len for piece in pieces)
    if content > packed.content_cap(size):
        raise BundleFormatError(f"a compressed file's delta declares {content} bytes of content for a file of "
                                f"{size} bytes, more than deltaimg ever codes: the bundle is damaged")
    if sum(piece.stored_len for piece in pieces) != size or any(
            piece.kind not in (packed.RAW, packed.DEFLATE, packed.XZ_MT) or piece.level > 9 for piece in pieces):
        raise BundleFormatError("a compressed file's delta has an invalid piece: the bundle is damaged")
    return pieces


def decode(base: bytes, target_len: int, blob: bytes) -> bytes:
    """The target file that ``blob`` rebuilds from ``base``."""
    reader = varint.Reader(blob)
    base_pieces = _pieces(reader, len(base))
    target_pieces = _pieces(reader, target_len)
    if any(piece.kind == packed.XZ_MT for piece in target_pieces) and not xz.available():
        raise BundleFormatError("this bundle needs liblzma.so.5 to rebuild a compressed file; install liblzma5")
    try:
        base_content = packed.unpack(base, base_pieces)
    except packed.NotPacked as exc:
        raise IntegrityError(f"a base file does not decompress as the bundle says ({exc}): the bundle is damaged") from None
    content = zstd_ref.decompress(blob[reader.pos:], sum(piece.content_len for piece in target_pieces), base_content)
    target = packed.pack(bytes(content), target_pieces)
    if len(target) != target_len:
        raise IntegrityError("a compressed file rebuilds to another size than recorded: the bundle is damaged")
    return target
