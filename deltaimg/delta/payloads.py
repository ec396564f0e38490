"""Where a target payload too large to hold in memory waits for its turn to be coded.

When the target layer's uncompressed bytes sit in a file (a ``docker save`` archive, an
uncompressed OCI blob: :attr:`Layer.local`), the payload is read again from there when its turn
comes: nothing is copied. Otherwise (an engine's export, a compressed blob) it is spilled to a
file in the work directory as it streams past. Either way it is hashed once, as it goes by.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

from deltaimg.errors import ImageReadError
from deltaimg.streams import open_range
from deltaimg.tar.split import Entry, TarSplitter


@dataclass(frozen=True)
class Held:
    """``size`` bytes at ``offset`` of the file ``path``; ``spilled``: a work file to remove after use."""

    path: str
    offset: int
    size: int
    spilled: bool

    def open(self) -> BinaryIO:
        return open_range([(self.path, self.offset + self.size)], self.offset, self.size, _shorter)

    def discard(self) -> None:
        if self.spilled:
            os.unlink(self.path)


def hold(splitter: TarSplitter, entry: Entry, digest, workdir: str, local: tuple[str, int, int] | None) -> Held:
    """Read the current entry's payload into ``digest`` and keep it where it can be read again."""
    if local is not None:
        for chunk in splitter.payload_chunks():
            digest.update(chunk)
        path, start, _ = local
        return Held(path, start + entry.offset + len(entry.pre), entry.size, spilled=False)
    fd, path = tempfile.mkstemp(dir=workdir, suffix=".payload")
    with os.fdopen(fd, "wb") as spill:
        for chunk in splitter.payload_chunks():
            digest.update(chunk)
            spill.write(chunk)
    return Held(path, 0, entry.size, spilled=True)


def _shorter(path: str) -> ImageReadError:
    return ImageReadError(f"{path} changed while deltaimg make read it; make the bundle again")
