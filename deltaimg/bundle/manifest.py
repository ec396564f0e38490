"""The bundle manifest, parsed once into typed records at the bundle boundary.

Everything past this module reads :class:`Manifest`, never the JSON: a field is checked here for
its type and its bounds, whether or not the manifest was signed (an unverified one is shown by
``inspect``; a signed one may come from a compromised key). docs/bundle-format.md gives the JSON.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from deltaimg.errors import BundleFormatError, UsageError

CONFIG_PAYLOAD = "config"  # the target image config, a zstd delta against the base image's config bytes
MAX_IMAGES = 64  # image pairs in one bundle: an application's images, far fewer than this
# a delta layer's "stats" in the manifest: these counts of what make did, in this order
STATS_FIELDS = ("entries", "files", "identical", "bsdiff", "zstd_delta", "literal", "headers_from_old", "literal_bytes")
MAX_PAYLOADS = 100_000
MAX_LAYERS = 10_000  # Docker stops at 125 layers (overlay2's limit); this is far beyond any image
MAX_TAG = 256
MAX_TEXT = 256  # tool and created strings: shown, never parsed beyond a timestamp
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class Method(str, enum.Enum):
    """How apply gets a target layer; the value is what the manifest stores."""

    BASE = "base"  # a layer of the base image, copied
    REPEAT = "repeat"  # the same as an earlier rebuilt layer of the target
    DELTA = "delta"  # rebuilt from a payload against the base image's content
    SHARED = "shared"  # the same as a rebuilt layer of an earlier image of the bundle (format 3)


@dataclass(frozen=True)
class ImageRecord:
    """The base or the target as the manifest names it (its diff_ids are in its config)."""

    image_id: str
    tags: tuple[str, ...]
    created: str | None

    @property
    def name(self) -> str:
        """The first tag and the short ID: how messages name an image."""
        return image_name(self.tags, self.image_id)

    def as_json(self) -> dict:
        return {"image_id": self.image_id, "tags": list(self.tags), "created": self.created}


@dataclass(frozen=True)
class PayloadRecord:
    name: str
    sha256: str
    size: int
    offset: int  # in the payload area: the payloads lie back to back in manifest order


@dataclass(frozen=True)
class LayerRecord:
    """One target layer. ``size`` is the layer tar's size (a repeat's is that of the layer it repeats)."""

    method: Method
    size: int
    base_layer: int | None = None  # Method.BASE: its index in the base image
    of: int | None = None  # Method.REPEAT, Method.SHARED: the position of the layer it repeats
    image: int | None = None  # Method.SHARED: the index of the earlier image pair whose layer it is
    payload: str | None = None  # Method.DELTA: the payload holding its delta
    stats: tuple[int, ...] | None = None  # Method.DELTA: make's counts, in STATS_FIELDS order

    def key(self, position: int) -> tuple[str, int]:
        """What tells a target layer apart without its diff_id: a base layer by its index in the
        base, a rebuilt one by its position (a repeat is of a rebuilt one, so no key of its own)."""
        if self.method is Method.BASE:
            return ("base", self.base_layer)  # type: ignore[return-value]
        if self.method is Method.SHARED:  # written whole in this image's archive: a layer of its own
            return ("delta", position)
        return ("delta", self.of if self.method is Method.REPEAT else position)  # type: ignore[return-value]


@dataclass(frozen=True)
class Split:
    """A bundle written as parts NAME.001, NAME.002, ...: the part size, the count, and the sha256
    of every part but the first."""

    part_size: int
    count: int
    sha256: tuple[str, ...]


@dataclass(frozen=True)
class ImagePair:
    """One base -> target update of a bundle: what a one-image bundle holds at the manifest's top."""

    base: ImageRecord
    target: ImageRecord
    layers: tuple[LayerRecord, ...]
    changes: dict | None  # the package and config changes `deltaimg diff` reports, checked in shape
    config: str = CONFIG_PAYLOAD  # the payload holding the target config


