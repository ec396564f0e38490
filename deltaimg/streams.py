"""Streams every step reads through: a byte range of one file or of files laid end to end, and a
pass-through that hashes and counts."""

from __future__ import annotations

import bisect
import hashlib
import io
from typing import BinaryIO, Callable, Iterator

BUFFER = 1 << 20


class RangeReader(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes from ``offset`` of the files ``parts`` ((name,
    size) each) laid end to end: one file of an archive, or a bundle split across parts.

    ``shorter(name)`` is the error for a file that ends before its recorded size; ``unreadable(name,
    exc)``, when given, the error for an OSError (else the OSError itself is raised).
    """

    def __init__(self, parts: list[tuple[str, int]], offset: int, size: int, shorter: Callable[[str], Exception],
                 unreadable: Callable[[str, OSError], Exception] | None = None) -> None:
        self._parts = parts
        self._starts, start = [], 0
        for _, part_size in parts:
            self._starts.append(start)
            start += part_size
        self._offset = offset
        self._size = size
        self._pos = 0
        self._shorter = shorter
        self._unreadable = unreadable
        self._file: BinaryIO | None = None
        self._index = -1
        self._open(self._part_at(offset))

    def _part_at(self, absolute: int) -> int:
        return max(0, bisect.bisect_right(self._starts, absolute) - 1)

    def _open(self, index: int) -> BinaryIO:
        if index != self._index:
            name = self._parts[index][0]
            try:
                handle = open(name, "rb")
            except OSError as exc:
                if self._unreadable is None:
                    raise
                raise self._unreadable(name, exc) from None
            if self._file is not None:
                self._file.close()
            self._file, self._index = handle, index
        assert self._file is not None
        return self._file

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        remaining = self._size - self._pos
        if remaining <= 0:
            return 0
        absolute = self._offset + self._pos
        index = self._part_at(absolute)
        name, part_size = self._parts[index]
        within = absolute - self._starts[index]
        try:
            handle = self._open(index)
            handle.seek(within)
            n = handle.readinto(memoryview(buffer)[: min(len(buffer), remaining, part_size - within)])
        except OSError as exc:  # a stick pulled out, a part renamed since it was opened
            if self._unreadable is None:
                raise
            raise self._unreadable(name, exc) from None
        if not n:
            raise self._shorter(name)
        self._pos += n
        return n

    def seek(self, pos: int, whence: int = 0) -> int:
        start = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, min(self._size, start + pos))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def open_range(parts: list[tuple[str, int]], offset: int, size: int, shorter: Callable[[str], Exception],
               unreadable: Callable[[str, OSError], Exception] | None = None) -> BinaryIO:
    """A buffered :class:`RangeReader`."""
    return io.BufferedReader(RangeReader(parts, offset, size, shorter, unreadable), buffer_size=BUFFER)  # type: ignore[return-value]


class HashingReader:
    """Passes a stream through while hashing and counting it."""

    def __init__(self, stream: BinaryIO, progress: Callable[[int], None] | None = None) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()
        self.size = 0
        self._progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.digest.update(data)
        self.size += len(data)
        if self._progress and data:
            self._progress(len(data))
        return data

    def drain(self) -> None:
        while self.read(BUFFER):
            pass


class ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (an export as it arrives, a layer as it is
    reassembled), without copying chunk tails around."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._view = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while not self._view:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._view = memoryview(chunk)
        size = min(len(buffer), len(self._view))
        buffer[:size] = self._view[:size]
        self._view = self._view[size:]
        return size
