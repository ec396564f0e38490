"""The bundle file: a signed manifest followed by the payloads it lists.

Layout (all integers big-endian; see docs/bundle-format.md)::

    "DELTAIMG" | u32 format version | u32 manifest length | manifest (JSON)
               | u32 signature length | signature (JSON) | payload area

The signature covers the manifest; the manifest gives every payload's offset, size and sha256
and the payload area's total size, so one signature covers every byte of the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Callable

from deltaimg import signing
from deltaimg.errors import BundleFormatError, IntegrityError, OutputError
from deltaimg.images.blobs import open_range

MAGIC = b"DELTAIMG"
FORMAT_VERSION = 1
U32 = struct.Struct(">I")
MAX_MANIFEST = 64 * 1024 * 1024
MAX_SIGNATURE = 64 * 1024
MAX_PAYLOADS = 100_000
COPY_CHUNK = 1 << 20


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class _HashingWriter:
    """Counts and hashes what a payload writer writes into the spool."""

    def __init__(self, spool: BinaryIO) -> None:
        self._spool = spool
        self.size = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._spool.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)


class BundleWriter:
    """Collects payloads in a spool next to the output, then writes the signed bundle."""

    def __init__(self, output: str) -> None:
        self.output = output
        directory = os.path.dirname(os.path.abspath(output))
        try:
            self._spool = tempfile.NamedTemporaryFile(dir=directory, prefix=".deltaimg-", suffix=".spool")
        except OSError as exc:
            raise OutputError(f"cannot write in {directory}: {exc.strerror}") from None
        self.payloads: list[dict] = []

    def add_payload(self, name: str, fill: Callable[[BinaryIO], object]) -> dict:
        """Let ``fill`` write one payload; returns its manifest record."""
        writer = _HashingWriter(self._spool)
        offset = sum(p["size"] for p in self.payloads)
        fill(writer)  # type: ignore[arg-type]
        record = {"name": name, "offset": offset, "size": writer.size, "sha256": writer.digest.hexdigest()}
        self.payloads.append(record)
        return record

    def finish(self, manifest: dict, private_key) -> dict:
        """Sign and write the bundle atomically; returns the manifest as signed."""
        manifest = {**manifest, "payloads": self.payloads, "payload_area": sum(p["size"] for p in self.payloads)}
        manifest_bytes = canonical_json(manifest)
        signature_bytes = canonical_json(signing.sign(private_key, manifest_bytes))
        directory = os.path.dirname(os.path.abspath(self.output))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".deltaimg-", suffix=".tmp")
        try:
            os.chmod(tmp, 0o644 & ~_umask())  # a bundle is public; mkstemp makes it private
            with os.fdopen(fd, "wb") as out:
                out.write(MAGIC + U32.pack(FORMAT_VERSION) + U32.pack(len(manifest_bytes)) + manifest_bytes)
                out.write(U32.pack(len(signature_bytes)) + signature_bytes)
                self._spool.seek(0)
                while block := self._spool.read(COPY_CHUNK):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.output)
        except OSError as exc:
            raise OutputError(f"cannot write {self.output}: {exc.strerror}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
            self._spool.close()
        return manifest

    def abort(self) -> None:
        self._spool.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass
class Bundle:
    """A bundle whose signature and payload hashes have been checked."""

    path: str
    manifest: dict
    signer: signing.TrustedKey | None
    payload_start: int
    size: int

    def payload(self, name: str) -> dict:
        for record in self.manifest["payloads"]:
            if record["name"] == name:
                return record
        raise BundleFormatError(f"{self.path}: the manifest names no payload {name!r}")

    def open_payload(self, name: str) -> BinaryIO:
        record = self.payload(name)
        return open_range(self.path, self.payload_start + record["offset"], record["size"])

    def read_payload(self, name: str, limit: int) -> bytes:
        record = self.payload(name)
        if record["size"] > limit:
            raise BundleFormatError(f"{self.path}: payload {name} is larger than any deltaimg writes")
        with self.open_payload(name) as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise IntegrityError(f"{self.path}: payload {name} changed since it was verified")
        return data


def read_header(path: str) -> tuple[bytes, dict | None, int, int]:
    """(manifest bytes, signature, payload area offset, file size), checking only the framing."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
            if len(head) < 8 or head[:8] != MAGIC:
                raise BundleFormatError(f"{path} is not a deltaimg bundle")
            if len(head) < 16:
                raise BundleFormatError(f"{path} is truncated: the bundle header is incomplete")
            (version,) = U32.unpack(head[8:12])
            if version != FORMAT_VERSION:
                raise BundleFormatError(f"{path} is bundle format {version}; this deltaimg reads format {FORMAT_VERSION}")
            (manifest_len,) = U32.unpack(head[12:16])
            if manifest_len > MAX_MANIFEST or 16 + manifest_len + 4 > size:
                raise BundleFormatError(f"{path} is truncated or damaged: bad manifest length")
            manifest_bytes = f.read(manifest_len)
            (signature_len,) = U32.unpack(f.read(4))
            if signature_len > MAX_SIGNATURE or 20 + manifest_len + signature_len > size:
                raise BundleFormatError(f"{path} is truncated or damaged: bad signature length")
            signature_bytes = f.read(signature_len)
    except OSError as exc:
        raise BundleFormatError(f"cannot read bundle {path}: {exc.strerror}") from None
    signature = None
    if signature_len:
        try:
            signature = json.loads(signature_bytes)
        except ValueError:
            signature = None
    return manifest_bytes, signature, 20 + manifest_len + signature_len, size