@dataclass(frozen=True)
class Manifest:
    tool: str | None
    created: str | None
    images: tuple[ImagePair, ...]  # one pair, or (format 3) several, applied as one update
    payloads: tuple[PayloadRecord, ...]
    split: Split | None
    document: dict = field(repr=False)  # the JSON as signed, for --json output
    _by_name: dict[str, PayloadRecord] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {record.name: record for record in self.payloads})

    @property
    def single(self) -> ImagePair:
        """The one pair of a one-image bundle; what takes only those refuses the others here."""
        if len(self.images) != 1:
            raise UsageError(f"this bundle updates {len(self.images)} images ({', '.join(p.target.name for p in self.images)}); "
                             "this takes a bundle of one image (see docs/bundle-format.md, several images)")
        return self.images[0]

    @property
    def base(self) -> ImageRecord:
        return self.single.base

    @property
    def target(self) -> ImageRecord:
        return self.single.target

    @property
    def layers(self) -> tuple[LayerRecord, ...]:
        return self.single.layers

    @property
    def changes(self) -> dict | None:
        return self.single.changes

    @property
    def name(self) -> str:
        """How messages name what the bundle updates: ``BASE -> TARGET``, one per pair."""
        return "; ".join(f"{pair.base.name} -> {pair.target.name}" for pair in self.images)

    @property
    def payload_area(self) -> int:
        """The payload area's size."""
        return sum(record.size for record in self.payloads)

    def payload(self, name: str) -> PayloadRecord | None:
        return self._by_name.get(name)


def image_name(tags: object, image_id: str) -> str:
    """``app:1.1 sha256:0123456789ab``: the first tag (or "(untagged)") and the short ID."""
    first = tags[0] if isinstance(tags, (list, tuple)) and tags else "(untagged)"
    return f"{first} {image_id[:19]}"


def is_digest(value: object) -> bool:
    """``sha256:`` and 64 lowercase hex digits: the only digests deltaimg names files after."""
    return isinstance(value, str) and DIGEST.fullmatch(value) is not None


def is_tag(tag: object) -> bool:
    """A name a bundle may tag its image with: one printable word (it is shown and passed on)."""
    return isinstance(tag, str) and 0 < len(tag) <= MAX_TAG and tag.isprintable() and not any(c.isspace() for c in tag)


def config_payload(index: int) -> str:
    """The name of image pair ``index``'s target config payload."""
    return CONFIG_PAYLOAD if index == 0 else f"{CONFIG_PAYLOAD}-{index}"


def parse_manifest(value: object, path: str) -> Manifest:
    """The manifest's JSON value checked and typed; a :class:`BundleFormatError` naming what is wrong.
    A one-image manifest has its pair at the top; a several-image one (format 3) lists them in ``images``."""
    payloads = value.get("payloads") if isinstance(value, dict) else None
    if not isinstance(value, dict) or not isinstance(payloads, list) or len(payloads) > MAX_PAYLOADS:
        raise BundleFormatError(f"{path}: the manifest is not a deltaimg manifest")
    pairs = value.get("images", [value])
    if not (isinstance(pairs, list) and 0 < len(pairs) <= MAX_IMAGES and all(isinstance(p, dict) for p in pairs)):
        raise BundleFormatError(f"{path}: the manifest's image list is malformed")
    records = _payloads(payloads, path)
    by_name = {record.name: record for record in records}
    configs = {config_payload(index) for index in range(len(pairs))}
    images: list[ImagePair] = []
    for index, pair in enumerate(pairs):
        where = "" if len(pairs) == 1 else f" of image {index}"
        base, target, layers = pair.get("base"), pair.get("target"), pair.get("layers")
        if not (isinstance(base, dict) and isinstance(target, dict) and isinstance(layers, list)
                and len(layers) <= MAX_LAYERS and all(isinstance(layer, dict) for layer in layers)):
            raise BundleFormatError(f"{path}: the manifest lacks its base, target or layers{where}")
        images.append(ImagePair(_image(base, path, "base"), _image(target, path, "target"),
                                tuple(_layers(layers, by_name, configs, images, path)),
                                _changes(pair.get("changes"), path), config_payload(index)))
    return Manifest(
        tool=_text(value.get("tool"), path, "tool"),
        created=_text(value.get("created"), path, "creation time"),
        images=tuple(images),
        payloads=tuple(records),
        split=_split(value["split"], path) if "split" in value else None,
        document=value,
    )


def _payloads(payloads: list, path: str) -> list[PayloadRecord]:
    records, names, offset = [], set(), 0
    for record in payloads:
        if not (
            isinstance(record, dict)
            and isinstance(record.get("name"), str)
            and record["name"] not in names
            and type(record.get("size")) is int  # not a float or bool that compares equal
            and record["size"] >= 0
        ):
            raise BundleFormatError(f"{path}: the manifest's payload list is malformed")
        digest = record.get("sha256")
        if not (isinstance(digest, str) and SHA256_HEX.fullmatch(digest)):
            raise BundleFormatError(f"{path}: the manifest's payload hash is malformed (payload {record['name']})")
        names.add(record["name"])
        records.append(PayloadRecord(record["name"], digest, record["size"], offset))
        offset += record["size"]
    return records


