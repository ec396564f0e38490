"""The bundle file: a signed manifest followed by the payloads it lists.

Layout (all integers big-endian; see docs/bundle-format.md)::

    "DELTAIMG" | u32 format version | u32 manifest length | manifest (zstd frame of JSON)
               | u32 signature length | signature (key id, Ed25519 signature) | payload area

The signature covers the manifest's stored bytes; the manifest gives every payload's size and
sha256, so one signature covers every byte of the file. The manifest is compressed against a
fixed raw-content zstd dictionary shipped with deltaimg (``manifest.dict``: its keys and common
strings), which is part of the format.

A bundle too large for one file (FAT32 takes at most 4 GiB - 1) is written as parts
``NAME.001``, ``NAME.002``, ...: the bundle's bytes cut every ``part_size`` bytes, so the first
part starts with the usual header and ``cat NAME.0* > NAME`` gives an ordinary bundle. The
manifest's ``split`` record (signed like the rest) gives the part size, the count and the sha256
of every part but the first (which holds the manifest itself, and is covered by the signature and
the payload hashes): a missing, truncated, swapped or foreign part is named as such.
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import io
import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from deltaimg.codec import zstd_ref

from deltaimg.bundle import signing
from deltaimg.errors import BundleFormatError, BundlePartError, IntegrityError, OutputError, UsageError
from deltaimg.images.model import load_json

MAGIC = b"DELTAIMG"
FORMAT_VERSION = 1
U32 = struct.Struct(">I")
MAX_MANIFEST = 64 * 1024 * 1024  # stored (compressed) and decompressed alike
MAX_SIGNATURE = 64 * 1024
KEY_ID_BYTES = 8
SIGNATURE_BYTES = 64
CONFIG_PAYLOAD = "config"  # the target image config, a zstd delta against the base image's config bytes
# a delta layer's "stats" in the manifest: these counts of what make did, in this order
STATS_FIELDS = ("entries", "files", "identical", "bsdiff", "zstd_delta", "literal", "headers_from_old", "literal_bytes")
MAX_PAYLOADS = 100_000
COPY_CHUNK = 1 << 20
MAX_PARTS = 999  # NAME.001 to NAME.999
SPLIT_HEADER_SLACK = 256  # room for the part hashes' effect on the compressed manifest's length
MIN_PART_SIZE = 1024
PART_SUFFIX = re.compile(r"\.(\d{3})$")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MANIFEST_DICTIONARY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifest.dict")
with open(MANIFEST_DICTIONARY_FILE, "rb") as _f:
    MANIFEST_DICTIONARY = _f.read()  # part of the format: changing it changes every bundle
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``3900M``, ``4G``, ``512K`` or a plain number of bytes; K, M, G and T are powers of 1024."""
    match = re.fullmatch(r"(\d+)([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise UsageError(f"{text!r} is not a size; write it like 3900M, 4G or 1048576")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).upper()]


def part_path(stem: str, number: int) -> str:
    """The file of part ``number`` (from 1) of the split bundle ``stem``."""
    return f"{stem}.{number:03d}"


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def encode_manifest(manifest: dict) -> bytes:
    """The manifest as stored (and signed): one zstd frame of its canonical JSON, compressed
    against the raw-content dictionary :data:`MANIFEST_DICTIONARY`."""
    return zstd_ref.compress(canonical_json(manifest), dictionary=MANIFEST_DICTIONARY)


def manifest_json(stored: bytes, path: str) -> bytes:
    """The JSON text of a stored manifest, decoded no further than ``MAX_MANIFEST`` bytes."""
    try:
        return bytes(zstd_ref.decompress_at_most(stored, MAX_MANIFEST, dictionary=MANIFEST_DICTIONARY))
    except IntegrityError as exc:
        raise BundleFormatError(f"{path}: the manifest does not decompress: {exc}") from None


def signature_block(signature: dict) -> bytes:
    """:func:`signing.sign`'s result as stored: the 8-byte key id, then the 64-byte signature."""
    return bytes.fromhex(signature["key_id"]) + base64.b64decode(signature["signature"])


def parse_signature_block(block: bytes) -> dict | None:
    """The stored signature in :func:`signing.verify`'s form; None when it has not that shape
    (the key id, the signature, then nothing but the zeros a split bundle may pad its header with)."""
    if len(block) < KEY_ID_BYTES + SIGNATURE_BYTES or block[KEY_ID_BYTES + SIGNATURE_BYTES:].strip(b"\0"):
        return None
    return {"algorithm": "ed25519", "key_id": block[:KEY_ID_BYTES].hex(),
            "signature": base64.b64encode(block[KEY_ID_BYTES:KEY_ID_BYTES + SIGNATURE_BYTES]).decode()}


def payload_area(manifest: dict) -> int:
    """The payload area's size: the payloads lie back to back in manifest order."""
    return sum(record["size"] for record in manifest["payloads"])


def payload_offsets(manifest: dict) -> dict[str, int]:
    """Each payload's offset in the payload area: they lie back to back in manifest order."""
    offsets, offset = {}, 0
    for record in manifest["payloads"]:
        offsets[record["name"]] = offset
        offset += record["size"]
    return offsets


class _HashingWriter:
    """Counts and hashes what a payload writer writes into the spool."""

    def __init__(self, spool: BinaryIO) -> None:
        self._spool = spool
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        try:
            self._spool.write(data)
        except OSError as exc:
            raise OutputError(f"cannot write {self._spool.name}: {exc.strerror}; free some space there and run "
                              "again") from None
        self._digest.update(data)
        self.size += len(data)
        return len(data)


class BundleWriter:
    """Collects payloads in a spool next to the output, then writes the signed bundle.

    With ``split_size``, a bundle larger than that is written as parts (see the module's doc);
    one that fits is written as one ordinary file. ``paths`` and ``size`` tell what was written.
    """

    def __init__(self, output: str, split_size: int | None = None) -> None:
        if split_size is not None and split_size < MIN_PART_SIZE:
            raise UsageError(f"a split size of {split_size} bytes is too small; give at least {MIN_PART_SIZE}")
        self.output = output
        self.split_size = split_size
        self.paths: list[str] = []
        self.size = 0
        directory = os.path.dirname(os.path.abspath(output))
        try:
            self._spool = tempfile.NamedTemporaryFile(dir=directory, prefix=".deltaimg-", suffix=".spool")
        except OSError as exc:
            raise OutputError(f"cannot write in {directory}: {exc.strerror}") from None
        self.payloads: list[dict] = []

    def add_payload(self, name: str, fill: Callable[[BinaryIO], object]) -> dict:
        """Let ``fill`` write one payload; returns its manifest record."""
        writer = _HashingWriter(self._spool)
        fill(writer)  # type: ignore[arg-type]
        record = {"name": name, "sha256": writer._digest.hexdigest(), "size": writer.size}
        self.payloads.append(record)
        return record

    def finish(self, manifest: dict, private_key) -> dict:
        """Sign and write the bundle (every file complete before any is renamed into place);
        returns the manifest as signed."""
        manifest = {**manifest, "payloads": self.payloads}
        try:
            manifest, header = self._signed_header(manifest, private_key)
            self.size = len(header) + payload_area(manifest)
            split = manifest.get("split")
            if split:
                cuts = [(start, min(start + split["part_size"], self.size)) for start in range(0, self.size, split["part_size"])]
                self.paths = [part_path(self.output, number) for number in range(1, len(cuts) + 1)]
                stale = [self.output, *_parts_after(self.output, len(cuts))]
            else:
                cuts, self.paths, stale = [(0, self.size)], [self.output], _parts_after(self.output, 0)
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
        area = payload_area(manifest)
        header = _frame(manifest, private_key)
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
            header = _frame(final, private_key)
            if len(header) <= length:
                return final, _frame(final, private_key, pad=length - len(header))
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
        (the other form of this output left by an earlier make)."""
        directory = os.path.dirname(os.path.abspath(self.output))
        temps: list[str] = []
        try:
            for start, end in cuts:
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
                if os.path.exists(tmp):
                    os.unlink(tmp)

    def abort(self) -> None:
        self._spool.close()


def _frame(manifest: dict, private_key, pad: int = 0) -> bytes:
    """The bundle's header: magic, version, the manifest and its signature (then ``pad`` zeros)."""
    manifest_bytes = encode_manifest(manifest)
    signature_bytes = signature_block(signing.sign(private_key, manifest_bytes)) + bytes(pad)
    return (MAGIC + U32.pack(FORMAT_VERSION) + U32.pack(len(manifest_bytes)) + manifest_bytes
            + U32.pack(len(signature_bytes)) + signature_bytes)


def _parts_after(stem: str, count: int) -> list[str]:
    """Part files of ``stem`` numbered above ``count`` that exist (left by an earlier, longer split)."""
    found = []
    number = count + 1
    while number <= MAX_PARTS and os.path.isfile(part_path(stem, number)):
        found.append(part_path(stem, number))
        number += 1
    return found


@dataclass
class Bundle:
    """A bundle whose signature and payload hashes have been checked."""

    path: str  # the file, or a split bundle's first part
    manifest: dict
    signer: signing.TrustedKey | None
    payload_start: int
    size: int  # of the whole bundle (every part)
    parts: list[tuple[str, int]] = field(default_factory=list)  # a split bundle's (file, size), in order
    sha256: str | None = None  # of all the bundle's bytes, in order; set by verify_payloads

    def open_range(self, offset: int, size: int) -> BinaryIO:
        """``size`` bytes of the bundle from ``offset``, across parts if it is split."""
        parts = self.parts or [(self.path, self.size)]
        return io.BufferedReader(_PartsReader(parts, offset, size), buffer_size=COPY_CHUNK)  # type: ignore[return-value]

    @functools.cached_property
    def _payloads(self) -> dict[str, dict]:
        """Each payload record by name, with its ``offset``: computed once, as read_plan asks per layer."""
        offsets = payload_offsets(self.manifest)
        return {record["name"]: {**record, "offset": offsets[record["name"]]} for record in self.manifest["payloads"]}

    def payload(self, name: object) -> dict:
        """The payload record named ``name``, with its ``offset`` in the payload area."""
        record = self._payloads.get(name) if isinstance(name, str) else None
        if record is None:
            raise BundleFormatError(f"{self.path}: the manifest names no payload {name!r}")
        return dict(record)

    def open_payload(self, name: str) -> BinaryIO:
        record = self.payload(name)
        return self.open_range(self.payload_start + record["offset"], record["size"])

    def read_payload(self, name: str, limit: int) -> bytes:
        """A small payload, read whole. It was verified with the others; what is read here must
        prove itself again (the config by its digest, which is the target image ID)."""
        record = self.payload(name)
        if record["size"] > limit:
            raise BundleFormatError(f"{self.path}: payload {name} is larger than any deltaimg writes")
        with self.open_payload(name) as f:
            data = f.read()
        if len(data) != record["size"]:
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
    return manifest_bytes, parse_signature_block(signature_bytes), 20 + manifest_len + signature_len, size


def open_bundle(path: str, trusted: list[signing.TrustedKey], check_payloads: bool = True,
                progress: Callable[[int], None] | None = None) -> Bundle:
    """Check the framing, the signature against ``trusted``, and (by default) every payload hash.

    Nothing in the manifest is believed before its signature checks out.
    """
    manifest_bytes, signature, payload_start, size = read_header(path)
    signer = signing.verify(signature, manifest_bytes, trusted)
    manifest = _parse_manifest(manifest_bytes, path)
    expected = payload_start + payload_area(manifest)
    parts: list[tuple[str, int]] = []
    if "split" in manifest and size != expected:  # the first part (not the parts joined into one file)
        parts = _find_parts(path, manifest["split"], expected)
    elif size < expected:
        raise BundleFormatError(f"{path} is truncated: {size} bytes of the {expected} it should have")
    elif size > expected:
        raise BundleFormatError(f"{path} has {size - expected} unexpected bytes appended")
    bundle = Bundle(path, manifest, signer, payload_start, expected, parts)
    if check_payloads:
        verify_payloads(bundle, progress)
    return bundle


def _find_parts(path: str, split: object, total: int) -> list[tuple[str, int]]:
    """The files of a split bundle whose first part is ``path``, checked against its signed split record."""
    ok = isinstance(split, dict) and type(split.get("part_size")) is int and split["part_size"] > 0 \
        and type(split.get("count")) is int and 1 < split["count"] <= MAX_PARTS \
        and split["count"] == -(-total // split["part_size"]) \
        and isinstance(split.get("sha256"), list) and len(split["sha256"]) == split["count"] - 1
    if not ok:
        raise BundleFormatError(f"{path}: the manifest's split record is malformed")
    size, count = split["part_size"], split["count"]  # type: ignore[index]
    if not path.endswith(".001"):
        raise BundlePartError(f"{path} is the first of {count} parts of a split bundle but is not named *.001, so the "
                              f"others cannot be found; name the parts NAME.001 to NAME.{count:03d}")
    stem = path[:-4]
    names = [part_path(stem, number) for number in range(1, count + 1)]
    missing = [os.path.basename(name) for name in names if not os.path.isfile(name)]
    if missing:
        raise BundlePartError(f"{stem} is split in {count} parts and {', '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} missing; copy every part into the same folder")
    parts = []
    for index, name in enumerate(names):
        want, have = min(size, total - index * size), os.path.getsize(name)
        if have != want:
            raise BundlePartError(f"{name} is {have} bytes but part {index + 1} of this bundle is {want}: it is "
                                  "truncated, damaged or from another bundle")
        parts.append((name, have))
    return parts


def verify_payloads(bundle: Bundle, progress: Callable[[int], None] | None = None) -> None:
    """Read the bundle once, in order, checking every payload against its signed sha256 and every
    later part of a split bundle against the manifest; sets :attr:`Bundle.sha256`.

    A part that does not match is reported before any payload that it spoils: a bundle that fails
    because a part was swapped with another is the part's fault. Otherwise the first payload that
    does not match is named.
    """
    split = bundle.manifest.get("split") if bundle.parts else None
    part_ends = [end for _, end in _cumulative(bundle.parts)] if split else []
    records = bundle.manifest["payloads"]
    payload_ends, end = [], bundle.payload_start
    for record in records:
        end += record["size"]
        payload_ends.append(end)
    cuts = sorted({bundle.payload_start, bundle.size, *part_ends, *payload_ends})
    whole, part_digest, payload_digest = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    position = part = index = 0
    failed: str | None = None
    with bundle.open_range(0, bundle.size) as f:
        for cut in cuts:
            while position < cut:
                block = f.read(min(COPY_CHUNK, cut - position))
                if not block:
                    raise BundleFormatError(f"{bundle.path} got shorter while it was read")
                whole.update(block)
                part_digest.update(block)
                if position >= bundle.payload_start:
                    payload_digest.update(block)
                    if progress:
                        progress(len(block))
                position += len(block)
            while index < len(records) and position == payload_ends[index]:  # empty payloads end here too
                if failed is None and payload_digest.hexdigest() != records[index]["sha256"]:
                    failed = records[index]["name"]
                index, payload_digest = index + 1, hashlib.sha256()
            if split and position == part_ends[part]:
                if part > 0 and part_digest.hexdigest() != split["sha256"][part - 1]:
                    raise BundlePartError(f"{bundle.parts[part][0]} is not part {part + 1} of this bundle (its sha256 "
                                          "differs from the signed one): it is damaged, out of order or from another bundle")
                part, part_digest = part + 1, hashlib.sha256()
    if failed is not None:
        raise IntegrityError(f"{bundle.path}: payload {failed} does not match its signed sha256; the bundle is damaged")
    bundle.sha256 = whole.hexdigest()


def _cumulative(parts: list[tuple[str, int]]) -> list[tuple[int, int]]:
    """(start, end) of each part within the bundle."""
    spans, start = [], 0
    for _, size in parts:
        spans.append((start, start + size))
        start += size
    return spans


class _PartsReader(io.RawIOBase):
    """A read-only view of ``size`` bytes from ``offset`` of the concatenation of a split bundle's parts."""

    def __init__(self, parts: list[tuple[str, int]], offset: int, size: int) -> None:
        self._parts = parts
        self._starts = [start for start, _ in _cumulative(parts)]
        self._offset = offset
        self._size = size
        self._pos = 0
        self._file: BinaryIO | None = None
        self._index = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        remaining = self._size - self._pos
        if remaining <= 0:
            return 0
        absolute = self._offset + self._pos
        index = bisect.bisect_right(self._starts, absolute) - 1
        name, part_size = self._parts[index]
        within = absolute - self._starts[index]
        try:
            if index != self._index:
                if self._file is not None:
                    self._file.close()
                self._file, self._index = open(name, "rb"), index
            assert self._file is not None
            self._file.seek(within)
            n = self._file.readinto(memoryview(buffer)[: min(len(buffer), remaining, part_size - within)])
        except OSError as exc:  # a stick pulled out, a part renamed since the bundle was opened
            raise BundleFormatError(f"cannot read {name}: {exc.strerror or exc}; nothing was changed by this "
                                    "read, run again once the bundle is back") from None
        if not n:
            raise BundlePartError(f"{name} got shorter after it was checked")
        self._pos += n
        return n

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, min(self._size, base + pos))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def bundle_files(paths: list[str]) -> list[str]:
    """The bundles ``paths`` name, in order: bundle files, first parts of split bundles, and folders
    (their ``*.dimg`` and ``*.dimg.001`` files, not searched further down).

    ``NAME`` stands for ``NAME.001`` when only the parts exist. A later part named next to its
    first part (as a shell glob does) is dropped; named alone, it is an error.
    """
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                full = os.path.join(path, name)
                if not name.startswith(".") and name.endswith((".dimg", ".dimg.001")) and os.path.isfile(full):
                    found.append(full)
        elif not os.path.exists(path) and os.path.isfile(part_path(path, 1)):
            found.append(part_path(path, 1))
        else:
            found.append(path)
    result: list[str] = []
    for path in found:
        match = PART_SUFFIX.search(path)
        if match and match.group(1) != "001" and not _starts_a_bundle(path):
            if part_path(path[:-4], 1) in found:
                continue
            raise BundlePartError(f"{path} is part {int(match.group(1))} of a split bundle; pass its first part "
                                  f"({os.path.basename(path[:-4])}.001) or its folder")
        if path not in result:
            result.append(path)
    return result


def _starts_a_bundle(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _parse_manifest(stored: bytes, path: str) -> dict:
    manifest = load_json(manifest_json(stored, path), f"{path}: the manifest", "any deltaimg writes", BundleFormatError)
    payloads = manifest.get("payloads") if isinstance(manifest, dict) else None
    if not isinstance(payloads, list) or len(payloads) > MAX_PAYLOADS:
        raise BundleFormatError(f"{path}: the manifest is not a deltaimg manifest")
    names: set[str] = set()
    for record in payloads:
        if not (
            isinstance(record, dict)
            and isinstance(record.get("name"), str)
            and record["name"] not in names
            and type(record.get("size")) is int  # not a float or bool that compares equal
            and record["size"] >= 0
        ):
            raise BundleFormatError(f"{path}: the manifest's payload list is malformed")
        digest = record.get("sha256")
        if not (isinstance(digest, str) and SHA256_HEX.fullmatch(digest)):
            raise BundleFormatError(f"{path}: the manifest's payload hash is malformed (payload {record['name']})")
        names.add(record["name"])
    return manifest
