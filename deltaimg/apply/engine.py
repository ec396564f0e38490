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
   have the target's image ID, and tagged. Into Docker the archive is never on disk: it goes into
   the load as it is written, each layer checked as it goes (:mod:`deltaimg.apply.streamed`). Where the engine takes OCI archives naming the blobs it
   holds (Podman, containerd: :meth:`Engine.layer_blobs`), every layer the target takes whole from
   the base is named, not carried, wherever it sits.
4. The containers on the base image are swapped onto the target (:mod:`deltaimg.apply.swap`);
   on containerd, whose containers are the orchestrator's, a line says how to roll them instead.

Everything is written under ``work_dir`` (the state directory's scratch space when run by
:mod:`deltaimg.apply.unattended`, which empties it at the start of every run, so a killed rebuild
leaves nothing behind for long).
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable

from deltaimg import faults, interrupts

from deltaimg.tar import writer as archivewriter
from deltaimg.tar.gocheck import go_rejects
from deltaimg.tar.oci_writer import write_oci_image

from deltaimg.engine.interface import Engine

from deltaimg.apply import streamed, swap, swarm
from deltaimg.apply.rebuild import (Rebuild, base_reads, bind_base, layer_sources, load_target_config, read_rebuilds,
                                    rebuild_size, shared_from)
from deltaimg.bundle.manifest import Method
from deltaimg.bundle.reader import Bundle
from deltaimg.errors import BaseMissingError, BundleFormatError, EngineError, IntegrityError, printable
from deltaimg.images.daemon import open_daemon_image
from deltaimg.delta.base_content import BaseContent
from deltaimg.progress import Advance


@dataclass
class EngineOutcome:
    image_id: str
    loaded: bool  # False: the target was already in the engine
    swapped: list[swap.SwapResult] = field(default_factory=list)
    services: list[dict] = field(default_factory=list)  # Swarm services updated (deltaimg.apply.swarm)


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


def held_layers(engine: Engine, rebuild: Rebuild, blobs: list[dict] | None) -> set[int]:
    """The positions of the target layers the archive names but does not carry: with ``blobs``
    (an OCI archive), every layer taken whole from the base; else the shared prefix, where the
    engine loads thin archives."""
    if blobs is None:
        return set(range(layers_to_load(engine, rebuild)))
    return {position for position, layer in enumerate(rebuild.layers) if layer.method is Method.BASE}


def load_size(engine: Engine, rebuild: Rebuild) -> int:
    """Bytes of the layers the rebuild writes for this engine (each distinct layer once): those
    the archive carries, when the engine holds the base; else past the shared prefix, if it may."""
    if engine.find_image(rebuild.base_id) is None:
        return rebuild_size(rebuild, layers_to_load(engine, rebuild))
    held = held_layers(engine, rebuild, engine.layer_blobs(rebuild.base_id))
    return sum({layer.key(position): layer.size
                for position, layer in enumerate(rebuild.layers) if position not in held}.values())


def check_base_layers(bundle: Bundle, rebuild: Rebuild) -> None:
    """Refuse, before the engine exports anything, deltas that read a base layer the base lacks
    (:func:`bind_base` checked the layers the target takes whole)."""
    used = {reference[0] for reference in base_reads(bundle, rebuild)}
    if any(index >= len(rebuild.base_diff_ids) for index in used):
        raise BundleFormatError(f"{bundle.path}: a layer delta refers to base layer {max(used)}, which the base "
                                "lacks: the bundle is damaged")


