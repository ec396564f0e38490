"""Open a bundle: its framing, its signature, its manifest (typed), its parts, and its payloads as streams."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from deltaimg import streams
from deltaimg.bundle import signing
from deltaimg.bundle.format import (FORMAT_VERSION, check_version, stored_version, READABLE_VERSIONS, MAGIC, MAX_MANIFEST, MAX_PARTS, MAX_SIGNATURE, PART_SUFFIX,
                                    U32, manifest_json, parse_signature_block, part_path, starts_a_bundle)
from deltaimg.bundle.verify import verify_payloads
from deltaimg.bundle.manifest import Manifest, PayloadRecord, Split, parse_manifest
from deltaimg.errors import BundleFormatError, BundlePartError, IntegrityError
from deltaimg.safejson import load_json


@dataclass
class Bundle:
    """A bundle whose framing and signature have been checked (and its payloads, unless it was
    opened with ``check_payloads=False``)."""

    path: str  # the file, or a split bundle's first part
    manifest: Manifest
    signer: signing.TrustedKey | None
    payload_start: int
    size: int  # of the whole bundle (every part)
    parts: list[tuple[str, int]] = field(default_factory=list)  # a split bundle's (file, size), in order
    sha256: str | None = None  # of all the bundle's bytes, in order; set by verify_payloads

    def open_range(self, offset: int, size: int) -> BinaryIO:
        """``size`` bytes of the bundle from ``offset``, across parts if it is split."""
        parts = self.parts or [(self.path, self.size)]
        return streams.open_range(parts, offset, size, _got_shorter, _unreadable)

    def payload(self, name: str) -> PayloadRecord:
        record = self.manifest.payload(name)
        if record is None:
            raise BundleFormatError(f"{self.path}: the manifest names no payload {name!r}")
        return record

    def open_payload(self, name: str) -> BinaryIO:
        record = self.payload(name)
        return self.open_range(self.payload_start + record.offset, record.size)

    def read_payload(self, name: str, limit: int) -> bytes:
        """A small payload, read whole. It was verified with the others; what is read here must
        prove itself again (the config by its digest, which is the target image ID)."""
        record = self.payload(name)
        if record.size > limit:
            raise BundleFormatError(f"{self.path}: payload {name} is larger than any deltaimg writes")
        with self.open_payload(name) as f:
            data = f.read()
        if len(data) != record.size:
            raise IntegrityError(f"{self.path}: payload {name} changed since it was verified")
        return data


def read_header(path: str) -> tuple[bytes, dict | None, int, int]:
    """(manifest bytes, signature, payload area offset, file size), checking only the framing."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would wait for a writer forever
            raise BundleFormatError(f"{path} is not a regular file; give the bundle file itself")
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
            if len(head) < 8 or head[:8] != MAGIC:
                raise BundleFormatError(f"{path} is not a deltaimg bundle")
            if len(head) < 16:
                raise BundleFormatError(f"{path} is truncated: the bundle header is incomplete")
            (version,) = U32.unpack(head[8:12])
            if version not in READABLE_VERSIONS:
                raise BundleFormatError(f"{path} is bundle format {version}; this deltaimg reads formats 1 to {FORMAT_VERSION}; upgrade deltaimg")
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
    manifest = read_manifest(manifest_bytes, path)
    expected = payload_start + manifest.payload_area
    parts: list[tuple[str, int]] = []
    if manifest.split and size != expected:  # the first part (not the parts joined into one file)
        parts = _find_parts(path, manifest.split, expected)
    elif size < expected:
        raise BundleFormatError(f"{path} is truncated: {size} bytes of the {expected} it should have")
    elif size > expected:
        raise BundleFormatError(f"{path} has {size - expected} unexpected bytes appended")
    bundle = Bundle(path, manifest, signer, payload_start, expected, parts)
    if check_payloads:
        verify_payloads(bundle, progress)
    return bundle


def read_manifest(stored: bytes, path: str) -> Manifest:
    """The stored manifest decoded and typed, trusted or not (see :mod:`deltaimg.bundle.manifest`)."""
    manifest = parse_manifest(load_json(manifest_json(stored, path), f"{path}: the manifest", "any deltaimg writes",
                                        BundleFormatError), path)
    check_version(stored_version(path), manifest.document, path)
    return manifest


def _find_parts(path: str, split: Split, total: int) -> list[tuple[str, int]]:
    """The files of a split bundle whose first part is ``path``, checked against its signed split record."""
    if split.count > MAX_PARTS or split.count != -(-total // split.part_size):
        raise BundleFormatError(f"{path}: the manifest's split record is malformed")
    size, count = split.part_size, split.count
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


def _got_shorter(name: str) -> Exception:
    return BundlePartError(f"{name} got shorter after it was checked")


def _unreadable(name: str, exc: OSError) -> Exception:  # a stick pulled out, a part renamed since it was opened
    return BundleFormatError(f"cannot read {name}: {exc.strerror or exc}; nothing was changed by this read, run "
                             "again once the bundle is back")


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
        if match and match.group(1) != "001" and not starts_a_bundle(path):
            if part_path(path[:-4], 1) in found:
                continue
            raise BundlePartError(f"{path} is part {int(match.group(1))} of a split bundle; pass its first part "
                                  f"({os.path.basename(path[:-4])}.001) or its folder")
        if path not in result:
            result.append(path)
    return result
