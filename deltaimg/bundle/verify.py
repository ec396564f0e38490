"""Check every byte of an opened bundle against its signed manifest, in one pass."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Callable

from deltaimg.bundle.format import COPY_CHUNK, part_spans
from deltaimg.errors import BundleFormatError, BundlePartError, IntegrityError

if TYPE_CHECKING:
    from deltaimg.bundle.reader import Bundle


def verify_payloads(bundle: Bundle, progress: Callable[[int], None] | None = None) -> None:
    """Read the bundle once, in order, checking every payload against its signed sha256 and every
    later part of a split bundle against the manifest; sets :attr:`Bundle.sha256`.

    A part that does not match is reported before any payload that it spoils: a bundle that fails
    because a part was swapped with another is the part's fault. Otherwise the first payload that
    does not match is named.
    """
    split = bundle.manifest.split if bundle.parts else None
    part_ends = [end for _, end in part_spans(bundle.parts)] if split else []
    records = bundle.manifest.payloads
    payload_ends = [bundle.payload_start + record.offset + record.size for record in records]
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
                if failed is None and payload_digest.hexdigest() != records[index].sha256:
                    failed = records[index].name
                index, payload_digest = index + 1, hashlib.sha256()
            if split and position == part_ends[part]:
                if part > 0 and part_digest.hexdigest() != split.sha256[part - 1]:
                    raise BundlePartError(f"{bundle.parts[part][0]} is not part {part + 1} of this bundle (its sha256 "
                                          "differs from the signed one): it is damaged, out of order or from another bundle")
                part, part_digest = part + 1, hashlib.sha256()
    if failed is not None:
        raise IntegrityError(f"{bundle.path}: payload {failed} does not match its signed sha256; the bundle is damaged")
    bundle.sha256 = whole.hexdigest()