def apply_to_engine(bundle: Bundle, engine: Engine, *, containers: list[str] | None, swap_containers: bool,
                    grace: float, dry_run: bool, log: Callable[[str], None], work_dir: str | None = None,
                    observer: swap.SwapObserver | None = None, advance: Advance | None = None) -> EngineOutcome:
    """``advance`` is told the bytes of every layer rebuilt, as they are written. A bundle of several
    images has every base checked first, then every target rebuilt, then loaded, then the containers
    of every base swapped as one set."""
    rebuilds = read_rebuilds(bundle)
    missing = []
    for rebuild in rebuilds:
        if engine.find_image(rebuild.target_id) is not None:
            log(f"{rebuild.target.name} is already in the engine; not loading it again")
        else:
            missing.append(rebuild)
    prepared = shared_from(rebuilds, missing)
    for rebuild in prepared:
        require_base(engine, bundle, rebuild)
    if dry_run:
        for rebuild in missing:
            log(f"would rebuild and load {rebuild.target.name} from base {rebuild.base.name}")
    elif missing:
        _load_targets(engine, bundle, prepared, missing, log, work_dir, advance)
    if not dry_run:
        for rebuild in rebuilds:
            engine.tag(rebuild.target_id, rebuild.target_tags)
    outcome = EngineOutcome(rebuilds[0].target_id, loaded=bool(missing) and not dry_run)
    if swap_containers and not engine.swaps_containers:
        tags = [" ".join(r.target_tags) or r.target_id[:19] for r in rebuilds]
        log(f"{engine.name}'s containers belong to its orchestrator; deltaimg swaps none: roll each workload onto "
            f"{', '.join(tags)} (kubectl set image deployment/NAME "
            "CONTAINER=IMAGE -n NAMESPACE; with imagePullPolicy IfNotPresent, as no registry serves it)")
    elif swap_containers:
        pairs = [(r.base_id, r.target_id, r.target_tags) for r in rebuilds if engine.find_image(r.base_id) is not None]
        if pairs and dry_run and missing:
            log("then every container on the base image would be swapped onto it" if len(rebuilds) == 1 else
                "then every container on the base images would be swapped onto their targets, as one set")
        elif pairs:
            outcome.swapped = swap.swap_images(engine, pairs, names=containers, grace=grace, dry_run=dry_run, log=log,
                                               observer=observer)
    if swap_containers and engine.swaps_containers:
        for rebuild in rebuilds:
            outcome.services += swarm.update_services(engine, rebuild, list(rebuild.base.tags), dry_run, log)
    return outcome


def require_base(engine: Engine, bundle: Bundle, rebuild: Rebuild) -> None:
    """Raise :class:`BaseMissingError`, saying what the engine has instead, unless it has the base."""
    if engine.find_image(rebuild.base_id) is not None:
        return
    base, target = rebuild.base, rebuild.target
    repos = {tag.rsplit(":", 1)[0] for tag in base.tags}
    has = []
    for image in engine.tagged_images():
        for tag in image.get("RepoTags") or []:
            if tag.rsplit(":", 1)[0] in repos:
                has.append(f"{tag} {image['Id'][:19]}")
    instead = ", ".join(has) if has else "no image of that name"
    also = f" (and {len(bundle.manifest.images) - 1} more image(s), none changed)" if len(bundle.manifest.images) > 1 else ""
    raise BaseMissingError(f"{bundle.path} updates {base.name} -> {target.name}{also}, "
                           f"but this engine lacks {rebuild.base_id[:19]} (it has {instead})")


def _load_targets(engine: Engine, bundle: Bundle, prepared: list[Rebuild], missing: list[Rebuild],
                  log: Callable[[str], None], work_dir: str | None, advance: Advance | None) -> None:
    """Rebuild every target of ``missing`` into its archive (``prepared`` adds the earlier pairs
    whose layers they share), then load them all, in the bundle's order."""
    shared: dict = {}
    archives = []
    loading = {rebuild.index for rebuild in missing}
    with interrupts.work_folder("deltaimg-engine-", work_dir) as workdir:
        with ExitStack() as stack:  # every base open until the last archive that shares their layers is written
            for rebuild in prepared:
                archives += _write_target(engine, bundle, rebuild, rebuild.index in loading, stack, workdir, shared,
                                          log, advance, len(prepared) > 1)
        for rebuild, archive in archives:
            with open(archive, "rb") as stream:
                names = engine.load_archive(streamed.Upload(stream, os.path.getsize(archive)))
            _check_loaded(engine, rebuild, names)


