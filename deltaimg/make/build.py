"""``deltaimg make``: compare two images and write one signed bundle."""

from __future__ import annotations

import datetime
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

from deltaimg import __version__, interrupts

from deltaimg.codec import zstd_ref
from deltaimg.bundle.manifest import STATS_FIELDS, Method, config_payload
from deltaimg.bundle.writer import BundleWriter
from deltaimg.delta.encoder import LayerEncoder, base_reads
from deltaimg.errors import WRITE_FAILURES, ImageReadError, OutputError
from deltaimg.diff.images import change_summary
from deltaimg.images.model import Image
from deltaimg.streams import HashingReader
from deltaimg.images.daemon import DaemonImage
from deltaimg.delta.base_content import BaseContent, BaseIndex, BaseRead

WORKERS = max(1, min(4, os.cpu_count() or 1))


def image_summary(image: Image) -> dict:
    """An image as the manifest names it. Its diff_ids are left out: the base's are in the base
    config (on the applying host, checked by its digest), the target's in the config payload."""
    config = image.config
    return {
        "image_id": image.config_digest,
        "tags": image.tags,
        "created": config.get("created"),
    }


def make_bundle(base: Image, target: Image, output: str, private_key, progress: Callable[[int], None] | None = None,
                split_size: int | None = None, force: bool = False) -> dict:
    """Write the bundle that turns ``base`` into ``target``; returns the signed manifest's summary.
    An existing ``output`` is refused before any work unless ``force``."""
    return make_images([(base, target)], output, private_key, progress, split_size, force)


def make_images(pairs: list[tuple[Image, Image]], output: str, private_key, progress: Callable[[int], None] | None = None,
                split_size: int | None = None, force: bool = False) -> dict:
    """Write one bundle that turns each pair's base into its target (format 3 for several pairs): a
    target layer that an earlier pair's target rebuilds too is shipped once, in that pair's payload."""
    writer = BundleWriter(output, split_size, force)
    images: list[dict] = []
    shared: dict[str, tuple[int, int, int]] = {}  # diff_id -> (pair, position, size) of a layer a payload rebuilds
    try:
        with interrupts.work_folder("deltaimg-make-") as workdir, ThreadPoolExecutor(WORKERS) as pool:
            for index, (base, target) in enumerate(pairs):
                with BaseContent(base, workdir, partial=True) as content:
                    layers = _encode_layers(base, target, content, writer, pool, workdir, progress,
                                            "layer-" if index == 0 else f"layer-{index}-", shared)
                for position, layer in enumerate(layers):
                    if layer["method"] == Method.DELTA.value:
                        shared.setdefault(layer["diff_id"], (index, position, layer["size"]))
                config = zstd_ref.compress(target.config_bytes, prefix=base.config_bytes)
                writer.add_payload(config_payload(index), lambda w, config=config: w.write(config))
                images.append({"base": image_summary(base), "target": image_summary(target), "layers": layers,
                               "changes": change_summary(base, target)})  # after encoding: the layers are exported
            stored = [{**image, "layers": [_stored(layer) for layer in image["layers"]]} for image in images]
            manifest = {"tool": f"deltaimg {__version__}",
                        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        **(stored[0] if len(stored) == 1 else {"images": stored})}
            executables = any(layer.get("stats", {}).get("executables") for image in images for layer in image["layers"])
            manifest = writer.finish(manifest, private_key, executables=executables)
    except BaseException:
        writer.abort()
        raise
    for image, (_, target) in zip(images, pairs):
        distinct = {layer["diff_id"]: layer["size"] for layer in image["layers"]}
        image["full_image_size"] = len(target.config_bytes) + sum(distinct.values())
    summary = {**manifest, "bundle_size": writer.size, "files": writer.paths,
               "full_image_size": sum(image["full_image_size"] for image in images)}
    if len(images) == 1:
        return {**summary, "layers": images[0]["layers"]}
    return {**summary, "images": images}


def _base_reads(index: BaseIndex, base: Image, target: Image, changed: set[str]) -> Iterator[BaseRead]:
    """What the encoder will read of the base image for these target layers; reading them costs
    one more pass over the target image's changed layers."""
    for diff_id, stream in target.layer_streams(changed):
        position = target.diff_ids.index(diff_id)
        try:
            yield from base_reads(index, stream, _home(base, target, position), f"layer {position} ({diff_id})")
        except OSError as exc:
            raise ImageReadError(f"{target.source}: cannot read layer {position} ({exc})") from None


