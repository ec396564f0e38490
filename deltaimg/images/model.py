"""The image model every transport produces."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator

from deltaimg.errors import ImageReadError
from deltaimg.safejson import load_json

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass
class Layer:
    """One layer, by its uncompressed content.

    ``open`` returns a fresh stream of the *uncompressed* layer tar each time it is called.
    ``local`` is set when those uncompressed bytes already sit in a file at a known offset, so
    readers can seek instead of copying (legacy ``docker save`` archives, uncompressed OCI blobs).
    """

    diff_id: str
    open: Callable[[], BinaryIO]
    local: tuple[str, int, int] | None = None  # (path, offset, size) of the uncompressed tar
    # a seekable stream of the tar read in place, each byte only when read, not hashed (Docker's store)
    in_place: Callable[[], BinaryIO] | None = None


@dataclass
class Image:
    """An image: its exact config bytes and its layers in order."""

    config_bytes: bytes
    layers: list[Layer]
    tags: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def config_digest(self) -> str:
        """The image ID under Docker's graphdriver store: sha256 of the config bytes."""
        return "sha256:" + hashlib.sha256(self.config_bytes).hexdigest()

    @property
    def config(self) -> dict:
        return parse_config(self.config_bytes, self.source)

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    def layer_streams(self, diff_ids: set[str]) -> Iterator[tuple[str, BinaryIO]]:
        """Each of these layers once, as ``(diff_id, stream of its uncompressed tar)``, in the
        order the source reads them most cheaply. Read each stream before asking for the next.

        A source that must export a whole image to read one layer (an engine) reads them all in
        one pass; the others open one layer after the other.
        """
        for layer in self.layers:
            if layer.diff_id in diff_ids:
                diff_ids = diff_ids - {layer.diff_id}
                with layer.open() as stream:
                    yield layer.diff_id, stream


def parse_config(config_bytes: bytes, source: str) -> dict:
    """Parse an image config and check the parts deltaimg relies on."""
    config = load_json(config_bytes, f"{source}: image config", "any image config does")
    if not isinstance(config, dict):
        raise ImageReadError(f"{source}: image config is not a JSON object")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(map(is_digest, diff_ids)):
        raise ImageReadError(f"{source}: image config has no valid rootfs.diff_ids")
    container = config.get("config")
    if container is not None and not isinstance(container, dict):
        raise ImageReadError(f"{source}: image config's config is not a JSON object; the image is malformed")
    labels = (container or {}).get("Labels")
    if labels is not None and not (isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())):
        raise ImageReadError(f"{source}: image config's config.Labels is not an object of strings; the image is malformed")
    return config


def is_digest(value: object) -> bool:
    """``sha256:`` and 64 lowercase hex digits: the only digests deltaimg names files after."""
    return isinstance(value, str) and DIGEST.fullmatch(value) is not None


def config_diff_ids(config_bytes: bytes, source: str) -> list[str]:
    return list(parse_config(config_bytes, source)["rootfs"]["diff_ids"])


def layer_bytes(layers: Iterable[Layer]) -> int | None:
    """Uncompressed bytes of these layers (each counted once), or None when one is stored compressed
    or only in an engine, so its uncompressed size is not known before it is read."""
    sizes = {layer.diff_id: layer.local[2] if layer.local else None for layer in layers}
    if any(size is None for size in sizes.values()):
        return None
    return sum(size for size in sizes.values() if size is not None)
