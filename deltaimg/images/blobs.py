"""Byte access to the files inside an image archive or layout directory.

Archives are read in place: a member of an uncompressed tar is a byte range of the archive
file, so layers are streamed (or seeked into) without extracting anything.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from typing import BinaryIO, Callable, Iterator

from deltaimg import streams
from deltaimg.codec import layer_blob
from deltaimg.errors import ImageReadError, printable

MAX_METADATA_BYTES = 16 * 1024 * 1024  # manifest.json, index.json, configs


def open_range(path: str, offset: int, size: int) -> BinaryIO:
    """``size`` bytes of the file at ``path`` from ``offset``: a member of an uncompressed tar."""
    return streams.open_range([(path, offset + size)], offset, size,
                              lambda name: ImageReadError(f"{name}: file is shorter than its index says"))


class BlobStore:
    """Files of an image layout by relative path, either in a directory or in a tar archive."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._members: dict[str, tuple[int, int]] | None = None
        self._links_out: set[str] = set()  # archive members that are links leading out of the archive
        if os.path.isdir(root):
            return
        if not os.path.isfile(root):
            raise ImageReadError(f"{root}: no such file or directory")
        self._members, self._links_out = _index_tar(root)

    def _resolve(self, name: str) -> str:
        normal = posixpath.normpath(name)
        if _leaves(normal):
            raise ImageReadError(f"{self.root}: path {name!r} points outside the image")
        return normal

    def exists(self, name: str) -> bool:
        name = self._resolve(name)
        if self._members is None:
            return os.path.isfile(os.path.join(self.root, name))
        return name in self._members

    def local(self, name: str) -> tuple[str, int, int]:
        """(file, offset, size) of a stored file."""
        name = self._resolve(name)
        if self._members is None:
            path = os.path.join(self.root, name)
            if not os.path.isfile(path):
                raise ImageReadError(f"{self.root}: {name} is missing")
            real, root = os.path.realpath(path), os.path.realpath(self.root)
            if os.path.commonpath([real, root]) != root:
                raise ImageReadError(f"{self.root}: {name} is a link to {real}, outside the image")
            return path, 0, os.path.getsize(path)
        if name in self._links_out:
            raise ImageReadError(f"{self.root}: {name} is a link pointing outside the archive")
        if name not in self._members:
            raise ImageReadError(f"{self.root}: {name} is missing from the archive")
        offset, size = self._members[name]
        return self.root, offset, size

    def open(self, name: str) -> BinaryIO:
        return open_range(*self.local(name))

    def read_small(self, name: str) -> bytes:
        path, offset, size = self.local(name)
        if size > MAX_METADATA_BYTES:
            raise ImageReadError(f"{self.root}: {name} is {size} bytes, too large for metadata")
        with open_range(path, offset, size) as f:
            return f.read()


def _leaves(name: str) -> bool:
    """Whether a normalized path leads out of the directory it is relative to."""
    return name.startswith("/") or name == ".." or name.startswith("../")


def _index_tar(path: str) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """Map member names to (data offset, size), following links inside the archive; and the
    names of the links that lead out of it (they are never followed)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if layer_blob.by_head(magic) != layer_blob.PLAIN:
        raise ImageReadError(
            f"{path}: the archive itself is compressed; decompress it first "
            "(deltaimg reads archives in place)"
        )
    members: dict[str, tuple[int, int]] = {}
    links: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in _members(tar, path, os.path.getsize(path)):
                name = posixpath.normpath(info.name.lstrip("/"))
                if info.isreg():
                    members[name] = (info.offset_data, info.size)
                elif info.issym():
                    links[name] = posixpath.normpath(
                        posixpath.join(posixpath.dirname(name), info.linkname)
                    )
                elif info.islnk():
                    links[name] = posixpath.normpath(info.linkname.lstrip("/"))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ImageReadError(f"{path}: not a readable tar archive ({exc})") from None
    outside = set()
    for name, target in links.items():
        for _ in range(8):  # links to links, bounded
            if target in links:
                target = links[target]
        if target in members:
            members[name] = members[target]
        elif _leaves(target):
            outside.add(name)
    return members, outside


def _members(tar: tarfile.TarFile, path: str, file_size: int) -> Iterator[tarfile.TarInfo]:
    """The archive's members in order, each checked to lie within the file and after the one
    before it. tarfile believes a header's size: a negative one (base-256 allows it) sends it
    back to the same header forever, collecting it each time."""
    previous = -1
    while True:
        info = tar.next()
        if info is None:
            return
        tar.members.clear()  # tarfile keeps every member it read; the index is all that is needed
        if info.size < 0 or info.offset <= previous or info.offset_data + info.size > file_size:
            raise ImageReadError(
                f"{path}: not a readable tar archive (member '{printable(info.name)}' at offset {info.offset} "
                f"declares {info.size} bytes, outside the file); the archive is damaged or was not written by a tar tool"
            )
        previous = info.offset
        yield info


def open_decompressed(opener: Callable[[], BinaryIO], what: str) -> BinaryIO:
    """Open a layer blob as its uncompressed tar, whatever compression it was stored with."""
    raw = opener()
    head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
    return layer_blob.decoded(raw, layer_blob.by_head(head), lambda reason: ImageReadError(
        f"layer blob {what} does not decompress ({reason}); the image is damaged"))


def is_compressed(path: str, offset: int) -> bool:
    with open(path, "rb") as f:
        f.seek(offset)
        head = f.read(4)
    return layer_blob.by_head(head) != layer_blob.PLAIN
