"""bsdiff's transform, its three streams raw.

bsdiff4's patch format wraps its three streams (control, diff, extra) in bz2, which costs over
100 bytes per file and cannot share context between files. deltaimg takes the three raw streams
from ``bsdiff4.core`` instead and feeds them into the layer's zstd stream, so they are entropy
coded in one context with everything else.
"""

from __future__ import annotations

import re
import struct
from typing import Iterator

import bsdiff4.core

from deltaimg.codec import varint
from deltaimg.errors import IntegrityError


def diff(base: bytes, target: bytes) -> tuple[bytes, bytes, bytes]:
    """bsdiff's (control, diff, extra) streams, uncompressed, with the diff stream made sparse."""
    control, diff, extra = bsdiff4.core.diff(base, target)
    return fold_idle(control), sparse_encode(diff), extra


def fold_idle(control: bytes) -> bytes:
    """bsdiff's control triples with each triple that makes nothing (only seeks) folded into the
    triple before it, its seek added to that one's. bsdiff4 writes such triples on large inputs
    (hundreds in a 6 MiB segment of a 400 MB library), and :func:`check_control` refuses more
    than one; only a leading one, which has no triple before it, is left."""
    triples: list[tuple[int, int, int]] = []
    for add, extra, seek in _TRIPLE.iter_unpack(control):
        if add + extra or not triples:
            triples.append((add, extra, seek))
        else:
            before = triples[-1]
            triples[-1] = (before[0], before[1], _offset(_signed(before[2]) + _signed(seek)))
    return b"".join(_TRIPLE.pack(*triple) for triple in triples)


_SIGN = 1 << 63  # bsdiff stores a seek as sign and magnitude


def _signed(seek: int) -> int:
    return -(seek & (_SIGN - 1)) if seek & _SIGN else seek


def _offset(value: int) -> int:
    return _SIGN | -value if value < 0 else value


def patch(base: bytes, target_size: int, control: bytes, sparse_diff: bytes, extra: bytes) -> bytes:
    check_control(control, target_size)
    diff = sparse_decode(sparse_diff, limit=target_size)
    try:
        return bsdiff4.core.patch(base, target_size, control, diff, extra)
    except Exception as exc:  # bsdiff4.core raises bare ValueError/MemoryError on bad input
        raise IntegrityError(f"a binary delta does not apply ({exc})") from None


def check_control(control: bytes, target_size: int) -> None:
    """Refuse a control stream that does not make exactly ``target_size`` bytes, or with more triples
    that make nothing than triples that make bytes, plus one (bsdiff writes such a seek-only triple
    now and then: 35 of 1083 in one libssl3 delta, never two in a row; :func:`aligned` writes one
    for an empty file): so the work of a patch is bounded by the bytes it makes, whatever a bundle says."""
    if len(control) % _TRIPLE.size:
        raise IntegrityError("a binary delta's control stream is not whole triples: the bundle is damaged")
    made = making = idle = 0
    for add, extra, _seek in _TRIPLE.iter_unpack(control):  # a negative count has its top bit set: too large
        made += add + extra
        making += bool(add + extra)
        idle += not add + extra
        if idle > making + 1 or made > target_size:
            raise IntegrityError("a binary delta's control stream makes nothing or more than its file: "
                                 "the bundle is damaged")
    if made != target_size:
        raise IntegrityError("a binary delta's control stream makes less than its file: the bundle is damaged")


_TRIPLE = struct.Struct("<QQQ")


def aligned(base: bytes, target: bytes, runs: list[tuple[int, int]]) -> tuple[bytes, bytes, bytes]:
    """bsdiff's streams for a ``target`` that is the same-length ``base`` with the sorted, disjoint
    byte ``runs`` (start, length) changed: one control triple adding the whole of ``base``, the diff
    stream sparse as :func:`sparse_encode` makes it, from the runs alone; no suffix sort, no scan."""
    sparse = bytearray()
    last = 0
    for start, length in runs:
        varint.put(sparse, start - last)
        varint.put(sparse, length)
        sparse += bytes((t - b) & 0xFF for t, b in zip(target[start : start + length], base[start : start + length]))
        last = start + length
    varint.put(sparse, len(target) - last)
    return len(target).to_bytes(8, "little") + bytes(16), bytes(sparse), b""


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
