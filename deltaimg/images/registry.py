"""``docker://HOST/REPO:TAG``: an image in a registry, its layers streamed from the registry's blobs.

Docker schema 2 and OCI manifests; a manifest list or OCI index is resolved with ``--platform``
(without it, the choices are listed). Nothing is downloaded until a layer is opened, and then
only that layer, as a stream (:class:`deltaimg.delta.base_content.BaseContent` keeps just the
bytes the deltas read).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deltaimg.engine.registry import DOCKER_LIST, OCI_INDEX, Registry, RegistryRef
from deltaimg.errors import ImageReadError
from deltaimg.images.blobs import open_decompressed
from deltaimg.images.model import Image, Layer, config_diff_ids, is_digest
from deltaimg.safejson import load_json

MAX_LAYERS = 1000
LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar", "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd"}


@dataclass
class RegistryImage(Image):
    """An :class:`Image` in a registry; ``blobs`` are its manifest's layer descriptors, in order."""

    manifest_type: str = ""
    blobs: list[dict] = field(default_factory=list)


def open_registry_image(registry: Registry, ref: RegistryRef, platform: str | None) -> RegistryImage | None:
    """The image ``ref`` names; None when the registry has nothing there."""
    fetched = registry.manifest(ref.repository, ref.reference)
    if fetched is None:
        return None
    media_type, body = fetched
    document = _document(body, ref)
    media_type = document.get("mediaType") or media_type
    if media_type in (DOCKER_LIST, OCI_INDEX):
        digest = _choose(document, ref, platform)
        fetched = registry.manifest(ref.repository, digest)
        if fetched is None:
            raise ImageReadError(f"{ref}: the registry lacks the manifest {digest[:19]} its index names")
        media_type, body = fetched
        document = _document(body, ref)
        media_type = document.get("mediaType") or media_type
    config, layers = document.get("config"), document.get("layers")
    if document.get("schemaVersion") != 2 or not _descriptor(config) or not isinstance(layers, list) \
            or len(layers) > MAX_LAYERS or not all(map(_descriptor, layers)):
        raise ImageReadError(f"{ref}: the manifest is not a Docker schema 2 or OCI image manifest deltaimg reads")
    for blob in layers:
        if blob.get("mediaType") not in LAYER_TYPES:
            raise ImageReadError(f"{ref}: a layer has media type {blob.get('mediaType')!r}, which deltaimg does not read")
    config_bytes = registry.read_blob(ref.repository, config["digest"])  # type: ignore[index]
    diff_ids = config_diff_ids(config_bytes, str(ref))
    if len(diff_ids) != len(layers):
        raise ImageReadError(f"{ref}: the manifest has {len(layers)} layers and the config {len(diff_ids)}")
    image_layers = [Layer(diff_id, _opener(registry, ref, blob["digest"])) for diff_id, blob in zip(diff_ids, layers)]
    return RegistryImage(config_bytes, image_layers, tags=[str(ref)], source=str(ref), manifest_type=media_type,
                         blobs=[{k: blob[k] for k in ("mediaType", "size", "digest")} for blob in layers])


def _document(body: bytes, ref: RegistryRef) -> dict:
    document = load_json(body, f"{ref}: the manifest", "any image manifest does")
    if not isinstance(document, dict):
        raise ImageReadError(f"{ref}: the manifest is not a JSON object")
    return document


def _descriptor(value: object) -> bool:
    return isinstance(value, dict) and is_digest(value.get("digest")) and isinstance(value.get("size"), int) \
        and value["size"] >= 0 and isinstance(value.get("mediaType"), str)


def _choose(index: dict, ref: RegistryRef, platform: str | None) -> str:
    """The digest of the index's manifest for ``platform`` (``OS/ARCH[/VARIANT]``)."""
    choices: dict[str, str] = {}
    for entry in index.get("manifests") or [] if isinstance(index.get("manifests"), list) else []:
        where = entry.get("platform") if isinstance(entry, dict) else None
        if isinstance(where, dict) and is_digest(entry.get("digest")):
            name = "/".join(str(where[k]) for k in ("os", "architecture", "variant") if where.get(k))
            choices.setdefault(name, entry["digest"])
    if platform is None:
        raise ImageReadError(f"{ref} is a manifest list of {', '.join(sorted(choices)) or 'no platform'}; "
                             "pass --platform OS/ARCH for the one this bundle updates")
    for name, digest in choices.items():
        if name == platform or name.rsplit("/", 1)[0] == platform and name.count("/") == 2:
            return digest
    raise ImageReadError(f"{ref} has no image for {platform} (it has {', '.join(sorted(choices)) or 'none'})")


def _opener(registry: Registry, ref: RegistryRef, digest: str):
    return lambda: open_decompressed(lambda: registry.open_blob(ref.repository, digest), f"{digest[:19]} of {ref}")
