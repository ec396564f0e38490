"""What applying a bundle rebuilds: the manifest's target layers bound to their diff_ids, and each
layer's source (a base layer copied, or a delta rebuilt against the base's content).

The manifest names no diff_ids: the base's come from the base image (:func:`bind_base`, once its
config is known by its digest), the target's from the target config, which
:func:`load_target_config` decodes against the base's. Archive apply and engine apply both start here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator

from deltaimg.bundle.manifest import CONFIG_PAYLOAD, ImagePair, ImageRecord, LayerRecord, Method, is_digest
from deltaimg.bundle.reader import Bundle
from deltaimg.codec import zstd_ref
from deltaimg.delta.base_content import BaseContent, BaseRead
from deltaimg.delta.decoder import base_references, rebuild_layer
from deltaimg.errors import BaseMismatchError, BundleFormatError, ImageReadError, IntegrityError
from deltaimg.images.model import Image, config_diff_ids
from deltaimg.progress import Advance, metered
from deltaimg.tar.writer import Fill

MAX_CONFIG = 16 * 1024 * 1024


@dataclass
class Rebuild:
    """The target as the bundle rebuilds it. ``base_diff_ids`` is empty until :func:`bind_base`,
    ``target_diff_ids`` and ``target_config`` until :func:`load_target_config`."""

    base: ImageRecord
    target: ImageRecord
    layers: tuple[LayerRecord, ...]
    base_diff_ids: list[str] = field(default_factory=list)
    target_diff_ids: list[str] = field(default_factory=list)
    target_config: bytes = b""
    config: str = CONFIG_PAYLOAD  # the payload holding the target config
    index: int = 0  # the image pair's place in the bundle

    @property
    def base_id(self) -> str:
        return self.base.image_id

    @property
    def target_id(self) -> str:
        return self.target.image_id

    @property
    def target_tags(self) -> list[str]:
        return list(self.target.tags)


def read_rebuild(bundle: Bundle) -> Rebuild:
    """The rebuild a one-image bundle's (already checked) manifest asks for."""
    return _rebuild_of(bundle.manifest.single, 0)


def read_rebuilds(bundle: Bundle) -> list[Rebuild]:
    """One rebuild per image pair of the bundle, in the bundle's order."""
    return [_rebuild_of(pair, index) for index, pair in enumerate(bundle.manifest.images)]


def _rebuild_of(pair: ImagePair, index: int) -> Rebuild:
    return Rebuild(pair.base, pair.target, pair.layers, config=pair.config, index=index)


def bind_base(bundle: Bundle, rebuild: Rebuild, base_diff_ids: list[str]) -> None:
    """Take the base's diff_ids from the base image (whose ID matches the bundle's, so they are its
    config's): every base layer the manifest names must exist."""
    if rebuild.base_diff_ids and rebuild.base_diff_ids != base_diff_ids:
        raise IntegrityError(f"{bundle.path}: the base image's layers changed while the bundle was applied")
    if not all(map(is_digest, base_diff_ids)):
        raise BaseMismatchError(f"{bundle.path}: the base image's layer list is malformed")
    for position, layer in enumerate(rebuild.layers):
        if layer.method is Method.BASE and layer.base_layer >= len(base_diff_ids):  # type: ignore[operator]
            raise BundleFormatError(f"{bundle.path}: the manifest's layer {position} is malformed (it names base "
                                    f"layer {layer.base_layer}, and the base has {len(base_diff_ids)})")
    rebuild.base_diff_ids = list(base_diff_ids)


