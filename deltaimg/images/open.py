"""Image references, with the transport names skopeo users already type.

``docker-archive:FILE[:REF]``, ``oci-archive:FILE[:REF]``, ``oci:DIR[:REF]``,
``docker-daemon:NAME[:TAG]|ID``; a plain path is auto-detected.
"""

from __future__ import annotations

import os

from deltaimg.errors import ImageReadError, UsageError
from deltaimg.images.archive import read_docker_archive
from deltaimg.images.model import Image
from deltaimg.images.blobs import BlobStore
from deltaimg.images.layout import read_oci_layout

FILE_TRANSPORTS = ("docker-archive", "oci-archive", "oci")
TRANSPORTS = FILE_TRANSPORTS + ("docker-daemon",)


def split_reference(reference: str) -> tuple[str | None, str, str | None]:
    """Split ``TRANSPORT:PATH[:REF]`` into (transport, path, ref).

    Paths and refs may both hold colons, so the path is the longest prefix that exists.
    """
    transport = None
    rest = reference
    head, sep, tail = reference.partition(":")
    if sep and head in TRANSPORTS:
        transport, rest = head, tail
    if transport == "docker-daemon":
        return transport, "", rest
    if os.path.exists(rest):
        return transport, rest, None
    cut = len(rest)
    while (cut := rest.rfind(":", 0, cut)) > 0:
        if os.path.exists(rest[:cut]):
            return transport, rest[:cut], rest[cut + 1:] or None
    return transport, rest, None


def open_image(reference: str, platform: str | None = None) -> Image:
    """Open an image from any supported reference."""
    transport, path, ref = split_reference(reference)
    if transport == "docker-daemon":
        if not ref:
            raise UsageError("docker-daemon: needs an image name or ID, e.g. docker-daemon:app:1.0")
        from deltaimg.images.daemon import open_daemon_image

        return open_daemon_image(None, ref)
    if not os.path.exists(path):
        raise ImageReadError(
            f"{path}: no such file or directory (expected a docker save archive, an OCI layout, "
            "or docker-daemon:REF)"
        )
    store = BlobStore(path)
    if transport == "docker-archive" or (transport is None and store.exists("manifest.json")):
        if not store.exists("manifest.json"):
            raise ImageReadError(f"{path}: not a docker save archive (no manifest.json)")
        return read_docker_archive(store, ref)
    if transport in ("oci", "oci-archive") or store.exists("index.json"):
        return read_oci_layout(store, ref, platform)
    raise ImageReadError(f"{path}: neither a docker save archive nor an OCI layout")
