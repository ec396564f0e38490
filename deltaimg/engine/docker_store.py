"""Docker's overlay2 image store, read in place: an image's config and its layer tars without ``docker save``.

Every ``docker save`` makes the engine copy the whole image into a temporary directory and tar it
again, and the Engine API has no other call that hands out config bytes or layer tars: an apply that
needs a few files of the base pays for exporting all of it, once or twice. When deltaimg runs as
root on the engine's host, the store itself says everything ``docker save`` would:

- ``image/overlay2/imagedb/content/sha256/<image id>``: the config, byte for byte;
- ``image/overlay2/layerdb/sha256/<chain id>/tar-split.json.gz``: the layer tar as raw header and
  padding segments and file entries (tar-split's format), and ``cache-id`` naming the layer's
  directory ``overlay2/<cache id>/diff``, which holds the entries' contents.

Reassembling segments and contents is exactly what the engine does for ``docker save``. Nothing
read here is trusted: the config must hash to the image ID and each layer to its diff_id (the
caller's :class:`~deltaimg.streams.HashingReader` checks that), a record line is capped, an entry's
path must stay inside the layer's directory and name a regular file. Whatever is missing, malformed
or unreadable makes :meth:`DockerStore.config` or :meth:`DockerStore.layer` return None, and the
caller falls back to ``docker save``.
"""

from __future__ import annotations

import base64
import bisect
import gzip
import hashlib
import io
import json
import os
import re
import stat
import zlib
from typing import BinaryIO, Iterator

from deltaimg.errors import EngineError
from deltaimg.streams import ChunkReader

MAX_CONFIG_SIZE = 32 << 20
MAX_RECORD = 1 << 20  # one tar-split line: a segment is header and padding bytes, an entry a name
CHUNK = 1 << 20
SEGMENT, ENTRY = 2, 1  # tar-split's record types
HEX = re.compile(r"[0-9a-f]{64}")


class DockerStore:
    """The overlay2 store under ``data_root`` (``docker info``'s DockerRootDir)."""

    def __init__(self, data_root: str) -> None:
        self._images = os.path.join(data_root, "image", "overlay2")
        self._layers = os.path.join(data_root, "overlay2")

    @classmethod
    def open(cls, data_root: str | None, driver: str | None) -> DockerStore | None:
        """The store, when the engine uses overlay2 and this process may read it (root on its host)."""
        if driver != "overlay2" or not data_root:
            return None
        store = cls(data_root)
        if not os.access(os.path.join(store._images, "imagedb", "content", "sha256"), os.R_OK | os.X_OK):
            return None
        return store

    def config(self, image_id: str) -> bytes | None:
        """The config bytes of ``image_id``, checked against it; None when the store lacks them."""
        hexdigest = image_id.removeprefix("sha256:")
        if not HEX.fullmatch(hexdigest):
            return None
        data = _read_capped(os.path.join(self._images, "imagedb", "content", "sha256", hexdigest), MAX_CONFIG_SIZE)
        if data is None or hashlib.sha256(data).hexdigest() != hexdigest:
            return None
        return data

    def layer(self, chain_id: str) -> BinaryIO | None:
        """The tar of the layer whose chain ID is ``chain_id``, reassembled as ``docker save`` would
        write it; None when its records are not there. The caller checks the bytes against the diff_id."""
        hexdigest = chain_id.removeprefix("sha256:")
        if not HEX.fullmatch(hexdigest):
            return None
        record_dir = os.path.join(self._images, "layerdb", "sha256", hexdigest)
        cache_id = _read_capped(os.path.join(record_dir, "cache-id"), 256)
        split = os.path.join(record_dir, "tar-split.json.gz")
        if cache_id is None or not re.fullmatch(rb"[0-9a-z]{1,128}", cache_id.strip()) or not os.path.isfile(split):
            return None
        diff_dir = os.path.join(self._layers, cache_id.strip().decode(), "diff")
        if not os.path.isdir(diff_dir):
            return None
        return io.BufferedReader(ChunkReader(_reassemble(split, diff_dir)), buffer_size=CHUNK)  # type: ignore[arg-type]


    def layer_paths(self, chain_id: str, diff_id: str) -> tuple[str, str] | None:
        """The layer's tar-split record and its directory, when the store's record of ``chain_id``
        is there and names ``diff_id``; else None."""
        hexdigest = chain_id.removeprefix("sha256:")
        if not HEX.fullmatch(hexdigest):
            return None
        record_dir = os.path.join(self._images, "layerdb", "sha256", hexdigest)
        recorded = _read_capped(os.path.join(record_dir, "diff"), 256)
        cache_id = _read_capped(os.path.join(record_dir, "cache-id"), 256)
        split = os.path.join(record_dir, "tar-split.json.gz")
        if (recorded is None or recorded.strip().decode(errors="replace") != diff_id or cache_id is None
                or not re.fullmatch(rb"[0-9a-z]{1,128}", cache_id.strip()) or not os.path.isfile(split)):
            return None
        diff_dir = os.path.join(self._layers, cache_id.strip().decode(), "diff")
        return (split, diff_dir) if os.path.isdir(diff_dir) else None