def open_bundle(path: str, trusted: list[signing.TrustedKey], check_payloads: bool = True,
                progress: Callable[[int], None] | None = None) -> Bundle:
    """Check the framing, the signature against ``trusted``, and (by default) every payload hash.

    Nothing in the manifest is believed before its signature checks out.
    """
    manifest_bytes, signature, payload_start, size = read_header(path)
    signer = signing.verify(signature, manifest_bytes, trusted)
    manifest = _parse_manifest(manifest_bytes, path)
    expected = payload_start + manifest["payload_area"]
    if size < expected:
        raise BundleFormatError(f"{path} is truncated: {size} bytes of the {expected} it should have")
    if size > expected:
        raise BundleFormatError(f"{path} has {size - expected} unexpected bytes appended")
    bundle = Bundle(path, manifest, signer, payload_start, size)
    if check_payloads:
        verify_payloads(bundle, progress)
    return bundle


def verify_payloads(bundle: Bundle, progress: Callable[[int], None] | None = None) -> None:
    for record in bundle.manifest["payloads"]:
        digest = hashlib.sha256()
        with bundle.open_payload(record["name"]) as f:
            while block := f.read(COPY_CHUNK):
                digest.update(block)
                if progress:
                    progress(len(block))
        if digest.hexdigest() != record["sha256"]:
            raise IntegrityError(f"{bundle.path}: payload {record['name']} does not match its signed sha256; the bundle is damaged")


def _parse_manifest(data: bytes, path: str) -> dict:
    try:
        manifest = json.loads(data)
    except ValueError:
        raise BundleFormatError(f"{path}: the manifest is not valid JSON") from None
    ok = isinstance(manifest, dict) and manifest.get("format") == "deltaimg-bundle"
    payloads = manifest.get("payloads") if ok else None
    if not ok or not isinstance(payloads, list) or len(payloads) > MAX_PAYLOADS:
        raise BundleFormatError(f"{path}: the manifest is not a deltaimg manifest")
    offset = 0
    for record in payloads:
        if not (
            isinstance(record, dict)
            and isinstance(record.get("name"), str)
            and record.get("offset") == offset
            and isinstance(record.get("size"), int)
            and record["size"] >= 0
            and isinstance(record.get("sha256"), str)
        ):
            raise BundleFormatError(f"{path}: the manifest's payload list is malformed")
        offset += record["size"]
    if manifest.get("payload_area") != offset:
        raise BundleFormatError(f"{path}: the manifest's payload sizes do not add up")
    return manifest
