"""``deltaimg apply`` into a live engine: verify, rebuild what the engine lacks, load, swap.

1. The bundle has been verified (signature, every payload) by the caller.
2. The base image must be in the engine, by ID. What the bundle reads of it is fetched by
   streaming its layers (from Docker's store in place where deltaimg may read it, else by
   ``docker save``): the base layers the archive carries whole are written to disk;
   of the others, just the bytes of the entries the deltas read are kept as they stream past
   (:meth:`BaseContent.fetch_entries`), so a small update of an image with a large base layer
   needs little disk.
3. The target's layers past the prefix it shares with the base are rebuilt into a *thin* archive
   (the engine already holds the shared prefix, so ``docker load`` skips it), loaded, checked to
   have the target's image ID, and tagged.
4. The containers on the base image are swapped onto the target (:mod:`deltaimg.apply.swap`).

Everything is written under ``work_dir`` (the state directory's scratch space when run by
:mod:`deltaimg.apply.unattended`, which empties it at the start of every run, so a killed rebuild
leaves nothing behind for long).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

from deltaimg import faults

from deltaimg.tar import writer as archivewriter

from deltaimg.engine.interface import Engine

from deltaimg.apply import swap
from deltaimg.apply.rebuild import Rebuild, bind_base, layer_sources, load_target_config, read_rebuild
from deltaimg.bundle.manifest import Method
from deltaimg.bundle.reader import Bundle
from deltaimg.delta.decoder import base_references
from deltaimg.errors import BaseMissingError, BundleFormatError, EngineError, IntegrityError
from deltaimg.images.daemon import open_daemon_image
from deltaimg.delta.base_content import BaseContent
from deltaimg.progress import Advance


@dataclass
class EngineOutcome:
    image_id: str
    loaded: bool  # False: the target was already in the engine
    swapped: list[swap.SwapResult] = field(default_factory=list)


def shared_prefix(rebuild: Rebuild) -> int:
    """How many leading layers the target shares with the base (the engine holds their chain):
    target layer *i* is base layer *i* (checked against both configs before anything is loaded)."""
    count = 0
    for position, layer in enumerate(rebuild.layers):
        if layer.method is not Method.BASE or layer.base_layer != position:
            break
        count += 1
    return count


def layers_to_load(engine: Engine, rebuild: Rebuild) -> int:
    """How many leading target layers the archive may leave out: those the engine already holds."""
    # Podman's load refuses archives that lack any layer file, whatever its store holds.
    return shared_prefix(rebuild) if engine.loads_thin_archives() else 0


def check_base_layers(bundle: Bundle, rebuild: Rebuild, keep: int) -> None:
    """Refuse, before the engine exports anything, deltas that read a base layer the base lacks
    (:func:`bind_base` checked the layers the target takes whole)."""
    used = {reference[0] for reference in _references(bundle, rebuild, keep)}
    if any(index >= len(rebuild.base_diff_ids) for index in used):
        raise BundleFormatError(f"{bundle.path}: a layer delta refers to base layer {max(used)}, which the base "
                                "lacks: the bundle is damaged")


def apply_to_engine(bundle: Bundle, engine: Engine, *, containers: list[str] | None, swap_containers: bool,
                    grace: float, dry_run: bool, log: Callable[[str], None], work_dir: str | None = None,
                    observer: swap.SwapObserver | None = None, advance: Advance | None = None) -> EngineOutcome:
    """``advance`` is told the bytes of every layer rebuilt, as they are written."""
    rebuild = read_rebuild(bundle)
    target_name = bundle.manifest.target.name
    present = engine.find_image(rebuild.target_id) is not None
    if present:
        log(f"{target_name} is already in the engine; not loading it again")
    else:
        require_base(engine, bundle, rebuild)
        if dry_run:
            log(f"would rebuild and load {target_name} from base {bundle.manifest.base.name}")
        else:
            _load_target(engine, bundle, rebuild, log, work_dir, advance)
    if not dry_run:
        engine.tag(rebuild.target_id, rebuild.target_tags)
    outcome = EngineOutcome(rebuild.target_id, loaded=not present and not dry_run)
    if swap_containers and engine.find_image(rebuild.base_id) is not None:
        if dry_run and not present:
            log("then every container on the base image would be swapped onto it")
        else:
            outcome.swapped = swap.swap_containers(engine, rebuild.base_id, rebuild.target_id, names=containers,
                                                   grace=grace, dry_run=dry_run, log=log, observer=observer)
    return outcome


def require_base(engine: Engine, bundle: Bundle, rebuild: Rebuild) -> None:
    """Raise :class:`BaseMissingError`, saying what the engine has instead, unless it has the base."""
    if engine.find_image(rebuild.base_id) is not None:
        return
    base, target = bundle.manifest.base, bundle.manifest.target
    repos = {tag.rsplit(":", 1)[0] for tag in base.tags}
    has = []
    for image in engine.tagged_images():
        for tag in image.get("RepoTags") or []:
            if tag.rsplit(":", 1)[0] in repos:
                has.append(f"{tag} {image['Id'][:19]}")
    instead = ", ".join(has) if has else "no image of that name"
    raise BaseMissingError(f"{bundle.path} updates {base.name} -> {target.name}, "
                           f"but this engine lacks {rebuild.base_id[:19]} (it has {instead})")


def _load_target(engine: Engine, bundle: Bundle, rebuild: Rebuild, log: Callable[[str], None], work_dir: str | None,
                 advance: Advance | None) -> None:
    attrs = engine.find_image(rebuild.base_id)
    layers = (attrs or {}).get("RootFS", {}).get("Layers")
    if not isinstance(layers, list):
        raise EngineError(f"the engine does not list the layers of {rebuild.base_id[:19]}")
    bind_base(bundle, rebuild, layers)  # the engine's record of the base's config; checked against it below
    keep = layers_to_load(engine, rebuild)
    check_base_layers(bundle, rebuild, keep)
    whole = {rebuild.base_diff_ids[layer.base_layer] for layer in rebuild.layers[keep:] if layer.method is Method.BASE}  # type: ignore[index]
    with tempfile.TemporaryDirectory(prefix="deltaimg-engine-", dir=work_dir) as workdir:
        archive = os.path.join(workdir, "target.tar")
        with open_daemon_image(engine, rebuild.base_id, tmp_dir=workdir) as base:  # its files go on leaving
            load_target_config(bundle, rebuild, base.config_bytes)
            faults.killpoint("rebuild")
            base.fetch(whole)
            with BaseContent(base, workdir, partial=True) as content, open(archive, "wb") as out:
                content.fetch_entries(_references(bundle, rebuild, keep))
                sources = layer_sources(bundle, rebuild, content, advance)
                thin = [(d, size, fill if position >= keep else None) for position, (d, size, fill) in enumerate(sources)]
                archivewriter.write_image(out, rebuild.target_config, rebuild.target_tags, thin)
        log(f"rebuilt {len(rebuild.layers) - keep} layer(s), every one matching its diff_id; loading")
        with open(archive, "rb") as stream:
            engine.load_archive(_Upload(stream, os.path.getsize(archive)))
    loaded = engine.find_image(rebuild.target_id)
    if loaded is None:
        raise EngineError(f"docker load did not produce image {rebuild.target_id[:19]}; the engine may use the "
                          "containerd image store, which deltaimg does not support yet")
    if loaded["Id"] != rebuild.target_id:
        raise IntegrityError(f"the engine loaded {loaded['Id'][:19]}, not {rebuild.target_id[:19]}")


def _references(bundle: Bundle, rebuild: Rebuild, keep: int) -> Iterator[tuple[int, int, int, int, int | None]]:
    """What rebuilding the target's delta layers past the first ``keep`` reads of the base."""
    for layer in rebuild.layers[keep:]:
        if layer.method is Method.DELTA:
            with bundle.open_payload(layer.payload) as payload:  # type: ignore[arg-type]
                yield from base_references(payload)


class _Upload:
    """The archive as ``docker load`` reads it; the crash tests' ``load`` kill point fires once at
    least half of it has gone to the engine (each read comes after the one before was sent)."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self._stream = stream
        self._half = size // 2
        self._sent = 0

    def read(self, n: int = -1) -> bytes:
        if self._sent and self._sent >= self._half:
            faults.killpoint("load")
        data = self._stream.read(n)
        self._sent += len(data)
        return data
