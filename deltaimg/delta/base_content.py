"""The base image's content, as the source of references for deltas.

Both sides see the base image the same way: layer ``L`` of the base image, entry ``i`` of that
layer's tar (as :mod:`deltaimg.tar.split` numbers them), its raw header bytes or its payload.
The bundle refers to base content only by those coordinates, so the applier needs nothing but
the base image's layers to resolve them.

Layers are read in place when their uncompressed bytes sit in a file (legacy ``docker save``,
uncompressed OCI blobs). Others (compressed blobs, an engine's image) are decompressed once
into the work directory, unless the base image is opened ``partial``: then those layers are only
streamed past, and just the parts of the entries that will be read are kept, in sparse files
(:meth:`BaseContent.fetch_entries`), so neither make nor apply holds a full copy of an engine's
image on disk. make streams them twice (to index them, then to keep what its deltas read), apply
once.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, NamedTuple

from deltaimg.errors import ImageReadError, OutputError
from deltaimg.images.model import Image
from deltaimg.images.blobs import open_range
from deltaimg.streams import HashingReader
from deltaimg.delta.recipe import PART_PRE
from deltaimg.tar.split import REGULAR_TYPES, TRAILER, Entry, TarSplitter

COPY_CHUNK = 1 << 20
# Version numbers, and the hex hashes wheels put in vendored library names
# (numpy.libs/libopenblas64_p-r0-0cf96a72.3.23.dev.so), become '#'.
_VERSION_RE = re.compile(r"[0-9a-f]*[0-9][0-9a-f]*")


@dataclass(frozen=True, slots=True)  # slots: a million entries in 72 MiB, not 250
class BaseEntry:
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

    def part(self, part: int) -> tuple[int, int]:
        """(offset in its layer, length) of the entry's header (``PART_PRE``) or payload."""
        return (self.pre_offset, self.pre_len) if part == PART_PRE else (self.data_offset, self.size)

    @property
    def is_regular(self) -> bool:
        return self.typeflag in REGULAR_TYPES


class BaseRead(NamedTuple):
    """Bytes a layer delta reads of the base: ``length`` bytes (None: to its end) from ``start`` of
    part ``part`` (PART_PRE, the header; PART_DATA, the payload) of entry ``index`` of base layer ``layer``."""

    layer: int
    index: int
    part: int
    start: int
    length: int | None