def _write_target(engine: Engine, bundle: Bundle, rebuild: Rebuild, load: bool, stack: ExitStack, workdir: str,
                  shared: dict, log: Callable[[str], None], advance: Advance | None, several: bool) -> list[tuple[Rebuild, str]]:
    """Open the base, bind the rebuild to it and (when ``load``) write its target's archive: the
    (rebuild, archive) to load. Its rebuilt layers' fills go into ``shared``."""
    attrs = engine.find_image(rebuild.base_id)
    layers = (attrs or {}).get("RootFS", {}).get("Layers")
    if not isinstance(layers, list):
        raise EngineError(f"the engine does not list the layers of {rebuild.base_id[:19]}")
    bind_base(bundle, rebuild, layers)  # the engine's record of the base's config; checked against it below
    blobs = engine.layer_blobs(rebuild.base_id)  # not None: a thin OCI archive names every base layer it holds
    held = held_layers(engine, rebuild, blobs)
    check_base_layers(bundle, rebuild)
    whole = {rebuild.base_diff_ids[layer.base_layer] for position, layer in enumerate(rebuild.layers)  # type: ignore[index]
             if layer.method is Method.BASE and position not in held}
    base_dir = tempfile.mkdtemp(prefix=f"base-{rebuild.index}-", dir=workdir)
    base = stack.enter_context(open_daemon_image(engine, rebuild.base_id, tmp_dir=base_dir))  # its files go on leaving
    load_target_config(bundle, rebuild, base.config_bytes)
    faults.killpoint("rebuild")
    base.fetch(whole)
    content = stack.enter_context(BaseContent(base, base_dir, partial=True, in_place=True))
    content.fetch_entries(base_reads(bundle, rebuild))
    sources = layer_sources(bundle, rebuild, content, advance, shared)
    if not load:
        return []  # in the engine already; its layers are rebuilt for a later pair that shares them
    if blobs is None and engine.loads_thin_archives():  # Docker: into its load as it is written
        _check_loaded(engine, rebuild, streamed.load_rebuilt(engine, bundle, rebuild, held, sources, content, log))
        return []
    archive = os.path.join(workdir, f"target-{rebuild.index}.tar")  # Podman, containerd: on disk, checked, loaded
    _write_archive(archive, rebuild, held, blobs, sources)
    check_loadable(archive, bundle, rebuild, held, oci=blobs is not None)
    log(f"rebuilt {len(rebuild.layers) - len(held)} layer(s)"
        + (f" of {rebuild.target.name}" if several else "") + ", every one matching its diff_id; loading")
    return [(rebuild, archive)]


def _check_loaded(engine: Engine, rebuild: Rebuild, names: list[str]) -> None:
    loaded = engine.find_image(rebuild.target_id)
    if loaded is None:
        raise EngineError(f"{engine.name} reported loading {printable(', '.join(names))} but holds no image whose config "
                          f"is {rebuild.target_id[:19]}; the load was incomplete or changed the image: see the engine's "
                          "log, then run apply again")
    if loaded["Id"] != rebuild.target_id:
        raise IntegrityError(f"the engine loaded {loaded['Id'][:19]}, not {rebuild.target_id[:19]}")


def _write_archive(archive: str, rebuild: Rebuild, held: set[int], blobs: list[dict] | None, sources: list) -> None:
    with open(archive, "wb") as out:
        if blobs is None:
            thin = [(d, size, None if position in held else fill) for position, (d, size, fill) in enumerate(sources)]
            archivewriter.write_image(out, rebuild.target_config, rebuild.target_tags, thin)
        else:
            write_oci_image(out, rebuild.target_config, rebuild.target_tags, [
                (blobs[layer.base_layer] if position in held else None, d, size, None if position in held else fill)  # type: ignore[index]
                for position, (layer, (d, size, fill)) in enumerate(zip(rebuild.layers, sources))])


def check_loadable(archive: str, bundle: Bundle, rebuild: Rebuild, held: set[int], oci: bool) -> None:
    """Raise :class:`EngineError` before the load if a layer the bundle rebuilt (a base layer is in
    the engine already) has a header Go's tar reader rejects: the load would fail half way."""
    with tarfile.open(archive) as written:  # written by deltaimg a moment ago
        for position, layer_record in enumerate(rebuild.layers):
            diff_id = rebuild.target_diff_ids[position]
            if position in held or layer_record.method is not Method.DELTA:
                continue
            hexdigest = diff_id.split(":", 1)[1]
            member = f"blobs/sha256/{hexdigest}" if oci else f"{hexdigest}/layer.tar"
            with written.extractfile(member) as layer:  # type: ignore[union-attr]
                problem = go_rejects(layer)
            if problem is not None:
                raise streamed.rejected_layer(rebuild.target.name, position, diff_id, problem)
