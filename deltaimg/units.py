"""Sizes as people write and read them."""

from __future__ import annotations

import re

from deltaimg.errors import UsageError

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``3900M``, ``4G``, ``512K`` or a plain number of bytes; K, M, G and T are powers of 1024."""
    match = re.fullmatch(r"(\d{1,20})([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise UsageError(f"{text!r} is not a size; write it like 3900M, 4G or 1048576")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).upper()]


def human_size(n: float) -> str:
    """Decimal units, as ``ls -h --si`` and disk vendors write them."""
    if abs(n) >= 1000 ** 5:  # no image is that large; and an int past 10^308 has no float to divide
        return ("-" if n < 0 else "") + "over 1000 TB"
    for unit in ("B", "KB", "MB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
