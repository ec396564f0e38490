"""Which codec codes a target payload against its partner, and against which of the partner's bytes.

bsdiff wins on executables and other files whose small edits move many internal offsets; zstd with
the partner as its reference prefix wins everywhere else, and costs far less. Both are estimated at
``ESTIMATE_LEVEL`` and the smaller kept. A header that only changed in a few bytes (timestamps)
is coded as edit runs instead.

bsdiff is offered only pieces where its cost stays linear: bsdiff4's diff is quadratic in the length
of stretches that repeat themselves. Measured here on 6 MiB with four 16-byte edits, an executable
takes 1.8 s, but a 64-byte pattern 19 s, a repeated 4 KiB block 25 s, a repeated 64 KiB block 14 s,
and zeros 9.6 s at only 2 MiB (about 86 s at 6). Disk images, preallocated databases and sparse logs
are made of such stretches. Two linear tests with zstd level 1 find them before bsdiff sees them:

- runs: a ``WINDOW`` that zstd -1 codes ``RUN_RATIO`` times smaller is one byte repeated or a pattern
  of at most about 100 bytes. Stretches of ``RUN_WINDOWS`` or more such windows are cut out and
  coded literally (zstd codes them nearly free); so is what lies between them when it is shorter
  than ``MIN_PIECE``. A run left inside a bsdiff piece is shorter than ``RUN_WINDOWS + 2`` windows,
  so bsdiff's quadratic term stays within a constant per byte.
- long repeats: a piece that zstd -1 codes ``REPEAT_GAIN`` times smaller as a whole (long-distance
  matching) than in independent windows repeats itself at long range; it is coded literally too.

Of 4026 executables, libraries, Python and data files on a Debian system, 11 have any window past
``RUN_RATIO`` and 6 a gain past ``REPEAT_GAIN`` (JSON enumerations, a test tar); bsdiff keeps every
other file whole, exactly as before these tests existed.
"""

from __future__ import annotations

from dataclasses import dataclass

from deltaimg.codec import bsdiff, zstd_ref
from deltaimg.zstdlib import zstd
from deltaimg.delta.recipe import MAX_EDITS

WHOLE_OLD_MAX = 8 << 20  # up to this size the whole partner is the reference; bsdiff needs ~17x it
SEGMENT_MARGIN = 1 << 20
ESTIMATE_LEVEL = 9
WINDOW = 64 << 10
RUN_RATIO = 512  # zstd -1 codes 64 KiB of one byte ~3300x smaller, a 64-byte pattern ~780x, executables < 250x
RUN_WINDOWS = 4
MIN_PIECE = 1 << 20
REPEAT_GAIN = 4
REPEAT_MIN = RUN_WINDOWS * WINDOW  # shorter pieces cost bsdiff little whatever they hold
ALIGNED_CHANGED = 1 / 8  # an aligned delta changing more is coded literally


@dataclass(frozen=True)
class Piece:
    """Bytes [start, start + length) of a target, coded against the partner's bytes
    [base_start, base_start + base_len): as bsdiff's streams, or literally when ``streams`` is None."""

    start: int
    length: int
    base_start: int
    base_len: int
    streams: tuple[bytes, bytes, bytes] | None
    as_reference: bool = True  # whether those base bytes help zstd code it (an aligned delta's do not)
    inside: bytes | None = None  # the whole file coded on its content (delta/inside.py)
    executable: bytes | None = None  # the whole file coded under the branch transform (delta/executable.py)