class BaseContent:
    """Random access to the entries of every layer of the base image."""

    def __init__(self, image: Image, workdir: str, partial: bool = False, in_place: bool = False) -> None:
        """``in_place``: read the layers the image offers in place (:attr:`Layer.in_place`, Docker's
        store) at the bytes wanted only, unhashed: whoever is given those bytes checks what it makes of
        them (engine apply: each rebuilt layer against its diff_id, before the engine keeps it)."""
        self.image = image
        self._workdir = workdir
        self._files: dict[int, tuple[str, int, int]] = {}
        self._entries: dict[int, list[BaseEntry]] = {}
        self._handles: dict[str, BinaryIO] = {}
        self._written: list[str] = []  # files made in the work directory
        distinct = [position for position, diff_id in enumerate(image.diff_ids) if image.diff_ids.index(diff_id) == position]
        # Layers never copied whole; _covered holds, once fetched, the (start, end) ranges kept of each.
        self._in_place = {layer for layer in distinct if in_place and image.layers[layer].local is None
                          and image.layers[layer].in_place is not None}
        self.streamed = [layer for layer in distinct
                         if partial and image.layers[layer].local is None and layer not in self._in_place]
        self._sizes: dict[int, int] = {}
        self._covered: dict[int, list[tuple[int, int]]] = {}

    def close(self) -> None:
        """Close the layer files and remove those written into the work directory."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        for path in self._written:
            if os.path.exists(path):
                os.unlink(path)
        self._written.clear()

    def __enter__(self) -> BaseContent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- where each layer's uncompressed bytes are -------------------------------------------
    def _local(self, layer: int) -> tuple[str, int, int]:
        if layer not in self._files:
            if not 0 <= layer < len(self.image.layers):
                raise ImageReadError(f"the bundle refers to base layer {layer}, which the base lacks")
            if layer in self.streamed:
                raise RuntimeError(f"base layer {layer} is read in part, and fetch_entries has not run")
            source = self.image.layers[layer]
            if layer in self._in_place:
                key = f"in place: base layer {layer}"
                self._handles[key] = handle = self._open(layer)
                self._files[layer] = (key, 0, handle.seek(0, os.SEEK_END))
            elif source.local is not None:
                self._files[layer] = source.local
            else:
                path = os.path.join(self._workdir, f"base-layer-{layer}.tar")
                self._written.append(path)
                digest = hashlib.sha256()
                with source.open() as src, open(path, "wb") as dst:
                    while chunk := src.read(COPY_CHUNK):
                        digest.update(chunk)
                        _write_work(dst, chunk, layer, self._workdir)
                self._check(layer, digest)
                self._files[layer] = (path, 0, os.path.getsize(path))
        return self._files[layer]

    def _check(self, layer: int, digest) -> None:
        """make encodes against the base layers' bytes, apply rebuilds from them: they must be
        those their diff_ids name."""
        diff_id = self.image.layers[layer].diff_id
        if "sha256:" + digest.hexdigest() != diff_id:
            raise ImageReadError(f"{self.image.source}: base layer {layer} does not hash to its diff_id "
                                 f"{diff_id[:19]}; the base image is damaged: export it again")

    def layer_size(self, layer: int) -> int:
        """Size of the layer's uncompressed tar (decompressing it into the work directory if need be)."""
        if layer not in self._sizes and layer in self.streamed:
            for _ in self._stream(set(self.streamed) - self._sizes.keys()):
                pass
        return self._sizes[layer] if layer in self._sizes else self._local(layer)[2]

    def _stream(self, layers: set[int]) -> Iterator[tuple[int, HashingReader]]:
        """Each of these streamed layers once, in the order the image reads them cheapest; what
        the caller leaves unread is read, then the layer's size noted and its digest checked."""
        positions = {self.image.layers[layer].diff_id: layer for layer in layers}
        for diff_id, stream in self.image.layer_streams(set(positions)):
            layer = positions[diff_id]
            reader = HashingReader(stream)
            yield layer, reader
            reader.drain()
            self._check(layer, reader.digest)
            self._sizes[layer] = reader.size

    def fetch_entries(self, references: Iterable[BaseRead]) -> None:
        """In one pass over the streamed layers, keep the parts of base entries these references
        name, each as its entry goes by, in a sparse file of the layer's size. Reading anything else of
        those layers is a bug and raises. A reference past its entry's end keeps nothing here;
        the decoder refuses it."""
        wanted: dict[int, dict[int, list[tuple[int, int, int | None]]]] = {}
        for layer, index, part, start, length in references:
            if layer in self.streamed:
                wanted.setdefault(layer, {}).setdefault(index, []).append((part, start, length))
        kept: dict[int, list[tuple[int, int]]] = {}
        for layer, reader in self._stream(set(wanted)):
            path = os.path.join(self._workdir, f"base-layer-{layer}.part")
            self._written.append(path)
            kept[layer] = []
            with open(path, "wb") as out:
                def keep(splitter: TarSplitter, entry: Entry, base: BaseEntry, layer: int = layer, out=out) -> None:
                    ranges = [r for ref in wanted[layer].get(base.index, ()) if (r := _within(base, *ref))]
                    if ranges:
                        kept[layer].extend(ranges)
                        _keep(splitter, entry, base, ranges, out)
                self._entries[layer] = [entry for entry, _ in self._scan_stream(layer, reader, keep)]  # type: ignore[arg-type]
        for layer, ranges in kept.items():
            self._files[layer] = (os.path.join(self._workdir, f"base-layer-{layer}.part"), 0, self._sizes[layer])
            self._covered[layer] = _merged(ranges)

    def open_layer(self, layer: int) -> BinaryIO:
        return self._open(layer)

    def _open(self, layer: int) -> BinaryIO:
        if layer in self._in_place:
            return self.image.layers[layer].in_place()  # type: ignore[misc]
        return open_range(*self._local(layer))

    def _handle(self, path: str) -> BinaryIO:
        if path not in self._handles:
            self._handles[path] = open(path, "rb")
        return self._handles[path]

    # -- entries ----------------------------------------------------------------------------
    def entries(self, layer: int) -> list[BaseEntry]:
        """The layer's entries (headers only: payloads are skipped by seeking)."""
        if layer not in self._entries:
            self._entries[layer] = [entry for entry, _ in self._scan(layer)]
        return self._entries[layer]

    def scan_with_digests(self) -> Iterator[tuple[BaseEntry, bytes | None]]:
        """Each entry of each distinct layer, lowest layer first, with the sha256 of its payload
        (regular files only); caches the entries. Streamed layers come in one pass first, in the
        image's order, and wait in memory (as entries) for their turn."""
        streamed: dict[int, list[tuple[BaseEntry, bytes | None]]] = {}
        for layer, reader in self._stream(set(self.streamed)):
            streamed[layer] = list(self._scan_stream(layer, reader, _payload_digest))  # type: ignore[arg-type]
        for layer, diff_id in enumerate(self.image.diff_ids):
            if layer in streamed:
                found = streamed.pop(layer)
            elif self.image.diff_ids.index(diff_id) == layer:  # read in place: hashed as it is scanned, in one pass
                with self._open(layer) as stream:
                    reader = HashingReader(stream)
                    found = list(self._scan_stream(layer, reader, _payload_digest))  # type: ignore[arg-type]
                    reader.drain()
                self._check(layer, reader.digest)
            else:
                continue  # the same layer twice: once is enough
            self._entries[layer] = [entry for entry, _ in found]
            yield from found

    def check_layers_read(self) -> None:
        """Raise :class:`ImageReadError` naming the first base layer read in place that does not hash
        to its diff_id. Layers read in place are not hashed on the way (a rebuild seeks in them); when
        a rebuilt layer does not hash to its diff_id, this tells a damaged base from a damaged bundle."""
        for layer in sorted(self._files):
            self._check_in_place(layer)

    def _check_in_place(self, layer: int) -> None:
        """A decompressed layer was checked on the way; one read in place is checked here, once."""
        source = self.image.layers[layer]
        if source.local is None and layer not in self._in_place:
            return
        digest = hashlib.sha256()
        with self._open(layer) as stream:
            while chunk := stream.read(COPY_CHUNK):
                digest.update(chunk)
        self._check(layer, digest)

    def _scan(self, layer: int, visit: Visit | None = None) -> Iterator[tuple[BaseEntry, bytes | None]]:
        with self._open(layer) as stream:
            yield from self._scan_stream(layer, stream, visit)

    def _scan_stream(self, layer: int, stream: BinaryIO, visit: Visit | None = None) -> Iterator[tuple[BaseEntry, bytes | None]]:
        """The layer's entries, each with what ``visit`` (which may read its payload) returned."""
        splitter = TarSplitter(stream)
        try:
            for entry in splitter:
                if entry.typeflag == TRAILER:
                    return
                base = BaseEntry(layer, entry.index, entry.name, entry.offset, len(entry.pre), entry.size, entry.typeflag)
                yield base, visit(splitter, entry, base) if visit else None
        except EOFError:
            raise truncated(f"{self.image.source}: layer {layer} ({self.image.layers[layer].diff_id}) of the base image") from None

    def entry(self, layer: int, index: int) -> BaseEntry:
        entries = self.entries(layer)
        if not 0 <= index < len(entries):
            raise ImageReadError(f"the bundle refers to entry {index} of base layer {layer}, which it lacks")
        return entries[index]

    # -- bytes ------------------------------------------------------------------------------
    def read(self, layer: int, offset: int, length: int) -> bytes:
        path, start, size = self._local(layer)
        if offset < 0 or length < 0 or offset + length > size:
            raise ImageReadError(f"the bundle refers to bytes past the end of base layer {layer}")
        if not length:
            return b""
        if layer in self._covered and not _covers(self._covered[layer], offset, offset + length):
            raise RuntimeError(f"bytes {offset}+{length} of base layer {layer} were not fetched")
        handle = self._handle(path)
        handle.seek(start + offset)
        data = handle.read(length)
        if len(data) != length:
            raise ImageReadError(f"{path}: base layer {layer} is shorter than expected")
        return data

    def read_pre(self, entry: BaseEntry) -> bytes:
        return self.read(entry.layer, entry.pre_offset, entry.pre_len)

    def read_data(self, entry: BaseEntry, start: int = 0, length: int | None = None) -> bytes:
        length = entry.size - start if length is None else length
        return self.read(entry.layer, entry.data_offset + start, length)

    def copy_data(self, entry: BaseEntry, write) -> None:
        """Stream an entry's payload to ``write`` in bounded pieces."""
        done = 0
        while done < entry.size:
            n = min(COPY_CHUNK, entry.size - done)
            write(self.read_data(entry, done, n))
            done += n


