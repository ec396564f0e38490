"""``deltaimg apply BUNDLE --to docker://HOST/REPO:TAG``: rebuild the target into a site registry.

1. The bundle has been verified by the caller. The base is read from the same registry
   (``--from``, by default the base's own repository and tag there); its config must hash to
   the bundle's base ID.
2. Only the base blobs the deltas read are streamed, and of them only the entries' bytes kept
   (:meth:`BaseContent.fetch_entries`); the layers the target takes whole stay in the registry.
3. Each rebuilt layer is checked against its diff_id and gzip-compressed deterministically
   (level 6, no name, mtime 0: the same bundle makes the same blob, so running again pushes nothing).
4. Push: a blob the target repository has (HEAD) is skipped; a base blob it lacks is mounted
   from the base repository (or streamed across if the registry will not mount); a rebuilt one
   is uploaded. Then the config (its digest is the target ID) and last the manifest, in the
   base manifest's schema (Docker schema 2 or OCI), so the tag moves only once every blob is there.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from deltaimg import interrupts
from deltaimg.apply import diskspace
from deltaimg.apply.chain import refuse_downgrade
from deltaimg.apply.engine import check_base_layers
from deltaimg.apply.rebuild import base_reads, check_base, layer_sources, load_target_config, read_rebuild
from deltaimg.bundle.manifest import Method
from deltaimg.bundle.reader import Bundle
from deltaimg.delta.base_content import BaseContent
from deltaimg.engine.registry import DOCKER_MANIFEST, OCI_MANIFEST, Registry, RegistryRef
from deltaimg.errors import WRITE_FAILURES, IntegrityError, OutputError, RegistryError, UsageError
from deltaimg.images.registry import RegistryImage, open_registry_image
from deltaimg.progress import Advance

GZIP_LEVEL = 6
CONFIG_TYPES = {DOCKER_MANIFEST: "application/vnd.docker.container.image.v1+json",
                OCI_MANIFEST: "application/vnd.oci.image.config.v1+json"}
GZIP_LAYER_TYPES = {DOCKER_MANIFEST: "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    OCI_MANIFEST: "application/vnd.oci.image.layer.v1.tar+gzip"}


@dataclass
class Pushed:
    """What the push did. ``bytes_pushed`` counts uploaded blobs, the config and the manifest;
    ``image_bytes`` the whole image as the registry stores it (every distinct blob and the manifest)."""

    target: str
    image_id: str
    source: str
    already: bool = False
    uploaded: int = 0
    mounted: int = 0
    present: int = 0
    bytes_pushed: int = 0
    image_bytes: int = 0
    digest: str = ""  # the target manifest's, under the tag
    base_digests: list[str] = field(default_factory=list)  # the base's manifest (and list), as read

    def as_json(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "base_digests"}


def default_source(bundle: Bundle, to: RegistryRef) -> RegistryRef:
    """The base's first tag, its repository path without a registry host, on ``to``'s registry."""
    for tag in bundle.manifest.base.tags:
        name, sep, version = tag.rpartition(":")
        if not sep or "/" in version or "@" in tag:
            continue
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            name = rest
        return RegistryRef(to.host, name, version)
    raise UsageError(f"{bundle.path}: the base image has no tag to find it by in the registry; name it with "
                     "--from docker://HOST/REPO:TAG")


def target_ref(bundle: Bundle, to: RegistryRef) -> RegistryRef:
    """``to``, with the target's own tag when it names none."""
    if to.digest:
        raise UsageError(f"--to names a tag to push, not a digest: {to}")
    if to.tag:
        return to
    tags = [t.rpartition(":")[2] for t in bundle.manifest.target.tags if ":" in t and "/" not in t.rpartition(":")[2]]
    return RegistryRef(to.host, to.repository, tags[0] if tags else "latest")


