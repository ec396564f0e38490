"""Which codec codes a target payload against its partner, and against which of the partner's bytes.

bsdiff wins on executables and other files whose small edits move many internal offsets; zstd with
the partner as its reference prefix wins everywhere else, and costs far less. Both are estimated at
``ESTIMATE_LEVEL`` and the smaller kept. A header that only changed in a few bytes (timestamps)
is coded as edit runs instead.

bsdiff4's diff is quadratic in the length of stretches that repeat themselves: zeros with 16 bytes
changed take 1.2 s at 256 KiB and 6 s at 512 KiB (measured here), so a preallocated database or a
disk image in a layer would keep ``make`` busy for hours. Such stretches are what zstd codes best,
so :func:`code` cuts them out first, with one linear zstd -1 pass over ``WINDOW``-sized windows:

- runs: every window that zstd -1 codes ``RUN_RATIO`` times smaller (one byte repeated, or a short
  pattern) is coded literally (zstd, with the partner as reference), and so is its stretch;
- long repeats: a piece between runs, past ``REPEAT_MIN`` bytes, that zstd -1 codes ``REPEAT_GAIN``
  times smaller as a whole than in separate windows (a block repeated at long range), is coded
  literally too.

Runs in the partner's bytes alone cost bsdiff only its suffix sort, n log n (measured: 1 MiB of
data against a partner with 1, 2 and 4 MiB of zeros: 1.4, 1.6 and 2.0 s, against 1.1 s without).

What reaches bsdiff holds no run longer than two windows and no long-range repetition, so its
quadratic term stays a small constant per byte. Of 3051 executables, libraries and Python files of
this machine's Debian, 6 have a run-like window (python3.11 and libpython among them): their runs go
to zstd, the rest of each file to bsdiff as before; the other 3045 reach bsdiff whole, as before.

bsdiff costs about a second per MiB even where it cannot win, so a piece that zstd -1 against the
partner already codes to a ``NEARLY``-th of its size (bytes copied over with a few edits) is left to
zstd: what bsdiff could save there is below that. On the 18 shared libraries that changed between
numpy 1.26.3 and 1.26.4 and between libssl3 3.0.20 and 3.0.22, bsdiff wins on 14; it still codes
12 of them; the other 2, where it won by 25 and 28 bytes, now go to zstd.
"""

from __future__ import annotations

from dataclasses import dataclass

from deltaimg.codec import bsdiff, zstd_ref

WHOLE_OLD_MAX = 8 << 20  # up to this size the whole partner is the reference; bsdiff needs ~17x it
SEGMENT_MARGIN = 1 << 20
ESTIMATE_LEVEL = 9
WINDOW = 16 << 10
RUN_RATIO = 256  # zstd -1 codes 16 KiB of one byte ~1000x smaller, a 16-byte pattern ~400x; code and text < 20x
REPEAT_GAIN = 4
REPEAT_MIN = 16 * WINDOW  # shorter data costs bsdiff little whatever it holds
NEARLY = 1024  # zstd -1 within 0.1% of the size: what bsdiff could still save is smaller than that


@dataclass(frozen=True)
class Piece:
    """Bytes [start, start + length) of a target, coded against the partner's bytes
    [base_start, base_start + base_len): as bsdiff's streams, or literally when ``streams`` is None."""

    start: int
    length: int
    base_start: int
    base_len: int
    streams: tuple[bytes, bytes, bytes] | None


def base_region(partner_size: int, start: int, end: int, size: int) -> tuple[int, int]:
    """The partner's bytes that line up with bytes [start, end) of a target payload of ``size``."""
    scale = partner_size / max(size, 1)
    lo = max(0, int(start * scale) - SEGMENT_MARGIN)
    hi = min(partner_size, int(end * scale) + SEGMENT_MARGIN)
    if hi - lo > WHOLE_OLD_MAX:  # a much larger base file: bsdiff's memory is ~17x the region
        lo = max(0, (lo + hi - WHOLE_OLD_MAX) // 2)
        hi = min(partner_size, lo + WHOLE_OLD_MAX)
    return lo, hi


def code(base: bytes, base_start: int, target: bytes) -> list[Piece]:
    """``target`` coded against ``base`` (the partner's bytes from ``base_start`` on), piece by piece:
    runs literally, each stretch between them by bsdiff where it codes smaller than zstd."""
    pieces = []
    for start, end, may_bsdiff in plan(target):
        lo, hi = base_region(len(base), start, end, len(target))
        if not may_bsdiff:  # a run needs no reference: zstd codes it to almost nothing alone, and fast
            pieces.append(Piece(start, end - start, base_start + lo, 0, None))
            continue
        pieces.append(Piece(start, end - start, base_start + lo, hi - lo, choose_delta(base[lo:hi], target[start:end])))
    return pieces


def plan(target: bytes) -> list[tuple[int, int, bool]]:
    """(start, end, whether bsdiff may code it) of consecutive pieces covering ``target``: each
    stretch of run-like windows is one piece bsdiff may not code, each stretch between them one it may."""
    pieces: list[tuple[int, int, bool]] = []
    for at in range(0, len(target), WINDOW):
        window = target[at:at + WINDOW]
        may_bsdiff = len(zstd_ref.compress(window, level=1)) * RUN_RATIO > len(window)
        if pieces and pieces[-1][2] == may_bsdiff:
            pieces[-1] = (pieces[-1][0], at + len(window), may_bsdiff)
        else:
            pieces.append((at, at + len(window), may_bsdiff))
    return pieces or [(0, 0, False)]


def choose_delta(base: bytes, target: bytes) -> tuple[bytes, bytes, bytes] | None:
    """bsdiff's streams when they code smaller than zstd against the base bytes; else None (also
    when bsdiff's time on these bytes would not stay linear)."""
    if not _no_long_repeat(target) or _nearly_the_reference(base, target):
        return None
    control, diff, extra = bsdiff.diff(base, target)
    as_bsdiff = len(zstd_ref.compress(control + diff + extra, level=ESTIMATE_LEVEL))
    as_zstd = len(zstd_ref.compress(target, prefix=base, level=ESTIMATE_LEVEL))
    return (control, diff, extra) if as_bsdiff < as_zstd else None


def _nearly_the_reference(base: bytes, target: bytes) -> bool:
    """Whether zstd -1 with ``base`` as reference already codes ``target`` to a ``NEARLY``-th of its
    size: bytes copied over with a few edits, where bsdiff cannot win enough to pay for its run."""
    return len(zstd_ref.compress(target, prefix=base, level=1)) * NEARLY <= len(target)


def _no_long_repeat(data: bytes) -> bool:
    if len(data) < REPEAT_MIN:
        return True
    windows = sum(len(zstd_ref.compress(data[at:at + WINDOW], level=1)) for at in range(0, len(data), WINDOW))
    return windows < REPEAT_GAIN * len(zstd_ref.compress(data, level=1))


def edit_runs(base: bytes, target: bytes) -> list[tuple[int, int]] | None:
    """Byte runs where ``target`` differs from the same-length ``base``; None when that is no bargain."""
    if len(base) != len(target):
        return None
    xor = (int.from_bytes(base, "big") ^ int.from_bytes(target, "big")).to_bytes(len(target), "big")
    runs = [(start, end - start) for start, end in bsdiff.nonzero_runs(xor)]
    changed = sum(length for _, length in runs)
    return runs if changed + 2 * len(runs) < len(target) // 2 else None