class BaseIndex:
    """Lookup of base entries by content and by name, built by make while hashing the base image."""

    def __init__(self, content: BaseContent) -> None:
        self.content = content
        self.by_digest: dict[bytes, BaseEntry] = {}
        self.by_path: dict[str, BaseEntry] = {}
        # A name's candidates: one entry as itself (most names are unique: a list each would cost
        # 72 bytes more a file), more as a list sorted by size.
        self.by_basename: dict[str, BaseEntry | list[BaseEntry]] = {}
        self.by_pattern: dict[str, BaseEntry | list[BaseEntry]] = {}
        for entry, digest in content.scan_with_digests():
            self._add(entry, digest)
        for table in (self.by_basename, self.by_pattern):
            for candidates in table.values():
                if isinstance(candidates, list):
                    candidates.sort(key=lambda e: e.size)

    def _add(self, entry: BaseEntry, digest: bytes | None) -> None:
        if digest is not None:
            self.by_digest.setdefault(digest, entry)
        path = normalize(entry.name)
        self.by_path[path] = entry  # upper layers overwrite lower: the visible file wins
        if entry.is_regular:
            _add_candidate(self.by_basename, os.path.basename(path), entry)
            _add_candidate(self.by_pattern, version_pattern(path), entry)

    def home(self, layer: int | None) -> dict[str, BaseEntry]:
        """The paths of the base layer a target layer replaces (made by the same build step, so its
        entries are the likeliest to match), for :meth:`partner`."""
        return {} if layer is None else {normalize(entry.name): entry for entry in self.content.entries(layer)}

    def partner(self, name: str, size: int, regular: bool, home: dict[str, BaseEntry]) -> BaseEntry | None:
        """The most similar base entry: same path in ``home`` (see :meth:`home`), else the same
        path where it is visible, else the same file name, else the same path with other version
        numbers (``numpy-1.26.3.dist-info`` for ``numpy-1.26.4.dist-info``)."""
        path = normalize(name)
        same = home.get(path) or self.by_path.get(path)
        if same is not None and (same.is_regular == regular):
            return same
        if not regular:
            return same
        for candidates in (self.by_basename.get(os.path.basename(path)), self.by_pattern.get(version_pattern(path))):
            if isinstance(candidates, BaseEntry):
                return candidates
            if candidates:
                return _nearest_size(candidates, size)
        return None


