"""The bundle file's framing: a signed manifest followed by the payloads it lists.

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
import json
import os
import re
import struct

from deltaimg.codec import zstd_ref
from deltaimg.errors import BundleFormatError, IntegrityError

MAGIC = b"DELTAIMG"
FORMAT_VERSION = 3  # 3: several image pairs (the manifest's "images"); executable segments (delta/executable.py)
READABLE_VERSIONS = (1, 2, 3)  # 2 adds the inside segments (delta/inside.py) to 1
U32 = struct.Struct(">I")
MAX_MANIFEST = 64 * 1024 * 1024  # stored (compressed) and decompressed alike
MAX_SIGNATURE = 64 * 1024
KEY_ID_BYTES = 8
SIGNATURE_BYTES = 64
COPY_CHUNK = 1 << 20
MAX_PARTS = 999  # NAME.001 to NAME.999
PART_SUFFIX = re.compile(r"\.(\d{3})$")
MANIFEST_DICTIONARY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifest.dict")
with open(MANIFEST_DICTIONARY_FILE, "rb") as _f:
    MANIFEST_DICTIONARY = _f.read()  # part of the format: changing it changes every bundle
def written_version(manifest: dict, executables: bool) -> int:
    """The version a bundle of ``manifest`` is written as: the oldest that reads it, so a one-image
    bundle without executable segments stays readable by deltaimg releases that read format 2."""
    return FORMAT_VERSION if executables or "images" in manifest else 2


def check_version(version: int, manifest: dict, path: str) -> None:
    """Refuse a header whose version is not one a writer gives this manifest (the header is not
    signed): several images from format 3 on."""
    if "images" in manifest and version < 3:
        raise BundleFormatError(f"{path}: the header says bundle format {version}, which its manifest is not; "
                                "the bundle is damaged")


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


def part_spans(parts: list[tuple[str, int]]) -> list[tuple[int, int]]:
    """(start, end) of each part within the bundle."""
    spans, start = [], 0
    for _, size in parts:
        spans.append((start, start + size))
        start += size
    return spans


def stored_version(path: str) -> int:
    """The format version in the header of the bundle at ``path`` (already checked to be readable)."""
    with open(path, "rb") as f:
        f.seek(len(MAGIC))
        return U32.unpack(f.read(U32.size))[0]


def starts_a_bundle(path: str) -> bool:
    """Whether the file at ``path`` begins with the bundle magic (a bundle, or a split bundle's first part)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
