"""The image model every transport produces."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from deltaimg.errors import ImageReadError


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
    compressed_size: int | None = None


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


def parse_config(config_bytes: bytes, source: str) -> dict:
    """Parse an image config and check the parts deltaimg relies on."""
    try:
        config = json.loads(config_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageReadError(f"{source}: image config is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ImageReadError(f"{source}: image config is not a JSON object")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and d.startswith("sha256:") and len(d) == 71 for d in diff_ids
    ):
        raise ImageReadError(f"{source}: image config has no valid rootfs.diff_ids")
    return config


def config_diff_ids(config_bytes: bytes, source: str) -> list[str]:
    return list(parse_config(config_bytes, source)["rootfs"]["diff_ids"])