def base_region(partner_size: int, start: int, end: int, size: int) -> tuple[int, int]:
    """The partner's bytes that line up with bytes [start, end) of a target payload of ``size``."""
    scale = partner_size / max(size, 1)
    lo = max(0, int(start * scale) - SEGMENT_MARGIN)
    hi = min(partner_size, int(end * scale) + SEGMENT_MARGIN)
    if hi - lo > WHOLE_OLD_MAX:  # a much larger base file: bsdiff's memory is ~17x the region
        lo = max(0, (lo + hi - WHOLE_OLD_MAX) // 2)
        hi = min(partner_size, lo + WHOLE_OLD_MAX)
    return lo, hi


def choose_delta(base: bytes, target: bytes) -> tuple[bytes, bytes, bytes] | None:
    """bsdiff's streams when they code smaller than zstd against the base file; else None."""
    control, diff, extra = bsdiff.diff(base, target)
    as_bsdiff = len(zstd_ref.compress(control + diff + extra, level=ESTIMATE_LEVEL))
    as_zstd = len(zstd_ref.compress(target, prefix=base, level=ESTIMATE_LEVEL))
    return (control, diff, extra) if as_bsdiff < as_zstd else None


def edit_runs(base: bytes, target: bytes) -> list[tuple[int, int]] | None:
    """Byte runs where ``target`` differs from the same-length ``base``; None when that is no bargain."""
    if len(base) != len(target):
        return None
    xor = (int.from_bytes(base, "big") ^ int.from_bytes(target, "big")).to_bytes(len(target), "big")
    runs = [(start, end - start) for start, end in bsdiff.nonzero_runs(xor)]
    changed = sum(length for _, length in runs)
    return runs if changed + 2 * len(runs) < len(target) // 2 and len(runs) <= MAX_EDITS else None


def code(base: bytes, base_start: int, target: bytes, offset: int = 0) -> list[Piece]:
    """``target`` coded against ``base`` (the partner's bytes from ``base_start``), piece by piece;
    ``target[0]`` lines up with ``base[offset]``. A piece bsdiff may not take is coded as an aligned
    delta (bsdiff's streams without its search) where it is the aligned base bytes with few edited,
    since zstd spends bytes on every 128 KiB block even of zeros; else literally."""
    pieces = []
    for start, end, try_bsdiff in plan(target):
        lo, hi = base_region(len(base), start, end, len(target))
        if try_bsdiff:
            streams = choose_delta(base[lo:hi], target[start:end])
        else:
            at = max(0, offset + start)
            aligned = base[at : at + end - start]
            runs = _aligned_runs(aligned, target[start:end])
            if runs is not None:
                lo, hi = at, at + end - start
            streams = None if runs is None else bsdiff.aligned(aligned, target[start:end], runs)
        pieces.append(Piece(start, end - start, base_start + lo, hi - lo, streams, try_bsdiff or streams is None))
    return pieces


def plan(target: bytes) -> list[tuple[int, int, bool]]:
    """(start, end, whether bsdiff may code it) for consecutive pieces covering ``target``."""
    sizes = _window_sizes(target)
    runs = _runs(sizes)
    pieces: list[tuple[int, int, bool]] = []
    at = 0
    for first, last in [*runs, (len(sizes), len(sizes))]:
        if first > at:
            short = bool(runs) and (first - at) * WINDOW < MIN_PIECE
            pieces.append((at, first, not short and not _repeats(target, at, first, sizes)))
        if last > first:
            pieces.append((first, last, False))
        at = last
    merged: list[tuple[int, int, bool]] = []
    for first, last, try_bsdiff in pieces:
        if merged and not try_bsdiff and not merged[-1][2]:
            merged[-1] = (merged[-1][0], last, False)
        else:
            merged.append((first, last, try_bsdiff))
    return [(first * WINDOW, min(last * WINDOW, len(target)), ok) for first, last, ok in merged]


def _aligned_runs(base: bytes, target: bytes) -> list[tuple[int, int]] | None:
    """(start, length) of the bytes where ``target`` differs from the same-length ``base``, found
    window by window (equal windows cost a compare); None when over ``ALIGNED_CHANGED`` of them."""
    if len(base) != len(target):
        return None
    runs: list[tuple[int, int]] = []
    for at in range(0, len(target), WINDOW):
        if base[at : at + WINDOW] != target[at : at + WINDOW]:
            runs += [(at + start, length) for start, length in edit_runs(base[at : at + WINDOW], target[at : at + WINDOW]) or
                     [(0, len(target[at : at + WINDOW]))]]
    return runs if sum(length for _, length in runs) <= len(target) * ALIGNED_CHANGED else None


def _window_sizes(target: bytes) -> list[int]:
    """zstd -1's size of each ``WINDOW`` of ``target``, coded on its own."""
    compressor = zstd.ZstdCompressor(level=1)
    return [len(compressor.compress(target[at : at + WINDOW], mode=zstd.ZstdCompressor.FLUSH_FRAME))
            for at in range(0, len(target), WINDOW)]


def _runs(sizes: list[int]) -> list[tuple[int, int]]:
    """[first, last) window numbers of the stretches of at least ``RUN_WINDOWS`` run-like windows."""
    runs, first = [], None
    for at, size in enumerate([*sizes, WINDOW]):  # the sentinel ends the last stretch
        if size * RUN_RATIO <= WINDOW:
            first = at if first is None else first
            continue
        if first is not None and at - first >= RUN_WINDOWS:
            runs.append((first, at))
        first = None
    return runs


def _repeats(target: bytes, first: int, last: int, sizes: list[int]) -> bool:
    """Whether windows [first, last) of ``target`` repeat themselves at long range."""
    data = target[first * WINDOW : last * WINDOW]
    if len(data) < REPEAT_MIN:
        return False
    return sum(sizes[first:last]) >= REPEAT_GAIN * len(zstd_ref.compress(data, level=1))