def _home(base: Image, target: Image, position: int) -> int | None:
    """The base layer that target layer ``position`` replaces: the base one at that position, unless the
    target image keeps it elsewhere (or it repeats an earlier base layer, which is indexed once)."""
    if position >= len(base.layers):
        return None
    diff_id = base.diff_ids[position]
    return position if diff_id not in target.diff_ids and base.diff_ids.index(diff_id) == position else None


def _stored(layer: dict) -> dict:
    """A layer's manifest record: what the target's diff_ids and the payload table do not say
    already (the diff_id, the payload's size), and the encoder's statistics as a list."""
    if layer["method"] == Method.REPEAT:
        return {"method": Method.REPEAT.value, "of": layer["of"]}
    if layer["method"] == Method.SHARED:
        return {"method": Method.SHARED.value, "image": layer["image"], "of": layer["of"]}
    stored = {key: value for key, value in layer.items() if key not in ("diff_id", "payload_size", "stats")}
    if "stats" in layer:
        stored["stats"] = [layer["stats"][key] for key in STATS_FIELDS]
    return stored


def _encode_layers(base: Image, target: Image, content: BaseContent, writer: BundleWriter, pool, workdir: str, progress,
                   prefix: str, shared: dict[str, tuple[int, int, int]]) -> list[dict]:
    records: list[dict] = []
    done: dict[str, int] = {}
    changed = {layer.diff_id for layer in target.layers} - set(base.diff_ids) - set(shared)
    if isinstance(target, DaemonImage):  # export only the changed layers from the engine, in one pass
        target.fetch(changed)
    index = BaseIndex(content) if changed else None
    if index is not None and content.streamed:
        content.fetch_entries(_base_reads(index, base, target, changed))
    for position, layer in enumerate(target.layers):
        if layer.diff_id in base.diff_ids:
            base_layer = base.diff_ids.index(layer.diff_id)
            records.append({"diff_id": layer.diff_id, "method": Method.BASE.value, "base_layer": base_layer,
                            "size": content.layer_size(base_layer)})
            continue
        if layer.diff_id in done:
            records.append({"diff_id": layer.diff_id, "method": Method.REPEAT.value, "of": done[layer.diff_id],
                            "size": records[done[layer.diff_id]]["size"]})
            continue
        if layer.diff_id in shared:  # an earlier pair's payload rebuilds it
            pair, of, size = shared[layer.diff_id]
            records.append({"diff_id": layer.diff_id, "method": Method.SHARED.value, "image": pair, "of": of, "size": size})
            continue
        assert index is not None
        encoder = LayerEncoder(index, pool, workdir, _home(base, target, position), f"layer {position} ({layer.diff_id})",
                               layer.local)
        name = f"{prefix}{position}"
        reader_box: list[HashingReader] = []

        def fill(out, layer=layer, encoder=encoder) -> None:
            with layer.open() as stream:
                reader = HashingReader(stream, progress)
                reader_box.append(reader)
                encoder.encode(reader, out)  # type: ignore[arg-type]
                reader.drain()

        try:
            payload = writer.add_payload(name, fill)
        except OSError as exc:
            if exc.errno in WRITE_FAILURES:  # the bundle's spool or the encoder's scratch files, not the image
                raise OutputError(f"cannot write {writer.output} or its scratch files: {exc.strerror}; free some "
                                  "space there (or in $TMPDIR) and run again") from None
            raise ImageReadError(f"{target.source}: cannot read layer {position} ({exc})") from None
        except EOFError as exc:
            raise ImageReadError(f"{target.source}: cannot read layer {position} ({exc})") from None
        reader = reader_box[0]
        if "sha256:" + reader.digest.hexdigest() != layer.diff_id:
            raise ImageReadError(
                f"{target.source}: layer {position} does not hash to its diff_id {layer.diff_id[:19]}; the image is damaged"
            )
        done[layer.diff_id] = len(records)
        records.append({"diff_id": layer.diff_id, "method": Method.DELTA.value, "payload": name, "size": reader.size,
                        "payload_size": payload["size"], "stats": encoder.stats.as_dict()})
    return records



