"""Deltas that understand executables: a changed ELF library or program coded under the branch
transform (``codec/branches``), the base's branch targets moved by an address map first.

Both versions are parsed (``codec/elf``); the target's transform is undone and checked at make
time. The map comes from the symbols both versions share and from the runs bsdiff matches
between the raw files (``elf.matched_runs``). The transformed target is then coded against the
transformed, mapped base by bsdiff or zstd, whichever is smaller, and the whole is kept only when
it beats the plain coding (:func:`choice.code`). The segment's bytes in the literal stream::

    varint machine | base layout | target layout | varint map length | map | varint method | body

a layout: varints lo, hi, code range count, then per range offset, size, address; the map: per
range the varint start (from the previous one) and the zigzag shift; method 0: body is a zstd
frame against the transformed base; 1: varint control and diff lengths, bsdiff's three streams.
``DELTAIMG_ELF=0`` switches the coding off (make only; apply always reads it).
"""

from __future__ import annotations

import os

from deltaimg.codec import branches, bsdiff, elf, varint, zstd_ref
from deltaimg.delta.choice import ESTIMATE_LEVEL, Piece, code
from deltaimg.errors import BundleFormatError, IntegrityError

ZSTD, BSDIFF = 0, 1
MIN_SIZE = 4096


def enabled() -> bool:
    return os.environ.get("DELTAIMG_ELF", "1") != "0"


def blob_cap(target_len: int) -> int:
    """The largest segment make writes for a file of ``target_len`` bytes (bsdiff's raw streams
    may exceed the file a little; the literal stream compresses them)."""
    return 2 * target_len + (1 << 16)


def encode(base: bytes, target: bytes, control: bytes | None = None) -> tuple[bytes, int] | None:
    """The blob that rebuilds ``target`` from ``base``, and about what it costs in the literal
    stream; None when they are not ELF images of one
    machine or the transform is not undone exactly. ``control``: bsdiff's control stream from
    base to target, if already made (its matched runs feed the map)."""
    if not enabled() or len(target) < MIN_SIZE or not target.startswith(b"\x7fELF"):
        return None
    base_image, target_image = elf.parse(base), elf.parse(target)
    if base_image is None or target_image is None or base_image.layout.machine != target_image.layout.machine:
        return None
    target_t = branches.forward(target, target_image.layout)
    if branches.inverse(target_t, target_image.layout) != target:
        return None
    if control is None:
        control = bsdiff.diff(base, target)[0]
    ranges = elf.address_map(base_image, target_image, elf.matched_runs(control, base_image, target_image))
    base_t = branches.forward(base, base_image.layout, elf.Mapper(ranges) if ranges else None)
    out = bytearray()
    varint.put(out, target_image.layout.machine)
    for layout in (base_image.layout, target_image.layout):
        _put_layout(out, layout)
    varint.put(out, len(ranges))
    last = 0
    for start, shift in ranges:
        varint.put(out, start - last)
        varint.put_signed(out, shift)
        last = start
    control_t, diff_t, extra_t = bsdiff.diff(base_t, target_t)
    frame = zstd_ref.compress(target_t, prefix=base_t)
    as_bsdiff = len(zstd_ref.compress(control_t + diff_t + extra_t, level=ESTIMATE_LEVEL))
    if as_bsdiff < len(frame):
        varint.put(out, BSDIFF)
        varint.put(out, len(control_t))
        varint.put(out, len(diff_t))
        cost = len(out) + as_bsdiff
        out += control_t + diff_t + extra_t
    else:
        varint.put(out, ZSTD)
        out += frame
        cost = len(out)
    return (bytes(out), cost) if len(out) <= blob_cap(len(target)) else None


def _put_layout(out: bytearray, layout: elf.Layout) -> None:
    for n in (layout.lo, layout.hi, len(layout.code)):
        varint.put(out, n)
    for piece in layout.code:
        for n in (piece.offset, piece.size, piece.addr):
            varint.put(out, n)


def estimate(pieces: list[Piece], base: bytes, target: bytes) -> int:
    """About what ``pieces`` cost in the literal stream."""
    total = 0
    for piece in pieces:
        if piece.streams is not None:
            total += len(zstd_ref.compress(b"".join(piece.streams), level=ESTIMATE_LEVEL))
        else:
            region = base[piece.base_start : piece.base_start + piece.base_len]
            total += len(zstd_ref.compress(target[piece.start : piece.start + piece.length], prefix=region,
                                           level=ESTIMATE_LEVEL))
    return total


def code_file(base: bytes, target: bytes) -> list[Piece]:
    """``target`` coded against the whole ``base``: under the transform when that is smaller, else by
    :func:`choice.code`."""
    plain = code(base, 0, target)
    if not enabled() or not target.startswith(b"\x7fELF"):
        return plain
    control = next((piece.streams[0] for piece in plain if piece.streams is not None and len(plain) == 1), None)
    coded = encode(base, target, control)
    if coded is None or coded[1] >= estimate(plain, base, target):
        return plain
    blob = coded[0]
    return [Piece(0, len(target), 0, len(base), None, as_reference=False, executable=blob)]


def _layout(reader: varint.Reader, size: int, machine: int) -> elf.Layout:
    lo, hi, count = reader.get(), reader.get(), reader.get()
    if count > elf.MAX_CODE_RANGES:
        raise BundleFormatError("an executable's delta lists too many code ranges: the bundle is damaged")
    pieces = tuple(elf.CodeRange(reader.get(), reader.get(), reader.get()) for _ in range(count))
    layout = elf.Layout(machine, lo, hi, pieces)
    if not layout.valid_for(size):
        raise BundleFormatError("an executable's delta declares code outside its file: the bundle is damaged")
    return layout


def decode(base: bytes, target_len: int, blob: bytes) -> bytes:
    """The target file that ``blob`` rebuilds from ``base``."""
    reader = varint.Reader(blob)
    machine = reader.get()
    if machine not in elf.MACHINES:
        raise BundleFormatError("an executable's delta names an unknown machine: the bundle is damaged")
    base_layout = _layout(reader, len(base), machine)
    target_layout = _layout(reader, target_len, machine)
    count = reader.get()
    if count > elf.MAX_MAP or count > len(blob):
        raise BundleFormatError("an executable's delta has an oversized address map: the bundle is damaged")
    ranges, start = [], 0
    for _ in range(count):
        start += reader.get()
        ranges.append((start, reader.get_signed()))
    base_t = branches.forward(base, base_layout, elf.Mapper(ranges) if ranges else None)
    method = reader.get()
    if method == ZSTD:
        target_t = bytes(zstd_ref.decompress(blob[reader.pos:], target_len, base_t))
    elif method == BSDIFF:
        control_len, diff_len = reader.get(), reader.get()
        control, diff = reader.take(control_len), reader.take(diff_len)
        target_t = bsdiff.patch(base_t, target_len, control, diff, blob[reader.pos:])
    else:
        raise BundleFormatError("an executable's delta has an unknown method: the bundle is damaged")
    target = branches.inverse(target_t, target_layout)
    if len(target) != target_len:
        raise IntegrityError("an executable rebuilds to another size than recorded: the bundle is damaged")
    return target
