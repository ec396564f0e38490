"""Delta codecs: zstd with a reference prefix (``--patch-from``), and bsdiff's transform.

bsdiff4's patch format wraps its three streams (control, diff, extra) in bz2, which costs over
100 bytes per file and cannot share context between files. deltaimg takes the three raw streams
from ``bsdiff4.core`` instead and feeds them into the layer's zstd stream, so they are entropy
coded in one context with everything else.
"""

from __future__ import annotations

import re
from typing import Iterator

import bsdiff4.core

from deltaimg import varint
from deltaimg.errors import IntegrityError
from deltaimg.zstdlib import zstd

LEVEL = 19
MIN_WINDOW_LOG = 20
MAX_WINDOW_LOG = 30
MIN_PREFIX = 8
DECODE_PIECE = 1 << 20


def window_log(total: int) -> int:
    """A window that covers the reference prefix and the data together."""
    return max(MIN_WINDOW_LOG, min(MAX_WINDOW_LOG, max(total, 1).bit_length() + 1))


def compress(data: bytes, prefix: bytes = b"", level: int = LEVEL, dictionary: bytes = b"") -> bytes:
    """One zstd frame of ``data``, which may refer back to ``prefix`` (as ``zstd --patch-from``) or
    to the raw-content ``dictionary`` (as ``zstd -D``; the frame names no dictionary ID)."""
    P = zstd.CompressionParameter
    options = {
        P.compression_level: level,
        P.window_log: window_log(len(prefix) + len(data)),
        P.enable_long_distance_matching: 1,
        P.checksum_flag: 0,
        P.content_size_flag: 1,
        P.dict_id_flag: 0,
    }
    compressor = zstd.ZstdCompressor(options=options, zstd_dict=_reference(prefix, dictionary))
    return compressor.compress(data, mode=zstd.ZstdCompressor.FLUSH_FRAME)


def _reference(prefix: bytes, dictionary: bytes = b""):
    """The prefix, or the raw-content dictionary (one at most). zstd takes no reference shorter
    than 8 bytes; both sides then simply use none."""
    if dictionary:
        assert not prefix and len(dictionary) >= MIN_PREFIX
        return zstd.ZstdDict(dictionary, is_raw=True)
    return zstd.ZstdDict(prefix, is_raw=True).as_prefix if len(prefix) >= MIN_PREFIX else None


def decompress(frame: bytes, expected_size: int, prefix: bytes = b"") -> bytearray:
    """Inverse of :func:`compress`; refuses output beyond ``expected_size``.

    Decoded in pieces into one buffer: peak memory is about twice ``expected_size`` (zstd's
    window and the result), not three times (the binding's one-shot call also joins its blocks).
    """
    data, whole = _decode(frame, expected_size, prefix)
    if len(data) != expected_size or not whole:
        raise IntegrityError(
            f"a compressed block decodes to {len(data)} bytes, not the {expected_size} recorded"
        )
    return data


def decompress_at_most(frame: bytes, limit: int, prefix: bytes = b"", dictionary: bytes = b"") -> bytearray:
    """One whole zstd frame of unknown size decoded, refused as soon as it exceeds ``limit``."""
    data, whole = _decode(frame, limit, prefix, dictionary)
    if len(data) > limit:
        raise IntegrityError(f"a compressed block decodes to more than the {limit} bytes allowed")
    if not whole:
        raise IntegrityError("a compressed block is cut short or followed by other bytes")
    return data


def _decode(frame: bytes, limit: int, prefix: bytes, dictionary: bytes = b"") -> tuple[bytearray, bool]:
    """At most ``limit`` + 1 bytes of ``frame``, and whether it was exactly one whole frame."""
    options = {zstd.DecompressionParameter.window_log_max: window_log(len(prefix) + limit)}
    data = bytearray()
    try:
        decompressor = zstd.ZstdDecompressor(zstd_dict=_reference(prefix, dictionary), options=options)
        pending = frame
        while not decompressor.eof and len(data) <= limit:
            piece = decompressor.decompress(pending, max_length=min(DECODE_PIECE, limit + 1 - len(data)))
            pending = b""
            if not piece and decompressor.needs_input:
                break  # the frame ends early
            data += piece
    except zstd.ZstdError as exc:
        raise IntegrityError(f"a compressed block does not decode ({exc})") from None
    return data, decompressor.eof and not decompressor.unused_data


def bsdiff(old: bytes, new: bytes) -> tuple[bytes, bytes, bytes]:
    """bsdiff's (control, diff, extra) streams, uncompressed, with the diff stream made sparse."""
    control, diff, extra = bsdiff4.core.diff(old, new)
    return control, sparse_encode(diff), extra


def bspatch(old: bytes, new_size: int, control: bytes, sparse_diff: bytes, extra: bytes) -> bytes:
    diff = sparse_decode(sparse_diff, limit=new_size)
    try:
        return bsdiff4.core.patch(old, new_size, control, diff, extra)
    except Exception as exc:  # bsdiff4.core raises bare ValueError/MemoryError on bad input
        raise IntegrityError(f"a binary delta does not apply ({exc})") from None


_NONZERO_RUN = re.compile(rb"[^\x00]+(?:\x00{1,3}[^\x00]+)*")


def nonzero_runs(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of the runs of non-zero bytes, runs less than 4 zeros apart merged."""
    for match in _NONZERO_RUN.finditer(data):
        yield match.start(), match.end()


def sparse_encode(diff: bytes) -> bytes:
    """bsdiff's diff stream is mostly zeros: code it as (zeros, length, bytes) runs.

    zstd alone spends a few bytes per 128 KiB block even on zeros; runs cost nothing per block.
    """
    out = bytearray()
    last = 0
    for start, end in nonzero_runs(diff):
        varint.put(out, start - last)
        varint.put(out, end - start)
        out += diff[start:end]
        last = end
    varint.put(out, len(diff) - last)
    return bytes(out)


def sparse_decode(data: bytes, limit: int) -> bytes:
    reader = varint.Reader(data)
    out = bytearray()
    while True:
        zeros = reader.get()
        if len(out) + zeros > limit:
            raise IntegrityError("a binary delta is larger than its file: the bundle is damaged")
        out += bytes(zeros)
        if reader.at_end():
            return bytes(out)
        length = reader.get()
        if len(out) + length > limit:
            raise IntegrityError("a binary delta is larger than its file: the bundle is damaged")
        out += reader.take(length)