def load_target_config(bundle: Bundle, rebuild: Rebuild, base_config: bytes) -> None:
    """Decode the target config against ``base_config`` (the base's, checked by its digest); it must
    hash to the target image ID and its diff_ids must fit the manifest's layers (a base layer's is
    the base's, a repeat's that of the layer it repeats). A rebuilt layer is checked against its
    diff_id as it is written."""
    if "sha256:" + hashlib.sha256(base_config).hexdigest() != rebuild.base_id:
        raise BaseMismatchError(f"{bundle.path}: the base image's config is not that of {rebuild.base_id[:19]}")
    try:
        base_diff_ids = config_diff_ids(base_config, f"base image {rebuild.base_id[:19]}")
    except ImageReadError as exc:
        raise BaseMismatchError(str(exc)) from None
    bind_base(bundle, rebuild, base_diff_ids)
    frame = bundle.read_payload(rebuild.config, MAX_CONFIG)
    try:
        config = bytes(zstd_ref.decompress_at_most(frame, MAX_CONFIG, base_config))
    except IntegrityError as exc:
        raise IntegrityError(f"{bundle.path}: the target config does not decode: {exc}") from None
    if "sha256:" + hashlib.sha256(config).hexdigest() != rebuild.target_id:
        raise IntegrityError(f"{bundle.path}: the target config does not match the target image ID")
    try:
        diff_ids = config_diff_ids(config, bundle.path)
    except ImageReadError as exc:  # the config came in the bundle: the bundle is at fault
        raise BundleFormatError(str(exc)) from None
    ok = len(diff_ids) == len(rebuild.layers)
    for position, layer in enumerate(rebuild.layers if ok else ()):
        if layer.method is Method.BASE:
            ok = ok and diff_ids[position] == base_diff_ids[layer.base_layer]  # type: ignore[index]
        elif layer.method is Method.REPEAT:
            ok = ok and diff_ids[position] == diff_ids[layer.of]  # type: ignore[index]
    if not ok:
        raise BundleFormatError(f"{bundle.path}: the manifest's layers do not match the target config")
    rebuild.target_diff_ids = diff_ids
    rebuild.target_config = config


def check_base(rebuild: Rebuild, base: Image, bundle_path: str) -> None:
    if base.config_digest != rebuild.base_id:
        raise BaseMismatchError(
            f"{bundle_path} updates image {rebuild.base_id[:19]}, but the base given is {base.config_digest[:19]} "
            f"({' '.join(base.tags) or base.source}); use the image the bundle was made from"
        )


def rebuild_size(rebuild: Rebuild, keep: int = 0) -> int:
    """Bytes of layers the rebuild writes past the first ``keep`` (each distinct layer once)."""
    return sum({layer.key(position): layer.size
                for position, layer in enumerate(rebuild.layers) if position >= keep}.values())


def layer_sources(bundle: Bundle, rebuild: Rebuild, content: BaseContent, advance: Advance | None = None,
                  shared: dict[tuple[int, int], Fill] | None = None):
    """(diff_id, size, fill) per target layer, for :func:`deltaimg.tar.writer.write_image`.

    ``fill`` is None for a layer that repeats an earlier one; each fill tells ``advance`` the
    number of bytes of every block it writes. ``shared`` holds the fills of the earlier image
    pairs' rebuilt layers, by (pair, position), for the layers this one shares with them; this
    pair's are added to it.
    """
    sources = []
    for position, (layer, diff_id) in enumerate(zip(rebuild.layers, rebuild.target_diff_ids)):
        fill = None
        if layer.method is Method.BASE:
            fill = _copy_base(content, layer.base_layer, advance)  # type: ignore[arg-type]
        elif layer.method is Method.DELTA:
            fill = _rebuild(bundle, layer.payload, content, advance)  # type: ignore[arg-type]
            if shared is not None:
                shared[(rebuild.index, position)] = fill
        elif layer.method is Method.SHARED:
            fill = (shared or {}).get((layer.image, layer.of))  # type: ignore[arg-type]
            if fill is None:
                raise BundleFormatError(f"{bundle.path}: layer {position} of {rebuild.target.name} is that of image "
                                        f"{layer.image}, which is not rebuilt with it")
        sources.append((diff_id, layer.size, fill))
    return sources


def shared_from(rebuilds: list[Rebuild], wanted: list[Rebuild]) -> list[Rebuild]:
    """The rebuilds to prepare so that ``wanted`` can be written: those, and the earlier pairs whose
    rebuilt layers they share, in the bundle's order."""
    indexes = {r.index for r in wanted} | {layer.image for r in wanted for layer in r.layers
                                             if layer.method is Method.SHARED}
    return [r for r in rebuilds if r.index in indexes]


def base_reads(bundle: Bundle, rebuild: Rebuild) -> Iterator[BaseRead]:
    """What rebuilding the target's delta layers reads of the base."""
    for layer in rebuild.layers:
        if layer.method is Method.DELTA:
            with bundle.open_payload(layer.payload) as payload:  # type: ignore[arg-type]
                yield from base_references(payload)


def _copy_base(content: BaseContent, index: int, advance: Advance | None):
    def fill(write) -> None:
        write = metered(write, advance) if advance else write
        with content.open_layer(index) as f:
            while block := f.read(1 << 20):
                write(block)
    return fill


def _rebuild(bundle: Bundle, payload: str, content: BaseContent, advance: Advance | None):
    def fill(write) -> None:
        with bundle.open_payload(payload) as f:
            rebuild_layer(f, content, metered(write, advance) if advance else write)
    return fill