def layer_view(split: str, diff_dir: str) -> StoreLayerView | None:
    """The layer (see :meth:`DockerStore.layer_paths`) as a seekable file read in place: its headers
    from the tar-split record, its files' bytes from the layer's directory, each only when read.
    None when the record holds more header bytes than :data:`MAX_HEADERS`. Nothing here hashes
    the layer (that reads all of it): the caller checks what it makes of the bytes."""
    return _view(split, diff_dir)


MAX_HEADERS = 64 << 20  # header and padding bytes of one layer kept in memory for a view


class StoreLayerView(io.RawIOBase):
    """A layer tar laid out as extents: header bytes held, file contents read from the layer's
    directory on demand (a file shorter than its record is an :class:`EngineError`). :meth:`copy`
    is another reader of the same extents."""

    def __init__(self, starts: list[int], extents: list[bytes | tuple[str, int]], size: int) -> None:
        self._starts = starts
        self._extents = extents
        self._size = size
        self._position = 0
        self._open: tuple[str, BinaryIO] | None = None

    def copy(self) -> StoreLayerView:
        return StoreLayerView(self._starts, self._extents, self._size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self._position = max(0, pos if whence == 0 else self._position + pos if whence == 1 else self._size + pos)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._position >= self._size or not len(buffer):
            return 0
        at = bisect.bisect_right(self._starts, self._position) - 1
        extent, start = self._extents[at], self._starts[at]
        within = self._position - start
        length = (self._starts[at + 1] if at + 1 < len(self._starts) else self._size) - start
        count = min(len(buffer), length - within)
        if isinstance(extent, bytes):
            buffer[:count] = extent[within : within + count]
        else:
            buffer[:count] = self._read_file(extent[0], within, count)
        self._position += count
        return count

    def _read_file(self, path: str, offset: int, count: int) -> bytes:
        if self._open is None or self._open[0] != path:
            self.close_file()
            self._open = (path, _open_regular(path))
        data = os.pread(self._open[1].fileno(), count, offset)
        if len(data) != count:
            raise _damaged(f"{path} is shorter than its layer records")
        return data

    def close_file(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def close(self) -> None:
        self.close_file()
        super().close()


def _view(split: str, diff_dir: str) -> StoreLayerView | None:
    root = os.path.realpath(diff_dir)
    starts: list[int] = []
    extents: list[bytes | tuple[str, int]] = []
    at = held = 0
    for kind, value in _records(split):
        if kind == SEGMENT:
            if value:
                starts.append(at)
                extents.append(value)  # type: ignore[arg-type]
                at += len(value)  # type: ignore[arg-type]
                held += len(value)  # type: ignore[arg-type]
                if held > MAX_HEADERS:
                    return None
        else:
            name, size = value  # type: ignore[misc]
            if size:
                path = os.path.realpath(os.path.join(root, name.lstrip("/")))
                if not path.startswith(root + os.sep):
                    raise _damaged(f"tar-split names {name!r}, outside the layer's directory")
                starts.append(at)
                extents.append((path, size))
                at += size
    return StoreLayerView(starts, extents, at)


def _open_regular(path: str) -> BinaryIO:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise _damaged(f"cannot read {path}: {exc.strerror}") from None
    handle = os.fdopen(fd, "rb", buffering=0)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise _damaged(f"{path} is not a regular file")
    return handle  # type: ignore[return-value]


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The chain ID of every layer: the first is its diff_id, each next the sha256 of
    ``"<chain id below> <diff_id>"`` (the OCI image spec's ChainID)."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else
                     "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


def _reassemble(split: str, diff_dir: str) -> Iterator[bytes]:
    """The layer's bytes; whatever goes wrong once its read began (a damaged gzip, an unreadable
    file, a name the file system refuses) is one :class:`EngineError`."""
    try:
        yield from _pieces(split, diff_dir)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise _damaged(f"cannot reassemble a layer from {split}: {exc}") from None


def _pieces(split: str, diff_dir: str) -> Iterator[bytes]:
    root = os.path.realpath(diff_dir)
    for kind, value in _records(split):
        if kind == SEGMENT:
            yield value  # type: ignore[misc]
        elif value[1]:  # type: ignore[index]
            yield from _contents(root, *value)  # type: ignore[misc]


def _records(split: str) -> Iterator[tuple[int, bytes | tuple[str, int]]]:
    """(SEGMENT, its bytes) and (ENTRY, (name, size)) in the layer's order; a malformed record is an
    :class:`EngineError`, as is a damaged gzip."""
    try:
        with gzip.open(split, "rb") as records:
            while True:
                line = records.readline(MAX_RECORD + 1)
                if not line:
                    return
                if len(line) > MAX_RECORD:
                    raise _damaged(f"a tar-split record in {split} is longer than {MAX_RECORD} bytes")
                try:
                    record = json.loads(line)
                    kind = record["type"]
                except (ValueError, TypeError, KeyError) as exc:
                    raise _damaged(f"a tar-split record in {split} is not one: {exc}") from None
                if kind == SEGMENT:
                    try:
                        yield SEGMENT, base64.b64decode(record.get("payload") or "", validate=True)
                    except (ValueError, TypeError) as exc:
                        raise _damaged(f"a tar-split segment in {split} is not base64: {exc}") from None
                elif kind == ENTRY:
                    size = record.get("size", 0)  # omitted when 0
                    if not isinstance(size, int) or size < 0:
                        raise _damaged(f"a tar-split entry in {split} has no size")
                    yield ENTRY, (_entry_name(record, split), size)
                else:
                    raise _damaged(f"a tar-split record in {split} has type {kind!r}")
    except (OSError, EOFError, zlib.error) as exc:
        raise _damaged(f"cannot reassemble a layer from {split}: {exc}") from None


def _entry_name(record: dict, split: str) -> str:
    if record.get("name_raw"):
        try:
            return os.fsdecode(base64.b64decode(record["name_raw"], validate=True))
        except (ValueError, TypeError):
            raise _damaged(f"a tar-split entry in {split} has a name_raw that is not base64") from None
    name = record.get("name")
    if not isinstance(name, str):
        raise _damaged(f"a tar-split entry in {split} has no name")
    return name


def _contents(root: str, name: str, size: int) -> Iterator[bytes]:
    """``size`` bytes of the regular file ``name`` in the layer directory ``root``."""
    path = os.path.realpath(os.path.join(root, name.lstrip("/")))
    if not path.startswith(root + os.sep):
        raise _damaged(f"tar-split names {name!r}, outside the layer's directory")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise _damaged(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb", buffering=0) as source:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _damaged(f"{path} is not a regular file")
        left = size
        while left:
            data = source.read(min(left, CHUNK))
            if not data:
                raise _damaged(f"{path} is shorter than the {size} bytes its layer records")
            left -= len(data)
            yield data


def _read_capped(path: str, cap: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError:
        return None
    return data if len(data) <= cap else None


def _damaged(what: str) -> EngineError:
    """A layer that cannot be reassembled once its read began: no falling back then."""
    return EngineError(f"Docker's layer store: {what}; the store may be damaged (docker save of the image "
                       "would fail the same way): re-pull or reload the image")
