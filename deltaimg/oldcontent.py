"""The old image's content, as the source of references for deltas.

Both sides see the old image the same way: layer ``L`` of the base image, entry ``i`` of that
layer's tar (as :mod:`deltaimg.tarsplit` numbers them), its raw header bytes or its payload.
The bundle refers to old content only by those coordinates, so the applier needs nothing but
the base image's layers to resolve them.

Layers are read in place when their uncompressed bytes sit in a file (legacy ``docker save``,
uncompressed OCI blobs); compressed ones are decompressed once into the work directory.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from deltaimg.errors import ImageReadError
from deltaimg.images.base import Image
from deltaimg.images.blobs import open_range
from deltaimg.tarsplit import REGULAR_TYPES, TRAILER, TarSplitter

COPY_CHUNK = 1 << 20
# Version numbers, and the hex hashes wheels put in vendored library names
# (numpy.libs/libopenblas64_p-r0-0cf96a72.3.23.dev.so), become '#'.
_VERSION_RE = re.compile(r"[0-9a-f]*[0-9][0-9a-f]*")


@dataclass(frozen=True)
class OldEntry:
    layer: int
    index: int
    name: str
    pre_offset: int
    pre_len: int
    size: int
    typeflag: str

    @property
    def data_offset(self) -> int:
        return self.pre_offset + self.pre_len

    @property
    def is_regular(self) -> bool:
        return self.typeflag in REGULAR_TYPES


class OldContent:
    """Random access to the entries of every layer of the old image."""

    def __init__(self, image: Image, workdir: str) -> None:
        self.image = image
        self._workdir = workdir
        self._files: dict[int, tuple[str, int, int]] = {}
        self._entries: dict[int, list[OldEntry]] = {}
        self._handles: dict[str, BinaryIO] = {}

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __enter__(self) -> OldContent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- where each layer's uncompressed bytes are -------------------------------------------
    def _local(self, layer: int) -> tuple[str, int, int]:
        if layer not in self._files:
            if not 0 <= layer < len(self.image.layers):
                raise ImageReadError(f"the bundle refers to base layer {layer}, which the base lacks")
            source = self.image.layers[layer]
            if source.local is not None:
                self._files[layer] = source.local
            else:
                path = os.path.join(self._workdir, f"old-layer-{layer}.tar")
                digest = hashlib.sha256()
                with source.open() as src, open(path, "wb") as dst:
                    while chunk := src.read(COPY_CHUNK):
                        digest.update(chunk)
                        dst.write(chunk)
                if "sha256:" + digest.hexdigest() != source.diff_id:
                    raise ImageReadError(
                        f"{self.image.source}: layer {layer} does not hash to its diff_id "
                        f"{source.diff_id[:19]}; the base image is damaged"
                    )
                self._files[layer] = (path, 0, os.path.getsize(path))
        return self._files[layer]

    def layer_size(self, layer: int) -> int:
        """Size of the layer's uncompressed tar (decompressing it into the work directory if need be)."""
        return self._local(layer)[2]

    def open_layer(self, layer: int) -> BinaryIO:
        return open_range(*self._local(layer))

    def _handle(self, path: str) -> BinaryIO:
        if path not in self._handles:
            self._handles[path] = open(path, "rb")
        return self._handles[path]

    # -- entries ----------------------------------------------------------------------------
    def entries(self, layer: int) -> list[OldEntry]:
        """The layer's entries (headers only: payloads are skipped by seeking)."""
        if layer not in self._entries:
            self._entries[layer] = [entry for entry, _ in self._scan(layer, hash_payloads=False)]
        return self._entries[layer]

    def scan_with_digests(self, layer: int) -> Iterator[tuple[OldEntry, bytes | None]]:
        """Each entry with the sha256 of its payload (regular files only); caches the entries."""
        collected = []
        for entry, digest in self._scan(layer, hash_payloads=True):
            collected.append(entry)
            yield entry, digest
        self._entries[layer] = collected
        self._check_in_place(layer)

    def _check_in_place(self, layer: int) -> None:
        """make encodes against the old layers' bytes: they must be those their diff_ids name. A
        decompressed layer was checked on the way; one read in place is checked here, once."""
        source = self.image.layers[layer]
        if source.local is None:
            return
        digest = hashlib.sha256()
        with open_range(*source.local) as stream:
            while chunk := stream.read(COPY_CHUNK):
                digest.update(chunk)
        if "sha256:" + digest.hexdigest() != source.diff_id:
            raise ImageReadError(f"{self.image.source}: layer {layer} does not hash to its diff_id "
                                 f"{source.diff_id[:19]}; the image is damaged")

    def _scan(self, layer: int, hash_payloads: bool) -> Iterator[tuple[OldEntry, bytes | None]]:
        path, offset, size = self._local(layer)
        with open_range(path, offset, size) as stream:
            splitter = TarSplitter(stream)
            try:
                for entry in splitter:
                    if entry.typeflag == TRAILER:
                        return
                    digest = None
                    if hash_payloads and entry.is_file:
                        h = hashlib.sha256()
                        for chunk in splitter.payload_chunks():
                            h.update(chunk)
                        digest = h.digest()
                    yield OldEntry(
                        layer, entry.index, entry.name, entry.offset, len(entry.pre), entry.size, entry.typeflag
                    ), digest
            except EOFError:
                raise ImageReadError(f"{self.image.source}: layer {layer} is a truncated tar") from None

    def entry(self, layer: int, index: int) -> OldEntry:
        entries = self.entries(layer)
        if not 0 <= index < len(entries):
            raise ImageReadError(f"the bundle refers to entry {index} of base layer {layer}, which it lacks")
        return entries[index]

    # -- bytes ------------------------------------------------------------------------------
    def read(self, layer: int, offset: int, length: int) -> bytes:
        path, base, size = self._local(layer)
        if offset < 0 or length < 0 or offset + length > size:
            raise ImageReadError(f"the bundle refers to bytes past the end of base layer {layer}")
        handle = self._handle(path)
        handle.seek(base + offset)
        data = handle.read(length)
        if len(data) != length:
            raise ImageReadError(f"{path}: base layer {layer} is shorter than expected")
        return data

    def read_pre(self, entry: OldEntry) -> bytes:
        return self.read(entry.layer, entry.pre_offset, entry.pre_len)

    def read_data(self, entry: OldEntry, start: int = 0, length: int | None = None) -> bytes:
        length = entry.size - start if length is None else length
        return self.read(entry.layer, entry.data_offset + start, length)

    def copy_data(self, entry: OldEntry, write) -> None:
        """Stream an entry's payload to ``write`` in bounded pieces."""
        done = 0
        while done < entry.size:
            n = min(COPY_CHUNK, entry.size - done)
            write(self.read_data(entry, done, n))
            done += n


