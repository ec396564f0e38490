"""xz streams as liblzma's multi-threaded encoder writes them, through ctypes.

dpkg-deb compresses a package's members with ``lzma_stream_encoder_mt`` (lib/dpkg/compress.c:
the preset, CRC64, block size 0, which is three times the preset's dictionary). Its output is
independent of the thread count but differs from the single-threaded encoder Python's ``lzma``
module binds: every block header records its sizes. So reproducing a .deb's xz members needs
liblzma itself. ``liblzma.so.5`` is on every Debian host; where it is missing, make codes no file
this way and apply says which library a bundle needs (``available``, ``LibraryMissing``).
"""

from __future__ import annotations

import ctypes
from typing import Iterable, Iterator

LZMA_OK, LZMA_STREAM_END = 0, 1
LZMA_RUN, LZMA_FINISH = 0, 3
LZMA_CHECK_CRC64 = 4
LZMA_PRESET_EXTREME = 0x80000000
OUT_PIECE = 1 << 20
THREADS = 1  # the output does not depend on it; one keeps make's and apply's CPU budget


class LibraryMissing(Exception):
    """liblzma.so.5 cannot be loaded on this host."""


class _Stream(ctypes.Structure):
    _fields_ = [
        ("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_size_t), ("total_in", ctypes.c_uint64),
        ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_size_t), ("total_out", ctypes.c_uint64),
        ("allocator", ctypes.c_void_p), ("internal", ctypes.c_void_p),
        ("reserved_ptr", ctypes.c_void_p * 4),
        ("seek_pos", ctypes.c_uint64), ("reserved_int2", ctypes.c_uint64),
        ("reserved_int3", ctypes.c_size_t), ("reserved_int4", ctypes.c_size_t),
        ("reserved_enum", ctypes.c_int * 2),
    ]


class _MT(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint32), ("threads", ctypes.c_uint32), ("block_size", ctypes.c_uint64),
        ("timeout", ctypes.c_uint32), ("preset", ctypes.c_uint32), ("filters", ctypes.c_void_p),
        ("check", ctypes.c_int), ("reserved_enum", ctypes.c_int * 3), ("reserved_int", ctypes.c_uint32 * 4),
        ("memlimit_threading", ctypes.c_uint64), ("memlimit_stop", ctypes.c_uint64),
        ("reserved_int78", ctypes.c_uint64 * 2), ("reserved_ptr", ctypes.c_void_p * 4),
    ]


_library: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _library
    if _library is None:
        try:
            lib = ctypes.CDLL("liblzma.so.5")
            lib.lzma_stream_encoder_mt.argtypes = [ctypes.POINTER(_Stream), ctypes.POINTER(_MT)]
            lib.lzma_code.argtypes = [ctypes.POINTER(_Stream), ctypes.c_int]
            lib.lzma_end.argtypes = [ctypes.POINTER(_Stream)]
        except (OSError, AttributeError):
            raise LibraryMissing("liblzma.so.5") from None
        _library = lib
    return _library


def available() -> bool:
    try:
        _lib()
    except LibraryMissing:
        return False
    return True


def compress_mt(pieces: Iterable[bytes], preset: int, extreme: bool = False) -> Iterator[bytes]:
    """The xz stream of the concatenated ``pieces`` as dpkg-deb writes it, yielded as it comes."""
    lib = _lib()
    stream = _Stream()
    options = _MT(threads=THREADS, preset=preset | (LZMA_PRESET_EXTREME if extreme else 0), check=LZMA_CHECK_CRC64)
    if lib.lzma_stream_encoder_mt(ctypes.byref(stream), ctypes.byref(options)) != LZMA_OK:
        raise ValueError(f"liblzma refuses xz preset {preset}")
    out = ctypes.create_string_buffer(OUT_PIECE)
    try:
        for piece in [*pieces, None]:
            data = ctypes.create_string_buffer(piece or b"", len(piece or b""))
            stream.next_in, stream.avail_in = ctypes.addressof(data), len(piece or b"")
            action = LZMA_RUN if piece is not None else LZMA_FINISH
            while True:
                stream.next_out, stream.avail_out = ctypes.addressof(out), OUT_PIECE
                ret = lib.lzma_code(ctypes.byref(stream), action)
                if ret not in (LZMA_OK, LZMA_STREAM_END):
                    raise ValueError(f"liblzma fails with code {ret}")
                produced = OUT_PIECE - stream.avail_out
                if produced:
                    yield out.raw[:produced]
                if ret == LZMA_STREAM_END or (action == LZMA_RUN and not stream.avail_in and stream.avail_out):
                    break
    finally:
        lib.lzma_end(ctypes.byref(stream))
