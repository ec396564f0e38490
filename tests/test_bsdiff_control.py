"""bsdiff's control stream as deltaimg writes it: no triple that makes nothing, past a leading one.

bsdiff4 writes triples that only seek on large inputs (hundreds in one 6 MiB segment of triton's
416 MB libtriton.so), and apply refuses a control stream with more than one of them, so that the
work of a patch stays bounded by the bytes it makes: a bundle made of such a library did not apply
(exit 12). make folds each one into the triple before it.
"""

from __future__ import annotations

import random
import struct

import bsdiff4.core

from deltaimg.codec import bsdiff

TRIPLE = struct.Struct("<QQQ")
SIGN = 1 << 63


def triples(control: bytes) -> list[tuple[int, int, int]]:
    return list(TRIPLE.iter_unpack(control))


def signed(seek: int) -> int:
    return -(seek & (SIGN - 1)) if seek & SIGN else seek


def as_seek(value: int) -> int:
    return SIGN | -value if value < 0 else value


def edited_pair() -> tuple[bytes, bytes]:
    rnd = random.Random(18)
    base = rnd.randbytes(256 << 10)
    pieces = [base[at : at + 9000] for at in range(0, len(base), 9000)]
    rnd.shuffle(pieces)  # blocks moved both ways: seeks forward and backward
    return base, b"".join(piece + rnd.randbytes(7) for piece in pieces)


def with_idle_triples(control: bytes) -> bytes:
    """bsdiff4's control with one seek-only triple at the start and each seek split in two."""
    out = [(0, 0, 0)]
    for add, extra, seek in triples(control):
        half = signed(seek) // 2
        out += [(add, extra, as_seek(half)), (0, 0, as_seek(signed(seek) - half))]
    return b"".join(TRIPLE.pack(*t) for t in out)


def test_seek_only_triples_are_folded_into_the_one_before_and_the_patch_rebuilds_the_target():
    base, target = edited_pair()
    control, diff, extra = bsdiff4.core.diff(base, target)
    idle = with_idle_triples(control)
    assert bsdiff4.core.patch(base, len(target), idle, diff, extra) == target  # what bsdiff4 itself accepts
    assert sum(1 for add, extra_len, _ in triples(idle) if not add + extra_len) > len(triples(control))

    folded = bsdiff.fold_idle(idle)

    assert [t for t in triples(folded)[1:] if not t[0] + t[1]] == []
    assert triples(folded)[0][:2] == (0, 0)  # the leading seek-only triple stays: nothing before it
    assert len(triples(folded)) == 1 + sum(1 for add, extra_len, _ in triples(control) if add + extra_len)
    bsdiff.check_control(folded, len(target))
    assert bsdiff.patch(base, len(target), folded, bsdiff.sparse_encode(diff), extra) == target


def test_a_control_stream_with_seek_only_triples_is_refused_by_apply_as_before():
    base, target = edited_pair()
    control, _, _ = bsdiff4.core.diff(base, target)
    try:
        bsdiff.check_control(with_idle_triples(control), len(target))
    except Exception as refused:
        assert "makes nothing or more than its file" in str(refused)
    else:
        raise AssertionError("a control stream of seek-only triples was accepted")


def test_diff_writes_no_seek_only_triple_past_the_first():
    base, target = edited_pair()
    control, sparse, extra = bsdiff.diff(base, target)
    assert [t for t in triples(control)[1:] if not t[0] + t[1]] == []
    assert bsdiff.patch(base, len(target), control, sparse, extra) == target
