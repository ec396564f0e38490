"""Writing one image as an OCI archive (``oci-layout``, ``index.json``, ``blobs/sha256/...``),
the form ``ctr images import`` reads, thin or full.

A layer written here is stored uncompressed, under its diff_id, and hashed as it is streamed (see
:class:`deltaimg.tar.writer.ArchiveWriter`). A layer given a descriptor instead is not written:
the manifest names that blob (the base's, as the engine's store holds it, compressed or not; a
descriptor without a size takes the layer's), and the importer must already have it.
"""

from __future__ import annotations

import hashlib
import json
from typing import BinaryIO

from deltaimg.tar.writer import ArchiveWriter, Fill

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
NAME_ANNOTATION = "io.containerd.image.name"
# (a descriptor of a blob the importer holds, or None) and (diff_id, size, fill) of the layer
OciLayer = tuple[dict | None, str, int, Fill | None]


def write_oci_image(out: BinaryIO, config_bytes: bytes, refs: list[str], layers: list[OciLayer]) -> tuple[str, int]:
    """Write the archive; return (the manifest's digest, the bytes of layers written into it).

    A layer without a descriptor needs a ``fill``, unless it repeats one written before it.
    """
    writer = ArchiveWriter(out)
    writer.add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    writer.add_dir("blobs/")
    writer.add_dir("blobs/sha256/")
    descriptors: list[dict] = []
    written: set[str] = set()
    layer_bytes = 0
    for reused, diff_id, size, fill in layers:
        if reused is not None:
            descriptors.append({"mediaType": reused.get("mediaType", MEDIA_LAYER), "digest": reused["digest"],
                                "size": reused.get("size", size)})
            continue
        descriptors.append({"mediaType": MEDIA_LAYER, "digest": diff_id, "size": size})
        if diff_id in written:
            continue
        assert fill is not None, "a layer that is neither reused nor repeated needs its content"
        writer.add_stream(_blob(diff_id), size, fill, diff_id)
        written.add(diff_id)
        layer_bytes += size
    config_digest = _add_blob(writer, config_bytes)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": descriptors,
    }, separators=(",", ":")).encode()
    manifest_digest = _add_blob(writer, manifest)
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [
        {"mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": len(manifest),
         "annotations": {NAME_ANNOTATION: ref}} for ref in refs]}
    writer.add_bytes("index.json", json.dumps(index, separators=(",", ":")).encode())
    writer.close()
    return manifest_digest, layer_bytes


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _add_blob(writer: ArchiveWriter, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    writer.add_bytes(_blob(digest), data)
    return digest
