"""Write a bundle: payloads into a spool next to the output, then the signed header and the spool
into the output (or its parts), every file complete before any is renamed into place."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from typing import BinaryIO, Callable

from deltaimg import interrupts
from deltaimg.bundle import signing
from deltaimg.bundle.format import COPY_CHUNK, MAGIC, MAX_PARTS, U32, encode_manifest, part_path, signature_block, starts_a_bundle, written_version
from deltaimg.errors import OutputError, UsageError

SPLIT_HEADER_SLACK = 256  # room for the part hashes' effect on the compressed manifest's length
MIN_PART_SIZE = 1024


def _payload_area(manifest: dict) -> int:
    return sum(record["size"] for record in manifest["payloads"])


class HashingWriter:
    """Counts and hashes what a payload writer writes into the spool."""

    def __init__(self, spool: BinaryIO) -> None:
        self._spool = spool
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        try:
            self._spool.write(data)
        except OSError as exc:
            raise OutputError(f"cannot write {self._spool.name}: {exc.strerror}; free some space there and run "
                              "again") from None
        self.digest.update(data)
        self.size += len(data)
        return len(data)


class BundleWriter:
    """Collects payloads in a spool next to the output, then writes the signed bundle.

    With ``split_size``, a bundle larger than that is written as parts (see the module's doc);
    one that fits is written as one ordinary file. ``paths`` and ``size`` tell what was written.
    """

    def __init__(self, output: str, split_size: int | None = None, force: bool = False) -> None:
        if split_size is not None and split_size < MIN_PART_SIZE:
            raise UsageError(f"a split size of {split_size} bytes is too small; give at least {MIN_PART_SIZE}")
        self._ours = _earlier_bundle(output, force)
        self.output = output
        self.split_size = split_size
        self.paths: list[str] = []
        self.size = 0
        directory = os.path.dirname(os.path.abspath(output))
        spool = None
        try:
            with interrupts.held():
                spool = tempfile.NamedTemporaryFile(dir=directory, prefix=".deltaimg-", suffix=".spool")
        except OSError as exc:
            raise OutputError(f"cannot write in {directory}: {exc.strerror}") from None
        except KeyboardInterrupt:  # held back while the spool was made: no caller holds it to close
            if spool is not None:
                spool.close()
            raise
        self._spool = spool
        self.payloads: list[dict] = []

    def add_payload(self, name: str, fill: Callable[[BinaryIO], object]) -> dict:
        """Let ``fill`` write one payload; returns its manifest record."""
        writer = HashingWriter(self._spool)
        fill(writer)  # type: ignore[arg-type]
        record = {"name": name, "sha256": writer.digest.hexdigest(), "size": writer.size}
        self.payloads.append(record)
        return record

    def finish(self, manifest: dict, private_key, executables: bool = False) -> dict:
        """Sign and write the bundle (every file complete before any is renamed into place);
        returns the manifest as signed. ``executables``: whether a payload holds executable
        segments (:func:`format.written_version`)."""
        manifest = {**manifest, "payloads": self.payloads}
        self._version = written_version(manifest, executables)
        try:
            manifest, header = self._signed_header(manifest, private_key)
            self.size = len(header) + _payload_area(manifest)
            split = manifest.get("split")
            if split:
                cuts = [(start, min(start + split["part_size"], self.size)) for start in range(0, self.size, split["part_size"])]
                self.paths = [part_path(self.output, number) for number in range(1, len(cuts) + 1)]
                stale = [path for path in (self.output, *_parts_after(self.output, len(cuts))) if path in self._ours]
            else:
                cuts, self.paths = [(0, self.size)], [self.output]
                stale = [path for path in _parts_after(self.output, 0) if path in self._ours]
            self._write(header, cuts, stale)
        finally:
            self._spool.close()
        return manifest

    def _signed_header(self, manifest: dict, private_key) -> tuple[dict, bytes]:
        """The manifest as signed and the header bytes (magic to signature) that start the bundle.

        A split record lists the parts' hashes, which depend on where the parts start, that is on
        the header's length, which (the manifest being compressed) depends on the hashes. So the
        length is chosen first, with room to spare, the hashes computed for it, and the signature
        block padded with zeros to make the header exactly that long.
        """
        area = _payload_area(manifest)
        header = _frame(manifest, private_key, self._version)
        if self.split_size is None or len(header) + area <= self.split_size:
            return manifest, header  # it fits: an ordinary bundle
        size, length = self.split_size, len(header) + SPLIT_HEADER_SLACK
        while True:
            if length > size:
                raise UsageError(f"a split size of {size} bytes is smaller than this bundle's header ({length} "
                                 "bytes); give a larger one")
            total = length + area
            count = -(-total // size)
            if count > MAX_PARTS:
                raise UsageError(f"a split size of {size} bytes makes {count} parts, more than {MAX_PARTS}; give a larger one")
            hashes = [self._spool_sha256(start - length, min(start + size, total) - length)
                      for start in range(size, total, size)]
            final = {**manifest, "split": {"part_size": size, "count": count, "sha256": hashes}}
            header = _frame(final, private_key, self._version)
            if len(header) <= length:
                return final, _frame(final, private_key, self._version, pad=length - len(header))
            length = len(header) + SPLIT_HEADER_SLACK

    def _spool_sha256(self, start: int, end: int) -> str:
        digest = hashlib.sha256()
        self._spool.seek(start)
        remaining = end - start
        while remaining:
            block = self._spool.read(min(COPY_CHUNK, remaining))
            digest.update(block)
            remaining -= len(block)
        return digest.hexdigest()

    def _write(self, header: bytes, cuts: list[tuple[int, int]], stale: list[str]) -> None:
        """Write ``header`` + spool cut at ``cuts`` into ``self.paths``, then remove ``stale`` files
        (the rest of the bundle an earlier make wrote there)."""
        directory = os.path.dirname(os.path.abspath(self.output))
        temps: list[str] = []
        try:
            for start, end in cuts:
                with interrupts.held():  # an interrupt is raised with the file in ``temps``
                    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".deltaimg-", suffix=".tmp")
                    temps.append(tmp)
                os.chmod(tmp, signing.public_file_mode())  # a bundle is public; mkstemp makes it private
                with os.fdopen(fd, "wb") as out:
                    out.write(header[start:end])
                    self._spool.seek(max(start - len(header), 0))
                    remaining = end - max(start, len(header))
                    while remaining > 0:
                        block = self._spool.read(min(COPY_CHUNK, remaining))
                        out.write(block)
                        remaining -= len(block)
                    out.flush()
                    os.fsync(out.fileno())
            for tmp, path in zip(temps, self.paths):
                os.replace(tmp, path)
            for path in stale:
                if os.path.isfile(path):
                    os.unlink(path)
        except OSError as exc:
            raise OutputError(f"cannot write {self.output}: {exc.strerror}") from None
        finally:
            for tmp in temps:
                interrupts.remove(tmp)

    def abort(self) -> None:
        self._spool.close()


def _frame(manifest: dict, private_key, version: int, pad: int = 0) -> bytes:
    """The bundle's header: magic, version, the manifest and its signature (then ``pad`` zeros)."""
    manifest_bytes = encode_manifest(manifest)
    signature_bytes = signature_block(signing.sign(private_key, manifest_bytes)) + bytes(pad)
    return (MAGIC + U32.pack(version) + U32.pack(len(manifest_bytes)) + manifest_bytes
            + U32.pack(len(signature_bytes)) + signature_bytes)


def _earlier_bundle(output: str, force: bool) -> set[str]:
    """Refuse, before anything is made, to replace what is at ``output`` (or its parts) unless
    ``force``; then return the files of the deltaimg bundle found there, the only ones a new bundle
    may remove beyond those it replaces. A file without the bundle magic is never removed, and
    only regular files and symlinks (the link itself) are replaced."""
    existing = [path for path in (output, *_parts_after(output, 0)) if os.path.lexists(path)]
    for path in existing:
        mode = os.lstat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):  # a symlink is renamed over, never followed
            raise OutputError(f"{path} exists and is not a regular file; choose another -o")
    if existing and not force:
        if len(existing) == 1:
            raise OutputError(f"{existing[0]} exists; pass --force to replace it, or choose another -o")
        named = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise OutputError(f"{named} exist; pass --force to replace them, or choose another -o")
    ours = {output} if starts_a_bundle(output) else set()
    if starts_a_bundle(part_path(output, 1)):
        ours.update(_parts_after(output, 0))
    return ours


def _parts_after(stem: str, count: int) -> list[str]:
    """Part files of ``stem`` numbered above ``count`` that exist (left by an earlier, longer split)."""
    found = []
    number = count + 1
    while number <= MAX_PARTS and os.path.isfile(part_path(stem, number)):
        found.append(part_path(stem, number))
        number += 1
    return found