def apply_to_registry(bundle: Bundle, to: RegistryRef, source: RegistryRef | None, ca_file: str | None,
                      platform: str | None, log: Callable[[str], None], advance: Advance | None = None,
                      allow_downgrade: bool = False) -> Pushed:
    rebuild = read_rebuild(bundle)
    if not allow_downgrade:
        refuse_downgrade(bundle)
    to = target_ref(bundle, to)
    source = source or default_source(bundle, to)
    if source.host != to.host:
        raise UsageError(f"--from ({source.host}) must be on the registry of --to ({to.host}): the target is rebuilt "
                         "from the base already there")
    registry = Registry(to.host, ca_file)
    pushed = Pushed(str(to), rebuild.target_id, str(source))
    held = _holds(registry, to, rebuild.target_id)
    if held:
        log(f"{to} is already {rebuild.target_id[:19]}; nothing pushed")
        pushed.already, pushed.digest = True, held
        base_manifest = registry.manifest(source.repository, source.reference)
        pushed.base_digests = ["sha256:" + hashlib.sha256(base_manifest[1]).hexdigest()] if base_manifest else []
        return pushed
    base = open_registry_image(registry, source, platform, rebuild.base_id)
    if base is None:
        raise RegistryError(f"the registry has no {source}, the base {bundle.manifest.base.name} this bundle updates: "
                            "push the base there first, or name where it is with --from")
    check_base(rebuild, base, bundle.path)
    pushed.base_digests = base.digests
    load_target_config(bundle, rebuild, base.config_bytes)
    check_base_layers(bundle, rebuild)
    kind = base.manifest_type if base.manifest_type in CONFIG_TYPES else DOCKER_MANIFEST
    with interrupts.work_folder("deltaimg-registry-") as work:
        rebuilt = sum({layer.key(i): layer.size for i, layer in enumerate(rebuild.layers) if layer.method is Method.DELTA}.values())
        diskspace.check(work, None, [rebuilt], log)
        descriptors, files = _rebuild_layers(bundle, rebuild, base, work, GZIP_LAYER_TYPES[kind], advance)
        log(f"rebuilt {len(files)} layer(s), every one matching its diff_id; pushing to {to}")
        for descriptor in {d["digest"]: d for d in descriptors}.values():
            _push_blob(registry, to, source, descriptor, files.get(descriptor["digest"]), pushed)
            pushed.image_bytes += descriptor["size"]
    config = {"mediaType": CONFIG_TYPES[kind], "size": len(rebuild.target_config), "digest": rebuild.target_id}
    if registry.has_blob(to.repository, rebuild.target_id):
        pushed.present += 1
    else:
        registry.upload(registry.start_upload(to.repository) or "", rebuild.target_id, len(rebuild.target_config),
                        lambda: io.BytesIO(rebuild.target_config))
        pushed.bytes_pushed += len(rebuild.target_config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": kind, "config": config, "layers": descriptors},
                          indent=3).encode()
    registry.put_manifest(to.repository, to.reference, kind, manifest)
    pushed.digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    pushed.bytes_pushed += len(manifest)
    pushed.image_bytes += len(rebuild.target_config) + len(manifest)
    return pushed


def _holds(registry: Registry, ref: RegistryRef, image_id: str) -> str | None:
    """The digest of the manifest the tag names when it is one of this config (a list is never taken for it)."""
    fetched = registry.manifest(ref.repository, ref.reference)
    if fetched is None:
        return None
    try:
        config = json.loads(fetched[1]).get("config")
    except (ValueError, AttributeError):
        return None
    if isinstance(config, dict) and config.get("digest") == image_id:
        return "sha256:" + hashlib.sha256(fetched[1]).hexdigest()
    return None


def _rebuild_layers(bundle: Bundle, rebuild, base: RegistryImage, work: str, gzip_type: str,
                    advance: Advance | None) -> tuple[list[dict], dict[str, str]]:
    """The target manifest's layer descriptors, and the file of every blob rebuilt here by digest."""
    descriptors: list[dict] = []
    files: dict[str, str] = {}
    with BaseContent(base, work, partial=True) as content:
        content.fetch_entries(base_reads(bundle, rebuild))
        sources = layer_sources(bundle, rebuild, content, advance)
        for position, (layer, (diff_id, size, fill)) in enumerate(zip(rebuild.layers, sources)):
            if layer.method is Method.BASE:
                descriptors.append(dict(base.blobs[layer.base_layer]))  # type: ignore[index]
            elif layer.method is Method.REPEAT:
                descriptors.append(dict(descriptors[layer.of]))  # type: ignore[index]
            else:
                path = os.path.join(work, f"layer-{position}.tar.gz")
                digest, stored = _compress(fill, diff_id, size, path, work)
                files[digest] = path
                descriptors.append({"mediaType": gzip_type, "size": stored, "digest": digest})
    return descriptors, files


def _compress(fill, diff_id: str, size: int, path: str, work: str) -> tuple[str, int]:
    """Write the layer ``fill`` makes, gzip-compressed, checking it against its diff_id and size."""
    plain = hashlib.sha256()
    written = 0
    try:
        with open(path, "wb") as raw:
            packed = _Hashing(raw)
            with gzip.GzipFile(filename="", mode="wb", fileobj=packed, compresslevel=GZIP_LEVEL, mtime=0) as out:  # type: ignore[arg-type]
                def write(block: bytes) -> None:
                    nonlocal written
                    written += len(block)
                    plain.update(block)
                    out.write(block)
                fill(write)
    except OSError as exc:
        if exc.errno not in WRITE_FAILURES:
            raise
        raise OutputError(f"cannot write a rebuilt layer into {work}: {exc.strerror}; free space there or point "
                          "TMPDIR at a larger disk, and run again") from None
    if written != size or "sha256:" + plain.hexdigest() != diff_id:
        raise IntegrityError(f"rebuilt layer does not hash to its diff_id {diff_id[:19]}; nothing was pushed")
    return "sha256:" + packed.digest.hexdigest(), packed.size


def _push_blob(registry: Registry, to: RegistryRef, source: RegistryRef, descriptor: dict, path: str | None,
               pushed: Pushed) -> None:
    digest, size = descriptor["digest"], descriptor["size"]
    if registry.has_blob(to.repository, digest):
        pushed.present += 1
        return
    mountable = path is None and source.repository != to.repository
    location = registry.start_upload(to.repository, digest if mountable else None, source.repository if mountable else None)
    if location is None:
        pushed.mounted += 1
        return
    opener = (lambda: open(path, "rb")) if path else (lambda: registry.open_blob(source.repository, digest))
    registry.upload(location, digest, size, opener)
    pushed.uploaded += 1
    pushed.bytes_pushed += size


class _Hashing:
    """A file written through, hashed and counted on the way."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()

