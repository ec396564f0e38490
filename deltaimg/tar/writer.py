"""Writing ``docker save``-style archives (the legacy form every ``docker load`` accepts).

Layers are streamed into the archive and hashed on the way: a layer that does not hash to its
diff_id, or is not the size the manifest promised, fails the write.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from typing import BinaryIO, Callable

from deltaimg.errors import IntegrityError

BLOCK = 512
Fill = Callable[[Callable[[bytes], object]], None]


class ArchiveWriter:
    """A tar stream of whole members; member sizes are known up front."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._names: set[str] = set()

    def _header(self, name: str, size: int, kind: bytes = tarfile.REGTYPE) -> None:
        info = tarfile.TarInfo(name)
        info.size = size if kind == tarfile.REGTYPE else 0
        info.type = kind
        info.mode = 0o644 if kind == tarfile.REGTYPE else 0o755
        info.mtime = 0
        self._out.write(info.tobuf(format=tarfile.PAX_FORMAT))

    def add_dir(self, name: str) -> None:
        if name not in self._names:
            self._names.add(name)
            self._header(name, 0, tarfile.DIRTYPE)

    def add_bytes(self, name: str, data: bytes) -> None:
        self._header(name, len(data))
        self._out.write(data)
        self._out.write(bytes((-len(data)) % BLOCK))

    def add_stream(self, name: str, size: int, fill: Fill, diff_id: str) -> None:
        """Write a member of ``size`` bytes produced by ``fill``; it must hash to ``diff_id``."""
        self._header(name, size)
        digest = hashlib.sha256()
        written = 0

        def write(data: bytes) -> None:
            nonlocal written
            written += len(data)
            if written > size:
                raise IntegrityError(f"layer {diff_id[:19]} rebuilt larger than its recorded {size} bytes")
            digest.update(data)
            self._out.write(data)

        fill(write)
        if written != size:
            raise IntegrityError(f"layer {diff_id[:19]} rebuilt to {written} bytes, not {size}")
        if "sha256:" + digest.hexdigest() != diff_id:
            raise IntegrityError(f"rebuilt layer does not hash to its diff_id {diff_id[:19]}; nothing was written")
        self._out.write(bytes((-size) % BLOCK))

    def close(self) -> None:
        self._out.write(bytes(2 * BLOCK))


def write_image(
    out: BinaryIO,
    config_bytes: bytes,
    tags: list[str],
    layers: list[tuple[str, int, Fill | None]],
) -> None:
    """Write one image; layers given with ``fill=None`` are listed but not included (a thin archive
    for an engine that already has them)."""
    write_images(out, [(config_bytes, tags, layers)])


def write_images(out: BinaryIO, images: list[tuple[bytes, list[str], list[tuple[str, int, Fill | None]]]]) -> None:
    """Write several images into one archive, as ``docker save A B`` does: a layer they share is
    written once."""
    writer = ArchiveWriter(out)
    manifest = []
    written: set[str] = set()
    for config_bytes, tags, layers in images:
        config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
        writer.add_bytes(config_name, config_bytes)
        names = []
        for diff_id, size, fill in layers:
            name = f"{diff_id.split(':', 1)[1]}/layer.tar"
            names.append(name)
            if fill is not None and diff_id not in written:
                writer.add_dir(name.split("/")[0] + "/")
                writer.add_stream(name, size, fill, diff_id)
                written.add(diff_id)
        manifest.append({"Config": config_name, "RepoTags": tags or None, "Layers": names})
    writer.add_bytes("manifest.json", json.dumps(manifest).encode())
    writer.close()
