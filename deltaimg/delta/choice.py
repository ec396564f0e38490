"""Which codec codes a target payload against its partner, and against which of the partner's bytes.

bsdiff wins on executables and other files whose small edits move many internal offsets; zstd with
the partner as its reference prefix wins everywhere else, and costs far less. Both are estimated at
``ESTIMATE_LEVEL`` and the smaller kept. A header that only changed in a few bytes (timestamps)
is coded as edit runs instead.
"""

from __future__ import annotations

from deltaimg.codec import bsdiff, zstd_ref
from deltaimg.delta.recipe import MAX_EDITS

WHOLE_OLD_MAX = 8 << 20  # up to this size the whole partner is the reference; bsdiff needs ~17x it
SEGMENT_MARGIN = 1 << 20
ESTIMATE_LEVEL = 9


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
