"""Branch operands turned into absolute targets, reversibly (the idea of xz's BCJ filters).

When code moves by a few bytes, every relative call and jump across the edit changes, though its
target did not. Written as the absolute target instead, the unchanged calls read alike in both
versions, and a delta codec sees only the real edits. With a map of where the base's functions
went in the target (:func:`elf.address_map`), the base's targets are moved into the target's
address space first, so a call to a function that moved reads alike too; that direction is only
ever a reference and is never undone.

x86-64: ``E8``/``E9`` rel32 and ``0F 80``-``8F`` rel32, found by their opcode bytes alone and each
followed by its four operand bytes, which are skipped: the decoder finds the same places in the
transformed bytes, as an opcode never lies inside an operand. The operand is mapped by a
permutation of int32 (:func:`_to_target`) that gives the target when it lies inside the image
and keeps every other value a value outside it, so the transform is exact whatever the bytes.
AArch64: B/BL imm26, B.cond and CBZ/CBNZ imm19, ADRP imm21 (pages), in their own widths modulo.
"""

from __future__ import annotations

import re
import struct
import sys
from array import array
from typing import Callable

from deltaimg.codec.elf import AARCH64, Layout

_X86_OPCODE = re.compile(rb"[\xe8\xe9]|\x0f[\x80-\x8f]")
_INT32 = struct.Struct("<i")

Mapper = Callable[[int], int]


def forward(data: bytes, layout: Layout, mapper: Mapper | None = None) -> bytes:
    """``data`` with the branch operands of its code made absolute (then moved by ``mapper``)."""
    out = bytearray(data)
    for piece in layout.code:
        if layout.machine == AARCH64:
            _aarch64(out, piece.offset, piece.size, piece.addr, 1, mapper)
        else:
            _x86(out, piece.offset, piece.size, piece.addr, layout, 1, mapper)
    return bytes(out)


def inverse(data: bytes, layout: Layout) -> bytes:
    """Undoes :func:`forward` without a mapper."""
    out = bytearray(data)
    for piece in layout.code:
        if layout.machine == AARCH64:
            _aarch64(out, piece.offset, piece.size, piece.addr, -1, None)
        else:
            _x86(out, piece.offset, piece.size, piece.addr, layout, -1, None)
    return bytes(out)


def _to_target(x: int, a: int, lo: int, hi: int) -> int:
    """A permutation of int32 for an instruction ending at address ``a``: a rel32 whose target
    ``x + a`` lies in [lo, hi) becomes that target; the values in [lo, hi) that are not such
    operands go to those outside it that are (shifted by ``max(hi - lo, a)``); all others stay."""
    if lo <= x + a < hi:
        return x + a
    if lo <= x < hi:
        return x - max(hi - lo, a)
    return x


def _from_target(v: int, a: int, lo: int, hi: int) -> int:
    if lo <= v < hi:
        return v - a
    if lo <= v + a < hi:
        return v + max(hi - lo, a)
    return v


def _x86(out: bytearray, offset: int, size: int, addr: int, layout: Layout, direction: int,
         mapper: Mapper | None) -> None:
    lo, hi = layout.lo, layout.hi
    end = offset + size
    free = offset
    for match in _X86_OPCODE.finditer(out, offset, end):
        at = match.end()  # the operand's first byte
        if match.start() < free or at + 4 > end:
            continue
        a = addr + (at + 4 - offset)  # rel32 counts from the instruction's end
        x = _INT32.unpack_from(out, at)[0]
        if direction > 0:
            v = _to_target(x, a, lo, hi)
            if mapper is not None and lo <= v < hi:
                v = mapper(v)
        else:
            v = _from_target(x, a, lo, hi)
        _INT32.pack_into(out, at, v)
        free = at + 4


def _aarch64(out: bytearray, offset: int, size: int, addr: int, direction: int, mapper: Mapper | None) -> None:
    words = array("I")
    words.frombytes(out[offset : offset + size])
    if sys.byteorder != "little":
        words.byteswap()
    move = mapper or (lambda target: target)
    for n, w in enumerate(words):
        pc = addr + 4 * n
        if w & 0x7C000000 == 0x14000000:  # B, BL
            imm = (w + direction * (pc >> 2)) & 0x03FFFFFF
            if direction > 0 and mapper is not None:
                imm = (move(imm << 2) >> 2) & 0x03FFFFFF
            words[n] = (w & 0xFC000000) | imm
        elif w & 0xFF000010 == 0x54000000 or w & 0x7E000000 == 0x34000000:  # B.cond, CBZ, CBNZ
            imm = (((w >> 5) & 0x7FFFF) + direction * (pc >> 2)) & 0x7FFFF
            if direction > 0 and mapper is not None:
                imm = (move(imm << 2) >> 2) & 0x7FFFF
            words[n] = (w & 0xFF00001F) | (imm << 5)
        elif w & 0x9F000000 == 0x90000000:  # ADRP
            imm = ((w >> 29) & 3) | (((w >> 5) & 0x7FFFF) << 2)
            imm = (imm + direction * (pc >> 12)) & 0x1FFFFF
            if direction > 0 and mapper is not None:
                imm = (move(imm << 12) >> 12) & 0x1FFFFF
            words[n] = (w & 0x9F00001F) | ((imm & 3) << 29) | ((imm >> 2) << 5)
    if sys.byteorder != "little":
        words.byteswap()
    out[offset : offset + size] = words.tobytes()
