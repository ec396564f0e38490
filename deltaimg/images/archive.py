"""``docker-archive:``: what ``docker save`` writes.

Both forms carry a ``manifest.json`` listing, per image, the config file and the layer files in
order: the legacy form (Docker 24 and older, ``<id>/layer.tar``) and the Docker 25+ form, an OCI
layout whose ``manifest.json`` points into ``blobs/sha256/``. Reading ``manifest.json`` serves both.
"""

from __future__ import annotations


from deltaimg.errors import ImageReadError
from deltaimg.images.model import Image, config_diff_ids
from deltaimg.safejson import load_json
from deltaimg.images.blobs import BlobStore
from deltaimg.images.layers import stored_layer


def read_docker_archive(store: BlobStore, ref: str | None) -> Image:
    source = store.root
    entries = load_json(store.read_small("manifest.json"), f"{source}: manifest.json", "any image archive's does")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ImageReadError(f"{source}: manifest.json lists no images")
    entry = _choose(entries, ref, source)
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise ImageReadError(f"{source}: manifest.json entry lacks Config or Layers")
    config_bytes = store.read_small(config_name)
    diff_ids = config_diff_ids(config_bytes, source)
    if len(diff_ids) != len(layer_names):
        raise ImageReadError(
            f"{source}: manifest.json lists {len(layer_names)} layers but the config has "
            f"{len(diff_ids)} diff_ids"
        )
    layers = [stored_layer(store, str(name), diff_id) for name, diff_id in zip(layer_names, diff_ids)]
    return Image(config_bytes=config_bytes, layers=layers, tags=_tags(entry), source=source)


def _choose(entries: list[dict], ref: str | None, source: str) -> dict:
    if ref is None:
        if len(entries) == 1:
            return entries[0]
        raise ImageReadError(
            f"{source} holds {len(entries)} images; pick one with {source}:REF, one of: "
            + ", ".join(_describe(e, i) for i, e in enumerate(entries))
        )
    for index, entry in enumerate(entries):
        tags = _tags(entry)
        if ref in tags or _normalize(ref) in (_normalize(t) for t in tags) or ref == f"@{index}":
            return entry
    raise ImageReadError(
        f"{source} has no image {ref!r}; it holds: "
        + ", ".join(_describe(e, i) for i, e in enumerate(entries))
    )


def _tags(entry: dict) -> list[str]:
    tags = entry.get("RepoTags")
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _describe(entry: dict, index: int) -> str:
    tags = _tags(entry)
    return " ".join(tags) if tags else f"@{index}"


def _normalize(tag: str) -> str:
    """``docker.io/library/app:1`` and ``app:1`` name the same image."""
    for prefix in ("docker.io/library/", "docker.io/", "library/"):
        if tag.startswith(prefix):
            tag = tag[len(prefix):]
    return tag if ":" in tag.rsplit("/", 1)[-1] else tag + ":latest"