def _add_candidate(table: dict[str, BaseEntry | list[BaseEntry]], key: str, entry: BaseEntry) -> None:
    held = table.get(key)
    if held is None:
        table[key] = entry
    elif isinstance(held, list):
        held.append(entry)
    else:
        table[key] = [held, entry]


Visit = Callable[[TarSplitter, Entry, BaseEntry], "bytes | None"]


def _write_work(out: BinaryIO, data: bytes, layer: int, workdir: str) -> None:
    """A write into the work directory; its failure names that directory, not the command's output
    (a compressed base layer may decompress to far more than it looked)."""
    try:
        out.write(data)
    except OSError as exc:
        raise OutputError(f"cannot decompress base layer {layer} into {workdir}: {exc.strerror}; free space there "
                          "or point TMPDIR at a larger disk, and run again") from None


def _payload_digest(splitter: TarSplitter, entry: Entry, base: BaseEntry) -> bytes | None:
    """The sha256 of a regular file's payload."""
    if not entry.is_file:
        return None
    digest = hashlib.sha256()
    for chunk in splitter.payload_chunks():
        digest.update(chunk)
    return digest.digest()


def _within(entry: BaseEntry, part: int, start: int, length: int | None) -> tuple[int, int] | None:
    """The (start, end) of a reference to an entry's part in its layer; None past the part's end."""
    offset, limit = entry.part(part)
    end = limit if length is None else start + length
    return (offset + start, offset + end) if start < end <= limit else None


def _keep(splitter: TarSplitter, entry: Entry, base: BaseEntry, ranges: list[tuple[int, int]], out: BinaryIO) -> None:
    """Write the bytes of ``ranges`` that fall in this entry at their offsets in ``out``: from its
    header, then from its payload as it is read (only if a range reaches into it)."""
    _write_overlaps(out, ranges, base.pre_offset, entry.pre)
    position = base.data_offset
    if any(start < position + base.size and end > position for start, end in ranges):
        for chunk in splitter.payload_chunks():
            _write_overlaps(out, ranges, position, chunk)
            position += len(chunk)


def _write_overlaps(out: BinaryIO, ranges: list[tuple[int, int]], position: int, data: bytes) -> None:
    for start, end in ranges:
        lo, hi = max(start, position), min(end, position + len(data))
        if lo < hi:
            out.seek(lo)
            out.write(data[lo - position : hi - position])


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _covers(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    at = bisect.bisect_right(ranges, (start, float("inf"))) - 1
    return at >= 0 and ranges[at][1] >= end


def _nearest_size(candidates: list[BaseEntry], size: int) -> BaseEntry:
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


def truncated(layer: str) -> ImageReadError:
    """The error for ``layer`` (described with its image) ending inside an entry."""
    return ImageReadError(f"{layer} is a truncated tar; rebuild or re-export the image")
