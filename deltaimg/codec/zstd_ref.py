"""zstd with a reference: a frame that may refer back to a prefix (``zstd --patch-from``) or to a
raw-content dictionary, and decoding that refuses output beyond what the caller expects."""

from __future__ import annotations

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
