"""``docker://HOST/REPO:TAG``: an image in a registry, its layers streamed from the registry's blobs.

Docker schema 2 and OCI manifests; a manifest list or OCI index is resolved with ``--platform``,
or, without it, to the entry whose image config is the one wanted (the bundle's base ID). Nothing is downloaded until a layer is opened, and then
only that layer, as a stream (:class:`deltaimg.delta.base_content.BaseContent` keeps just the
bytes the deltas read).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from deltaimg.engine.registry import DOCKER_LIST, OCI_INDEX, Registry, RegistryRef
from deltaimg.errors import BaseMismatchError, ImageReadError
from deltaimg.images.blobs import open_decompressed
from deltaimg.images.model import Image, Layer, config_diff_ids, is_digest
from deltaimg.safejson import load_json

MAX_LAYERS = 1000
MAX_ENTRIES = 64  # manifests of an index looked into for the wanted config; an index of more is refused
LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar", "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd"}


@dataclass
class RegistryImage(Image):
    """An :class:`Image` in a registry; ``blobs`` are its manifest's layer descriptors, in order."""

    manifest_type: str = ""
    blobs: list[dict] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)  # the manifest's digest (a list's first, then its entry's)


def open_registry_image(registry: Registry, ref: RegistryRef, platform: str | None,
                        config_digest: str | None = None) -> RegistryImage | None:
    """The image ``ref`` names; None when the registry has nothing there. Of a manifest list, the
    ``platform`` entry, else the entry whose config is ``config_digest``."""
    fetched = registry.manifest(ref.repository, ref.reference)
    if fetched is None:
        return None
    media_type, body = fetched
    digests = ["sha256:" + hashlib.sha256(body).hexdigest()]
    document = _document(body, ref)
    media_type = document.get("mediaType") or media_type
    if media_type in (DOCKER_LIST, OCI_INDEX):
        choices = _entries(document, ref)
        if platform is not None:
            choices = [(name, digest) for name, digest in choices if _platform_is(name, platform)]
            if not choices:
                raise ImageReadError(f"{ref} has no image for {platform} (it has {_names(_entries(document, ref)) or 'none'})")
        elif config_digest is None:
            raise ImageReadError(f"{ref} is a manifest list of {_names(choices) or 'no platform'}; "
                                 "pass --platform OS/ARCH for the one this bundle updates")
        media_type, document, digest = _pick(registry, ref, choices, None if platform else config_digest)
        digests.append(digest)
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
                         blobs=[{k: blob[k] for k in ("mediaType", "size", "digest")} for blob in layers], digests=digests)


def _document(body: bytes, ref: RegistryRef) -> dict:
    document = load_json(body, f"{ref}: the manifest", "any image manifest does")
    if not isinstance(document, dict):
        raise ImageReadError(f"{ref}: the manifest is not a JSON object")
    return document


def _descriptor(value: object) -> bool:
    return isinstance(value, dict) and is_digest(value.get("digest")) and isinstance(value.get("size"), int) \
        and value["size"] >= 0 and isinstance(value.get("mediaType"), str)


def _entries(index: dict, ref: RegistryRef) -> list[tuple[str, str]]:
    """(``OS/ARCH[/VARIANT]``, manifest digest) of each entry of the index, in its order."""
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or len(manifests) > MAX_ENTRIES:
        raise ImageReadError(f"{ref}: the manifest list has {'over ' + str(MAX_ENTRIES) if isinstance(manifests, list) else 'no list of'} "
                             "manifests; name one image by its digest with --from")
    choices: list[tuple[str, str]] = []
    for entry in manifests:
        where = entry.get("platform") if isinstance(entry, dict) else None
        if isinstance(where, dict) and is_digest(entry.get("digest")):
            name = "/".join(str(where[k]) for k in ("os", "architecture", "variant") if where.get(k))
            choices.append((name, entry["digest"]))
    return choices


def _names(choices: list[tuple[str, str]]) -> str:
    return ", ".join(sorted({name for name, _ in choices}))


def _platform_is(name: str, platform: str) -> bool:
    return name == platform or name.rsplit("/", 1)[0] == platform and name.count("/") == 2


def _pick(registry: Registry, ref: RegistryRef, choices: list[tuple[str, str]],
          config_digest: str | None) -> tuple[str, dict, str]:
    """(media type, manifest, its digest) of the first choice, or of the one whose config is ``config_digest``."""
    for _, digest in choices:
        fetched = registry.manifest(ref.repository, digest)
        if fetched is None:
            raise ImageReadError(f"{ref}: the registry lacks the manifest {digest[:19]} its index names")
        document = _document(fetched[1], ref)
        config = document.get("config")
        if config_digest is None or isinstance(config, dict) and config.get("digest") == config_digest:
            return document.get("mediaType") or fetched[0], document, digest
    raise BaseMismatchError(f"{ref} is a manifest list of {_names(choices) or 'no platform'}, and none of "
                            f"them is this bundle's base {config_digest[:19]}: name the base with --from (or its "
                            "platform with --platform)")


def _opener(registry: Registry, ref: RegistryRef, digest: str):
    return lambda: open_decompressed(lambda: registry.open_blob(ref.repository, digest), f"{digest[:19]} of {ref}")