def _text(value: object, path: str, what: str) -> str | None:
    if value is None or (isinstance(value, str) and len(value) <= MAX_TEXT and value.isprintable()):
        return value
    raise BundleFormatError(f"{path}: the manifest's {what} is malformed")


def _image(record: dict, path: str, which: str) -> ImageRecord:
    if not is_digest(record.get("image_id")):
        raise BundleFormatError(f"{path}: the manifest's record of the {which} image is malformed")
    tags = record.get("tags") or []
    if not (isinstance(tags, list) and len(tags) <= MAX_LAYERS and all(map(is_tag, tags))):
        raise BundleFormatError(f"{path}: the manifest's {which} tags are malformed")
    return ImageRecord(record["image_id"], tuple(tags), _text(record.get("created"), path, f"{which} creation time"))


def _layers(layers: list[dict], payloads: dict[str, PayloadRecord], configs: set[str], earlier: list[ImagePair],
            path: str) -> list[LayerRecord]:
    parsed: list[LayerRecord] = []
    for position, layer in enumerate(layers):
        method = layer.get("method")
        size = layer.get("size")
        record: LayerRecord | None = None
        if method == Method.REPEAT.value:  # of a layer rebuilt earlier: a base layer is named again as such
            of = layer.get("of")
            if type(of) is int and 0 <= of < position and parsed[of].method is Method.DELTA:
                record = LayerRecord(Method.REPEAT, parsed[of].size, of=of)
        elif method == Method.SHARED.value:  # of a layer an earlier image pair rebuilds
            image, of = layer.get("image"), layer.get("of")
            if type(image) is int and 0 <= image < len(earlier) and type(of) is int \
                    and 0 <= of < len(earlier[image].layers) and earlier[image].layers[of].method is Method.DELTA:
                record = LayerRecord(Method.SHARED, earlier[image].layers[of].size, of=of, image=image)
        elif type(size) is int and size >= 0:
            if method == Method.BASE.value:  # its index is checked against the base's layers on apply
                index = layer.get("base_layer")
                if type(index) is int and index >= 0:
                    record = LayerRecord(Method.BASE, size, base_layer=index)
            elif method == Method.DELTA.value:
                name, stats = layer.get("payload"), layer.get("stats")
                if isinstance(name, str) and name not in configs and _stats_ok(stats):
                    if name not in payloads:
                        raise BundleFormatError(f"{path}: the manifest names no payload {name!r}")
                    record = LayerRecord(Method.DELTA, size, payload=name, stats=tuple(stats) if stats else None)
        if record is None:
            raise BundleFormatError(f"{path}: the manifest's layer {position} is malformed")
        parsed.append(record)
    return parsed


def _stats_ok(stats: object) -> bool:
    return stats is None or (isinstance(stats, list) and len(stats) == len(STATS_FIELDS)
                             and all(type(n) is int and n >= 0 for n in stats))


def _split(split: object, path: str) -> Split:
    ok = isinstance(split, dict) and type(split.get("part_size")) is int and split["part_size"] > 0 \
        and type(split.get("count")) is int and split["count"] > 1 \
        and isinstance(split.get("sha256"), list) and len(split["sha256"]) == split["count"] - 1 \
        and all(isinstance(digest, str) and SHA256_HEX.fullmatch(digest) for digest in split["sha256"])
    if not ok:
        raise BundleFormatError(f"{path}: the manifest's split record is malformed")
    return Split(split["part_size"], split["count"], tuple(split["sha256"]))  # type: ignore[index]


def _changes(changes: object, path: str) -> dict | None:
    """The changes section as ``deltaimg diff`` writes it: lists of objects with these keys."""
    if changes is None:
        return None
    shapes = {"packages": ("change", "ecosystem", "name", "old", "new"), "config": ("key", "name", "old", "new")}
    ok = isinstance(changes, dict) and isinstance(changes.get("package_databases"), list) \
        and all(isinstance(name, str) for name in changes["package_databases"])
    for key, fields in shapes.items():
        entries = changes.get(key) if ok else None  # type: ignore[union-attr]
        ok = ok and isinstance(entries, list) and all(isinstance(entry, dict) and all(f in entry for f in fields)
                                                      for entry in entries)
        ok = ok and all(isinstance(entry[f], str) or entry[f] is None
                        for entry in entries for f in fields if key == "packages" or f in ("key", "name"))
    if not ok:
        raise BundleFormatError(f"{path}: the manifest's changes section is malformed")
    return changes  # type: ignore[return-value]
