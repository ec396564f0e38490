"""Unsigned and zigzag varints (LEB128), the integers of the layer recipe."""

from __future__ import annotations

from typing import BinaryIO

from deltaimg.errors import BundleFormatError

MAX_VARINT_BYTES = 10


def put(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError("varint must be non-negative")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def put_signed(out: bytearray, value: int) -> None:
    put(out, (value << 1) if value >= 0 else ((-value) << 1) - 1)


def read(stream: BinaryIO) -> int:
    """One varint from a stream, read a byte at a time (nothing past it is consumed)."""
    value = shift = 0
    for _ in range(MAX_VARINT_BYTES):
        byte = stream.read(1)
        if not byte:
            raise BundleFormatError("layer delta ends early: the bundle is damaged")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    raise BundleFormatError("layer delta holds an invalid number: the bundle is damaged")


class Reader:
    """Reads varints and raw bytes from a byte string, failing cleanly at its end."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self._data)

    def get(self) -> int:
        value = shift = 0
        for _ in range(MAX_VARINT_BYTES):
            if self.pos >= len(self._data):
                raise BundleFormatError("layer recipe ends early: the bundle is damaged")
            byte = self._data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise BundleFormatError("layer recipe holds an invalid number: the bundle is damaged")

    def get_signed(self) -> int:
        value = self.get()
        return (value >> 1) if not value & 1 else -((value + 1) >> 1)

    def byte(self) -> int:
        if self.pos >= len(self._data):
            raise BundleFormatError("layer recipe ends early: the bundle is damaged")
        self.pos += 1
        return self._data[self.pos - 1]

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self._data):
            raise BundleFormatError("layer recipe ends early: the bundle is damaged")
        self.pos += n
        return self._data[self.pos - n : self.pos]