class OldIndex:
    """Lookup of old entries by content and by name, built by make while hashing the old image."""

    def __init__(self, content: OldContent) -> None:
        self.content = content
        self.by_digest: dict[bytes, OldEntry] = {}
        self.by_path: dict[str, OldEntry] = {}
        self.by_basename: dict[str, list[OldEntry]] = {}
        self.by_pattern: dict[str, list[OldEntry]] = {}
        for layer in range(len(content.image.layers)):
            if content.image.diff_ids.index(content.image.layers[layer].diff_id) != layer:
                continue  # the same layer twice: index it once
            for entry, digest in content.scan_with_digests(layer):
                self._add(entry, digest)
        for table in (self.by_basename, self.by_pattern):
            for candidates in table.values():
                candidates.sort(key=lambda e: e.size)

    def _add(self, entry: OldEntry, digest: bytes | None) -> None:
        if digest is not None:
            self.by_digest.setdefault(digest, entry)
        path = normalize(entry.name)
        self.by_path[path] = entry  # upper layers overwrite lower: the visible file wins
        if entry.is_regular:
            self.by_basename.setdefault(os.path.basename(path), []).append(entry)
            self.by_pattern.setdefault(version_pattern(path), []).append(entry)

    def partner(self, name: str, size: int, regular: bool) -> OldEntry | None:
        """The most similar old entry: same path, else same file name, else same path with other
        version numbers (``numpy-1.26.3.dist-info`` for ``numpy-1.26.4.dist-info``)."""
        path = normalize(name)
        same = self.by_path.get(path)
        if same is not None and (same.is_regular == regular):
            return same
        if not regular:
            return same
        for candidates in (self.by_basename.get(os.path.basename(path)), self.by_pattern.get(version_pattern(path))):
            if candidates:
                return _nearest_size(candidates, size)
        return None


def _nearest_size(candidates: list[OldEntry], size: int) -> OldEntry:
    """The candidate closest in size; ``candidates`` is sorted by size."""
    at = bisect.bisect_left(candidates, size, key=lambda e: e.size)
    nearby = candidates[max(0, at - 1) : at + 1]
    return min(nearby, key=lambda e: abs(e.size - size))


def normalize(name: str) -> str:
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def version_pattern(path: str) -> str:
    """``numpy-1.26.3.dist-info/RECORD`` and ``numpy-1.26.4.dist-info/RECORD`` share a pattern."""
    return _VERSION_RE.sub("#", path)
