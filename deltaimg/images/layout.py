"""``oci:`` and ``oci-archive:``: OCI image layouts, as skopeo, podman, buildah and Docker 25+ write them."""

from __future__ import annotations


from deltaimg.errors import ImageReadError
from deltaimg.images.model import Image, config_diff_ids
from deltaimg.safejson import load_json
from deltaimg.images.blobs import BlobStore
from deltaimg.images.layers import stored_layer

INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
REF_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
MAX_NESTING = 4
MAX_DESCRIPTORS = 1 << 16  # index entries visited in all, so nested indexes cannot multiply without end


def read_oci_layout(store: BlobStore, ref: str | None, platform: str | None) -> Image:
    source = store.root
    if not store.exists("index.json"):
        raise ImageReadError(f"{source}: not an OCI layout (no index.json)")
    candidates = list(_manifests(store, _json(store, "index.json"), {}, 0, [0]))
    chosen = [c for c in candidates if _matches(c, ref, platform)]
    if len(chosen) != 1:
        listing = ", ".join(_describe(c) for c in candidates) or "nothing"
        what = "no image matches" if not chosen else f"{len(chosen)} images match"
        hint = "; pick one with PATH:REF or --platform OS/ARCH" if candidates else ""
        raise ImageReadError(f"{source}: {what} (it holds: {listing}){hint}")
    manifest = chosen[0]["manifest"]
    config_bytes = store.read_small(_blob(manifest.get("config"), source))
    diff_ids = config_diff_ids(config_bytes, source)
    layer_descs = manifest.get("layers")
    if not isinstance(layer_descs, list) or len(layer_descs) != len(diff_ids):
        raise ImageReadError(f"{source}: manifest's layers do not match the config's diff_ids")
    layers = [stored_layer(store, _blob(d, source), diff_id) for d, diff_id in zip(layer_descs, diff_ids)]
    name = chosen[0]["annotations"].get(REF_ANNOTATIONS[0]) or chosen[0]["refname"]
    tags = [name] if name else []
    return Image(config_bytes=config_bytes, layers=layers, tags=tags, source=source)


def _json(store: BlobStore, name: str) -> dict:
    value = load_json(store.read_small(name), f"{store.root}: {name}", "any image layout's JSON does")
    if not isinstance(value, dict):
        raise ImageReadError(f"{store.root}: {name} is not a JSON object")
    return value


def _blob(descriptor: object, source: str) -> str:
    digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
    if not isinstance(digest, str) or ":" not in digest:
        raise ImageReadError(f"{source}: a descriptor has no valid digest")
    algorithm, hexdigest = digest.split(":", 1)
    if not hexdigest.isalnum():
        raise ImageReadError(f"{source}: invalid digest {digest!r}")
    return f"blobs/{algorithm}/{hexdigest}"


def _manifests(store: BlobStore, index: dict, annotations: dict[str, str], depth: int, visited: list[int]):
    """Yield every image manifest reachable from an index, with the annotations that name it.

    ``visited`` counts the index entries seen so far, across the nesting.
    """
    if depth > MAX_NESTING:
        raise ImageReadError(f"{store.root}: image indexes nest too deep")
    descriptors = index.get("manifests") or []
    if not isinstance(descriptors, list):
        raise ImageReadError(f"{store.root}: an image index's manifests are not a list")
    for descriptor in descriptors:
        if not isinstance(descriptor, dict):
            continue
        visited[0] += 1
        if visited[0] > MAX_DESCRIPTORS:
            raise ImageReadError(f"{store.root}: image indexes list more than {MAX_DESCRIPTORS} entries")
        merged = {**annotations, **_strings(descriptor.get("annotations"))}
        blob = _json(store, _blob(descriptor, store.root))
        if str(descriptor.get("mediaType")) in INDEX_TYPES or "manifests" in blob:
            yield from _manifests(store, blob, merged, depth + 1, visited)
            continue
        platform = _strings(descriptor.get("platform"))
        yield {
            "descriptor": descriptor,
            "manifest": blob,
            "annotations": merged,
            "refname": merged.get("org.opencontainers.image.ref.name", ""),
            "platform": "/".join(
                p for p in (platform.get("os"), platform.get("architecture"), platform.get("variant")) if p
            ),
        }


def _strings(value: object) -> dict[str, str]:
    """The string-valued entries of a JSON object (annotations, a platform); nothing else."""
    return {k: v for k, v in value.items() if isinstance(v, str)} if isinstance(value, dict) else {}


def _matches(candidate: dict, ref: str | None, platform: str | None) -> bool:
    if platform and candidate["platform"] and not (
        candidate["platform"] == platform or candidate["platform"].startswith(platform + "/")
    ):
        return False
    if ref is None:
        return True
    names = {candidate["refname"], *(candidate["annotations"].get(k, "") for k in REF_ANNOTATIONS)}
    names.discard("")
    short = {n.rsplit("/", 1)[-1] for n in names}
    return ref in names or ref in short or any(n.endswith(":" + ref) for n in names)


def _describe(candidate: dict) -> str:
    name = candidate["annotations"].get(REF_ANNOTATIONS[0]) or candidate["refname"] or candidate["descriptor"].get("digest", "?")[:19]
    return f"{name} ({candidate['platform']})" if candidate["platform"] else name
