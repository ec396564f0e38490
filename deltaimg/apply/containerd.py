"""``deltaimg apply`` into containerd (plain, or k3s's): verify, rebuild what containerd lacks, import.

1. The bundle has been verified (signature, every payload) by the caller.
2. The base is found in the namespace by its config digest (the bundle's base image ID), its
   references looked at first. What the deltas read of its layers streams from the content
   store; just the bytes of the entries they name are kept (:meth:`BaseContent.fetch_entries`).
3. The target is written as an OCI archive. With ``reuse`` (the default) only the rebuilt layers
   are in it: every layer the target takes whole from the base is named by the base's own blob
   descriptor, which the content store holds, and unpacking skips the snapshots it has. Without,
   every layer is written (what an importer that lacks the base's blobs needs).
4. ``ctr images import`` under the bundle's target references; the imported image's config must
   hash to the bundle's target image ID.

Containers there belong to the orchestrator: nothing is restarted; :func:`next_steps` says what
to run.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable

from deltaimg.apply.archive import layer_sources, load_target_config, read_plan
from deltaimg.bundle.format import Bundle
from deltaimg.delta.base_content import BaseContent
from deltaimg.delta.decoder import base_references
from deltaimg.engine import containerd
from deltaimg.errors import BaseMissingError, BundleFormatError, EngineError, IntegrityError, UsageError, printable
from deltaimg.report import name_of
from deltaimg.tar.oci_writer import OciLayer, write_oci_image

COPY_CHUNK = 1 << 20


@dataclass
class ContainerdOutcome:
    image_id: str  # the config digest: the bundle's target image ID
    manifest_digest: str  # what containerd lists as the image's digest
    refs: list[str]
    imported: bool  # False: the namespace already held the target
    archive_bytes: int = 0  # the size of the archive handed to ctr images import
    layer_bytes: int = 0  # of which layer content
    reused_layers: int = 0  # layers named by the base's blobs, not written
    next_steps: list[str] = field(default_factory=list)


def normalize_ref(ref: str) -> str:
    """A reference as containerd stores it: ``busybox`` is ``docker.io/library/busybox:latest``."""
    name, _, digest = ref.partition("@")
    first, _, rest = name.partition("/")
    if not rest:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    if not digest and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return f"{name}@{digest}" if digest else name


def apply_to_containerd(bundle: Bundle, ctr: containerd.Ctr, *, reuse: bool = True, dry_run: bool = False,
                        log: Callable[[str], None], work_dir: str | None = None) -> ContainerdOutcome:
    plan = read_plan(bundle)
    refs = [normalize_ref(tag) for tag in plan.target_tags]
    if not refs:
        raise UsageError(f"{bundle.path}: its target has no tag; containerd keeps images by reference only")
    target_name = name_of(bundle.manifest["target"])
    present = containerd.find_image(ctr, plan.target_id, refs)
    if present is not None:
        log(f"{target_name} is already in containerd ({printable(present.ref)}); not importing it again")
        outcome = ContainerdOutcome(plan.target_id, present.target_digest, refs, imported=False)
        if not dry_run:
            for ref in refs:
                if ref != present.ref:
                    ctr.run("images", "tag", "--force", present.ref, ref)
    else:
        base = containerd.find_image(ctr, plan.base_id, [normalize_ref(t) for t in bundle.manifest["base"].get("tags") or []])
        if base is None:
            raise BaseMissingError(f"{bundle.path} updates {name_of(bundle.manifest['base'])} -> {target_name}, but "
                                   f"containerd's namespace {printable(ctr.namespace)} lacks {plan.base_id[:19]} "
                                   "(see ctr images ls)")
        if dry_run:
            log(f"would rebuild {target_name} from {printable(base.ref)} and import it into namespace "
                f"{printable(ctr.namespace)}")
            return ContainerdOutcome(plan.target_id, "", refs, imported=False, next_steps=next_steps(bundle, refs))
        outcome = _import_target(bundle, plan, ctr, base, refs, reuse, log, work_dir)
    outcome.next_steps = next_steps(bundle, refs)
    return outcome


def _import_target(bundle: Bundle, plan, ctr: containerd.Ctr, base: containerd.ContainerdImage, refs: list[str],
                   reuse: bool, log: Callable[[str], None], work_dir: str | None) -> ContainerdOutcome:
    load_target_config(bundle, plan, base.config_bytes)  # checks the base's config against the bundle's base ID
    image = containerd.as_image(ctr, base)
    references = list(_delta_references(bundle, plan))
    if any(layer >= len(plan.base_diff_ids) for layer, *_ in references):
        raise BundleFormatError(f"{bundle.path}: a layer delta refers to a base layer the base lacks: the bundle is damaged")
    with tempfile.TemporaryDirectory(prefix="deltaimg-containerd-", dir=work_dir) as workdir:
        archive = os.path.join(workdir, "target.oci.tar")
        with BaseContent(image, workdir, partial=True) as content, open(archive, "wb") as out:
            content.fetch_entries(references)
            layers: list[OciLayer] = []
            for layer, (diff_id, size, fill) in zip(plan.layers, layer_sources(bundle, plan, content)):
                if layer["method"] == "base" and reuse:
                    layers.append((base.layer_descriptors[layer["base_layer"]], diff_id, size, None))
                elif layer["method"] == "base":
                    layers.append((None, diff_id, size, _stream_layer(image.layers[layer["base_layer"]].open)))
                else:
                    layers.append((None, diff_id, size, fill))
            manifest_digest, layer_bytes = write_oci_image(out, plan.target_config, refs, layers)
        archive_bytes = os.path.getsize(archive)
        reused = sum(1 for reused, *_ in layers if reused is not None)
        log(f"rebuilt {len(layers) - reused} layer(s), every one matching its diff_id; importing {archive_bytes} bytes "
            f"({reused} layer(s) reused from {printable(base.ref)})")
        containerd.import_archive(ctr, archive)
    listed = containerd.image_refs(ctr)
    for ref in refs:
        if listed.get(ref) != manifest_digest:
            raise EngineError(f"ctr images import did not point {printable(ref)} at the imported manifest "
                              f"{manifest_digest[:19]} (it lists {listed.get(ref, 'no such image')[:19]})")
        imported = containerd.read_image(ctr, ref, manifest_digest)
        if imported.config_digest != plan.target_id:
            raise IntegrityError(f"containerd holds {printable(ref)} as config {imported.config_digest[:19]}, not the "
                                 f"bundle's target {plan.target_id[:19]}")
    return ContainerdOutcome(plan.target_id, manifest_digest, refs, imported=True, archive_bytes=archive_bytes,
                             layer_bytes=layer_bytes, reused_layers=reused)


def next_steps(bundle: Bundle, refs: list[str]) -> list[str]:
    """What the operator runs next: deltaimg restarts no pod, the orchestrator does."""
    base_tags = bundle.manifest["base"].get("tags") or []
    old = printable(normalize_ref(base_tags[0])) if base_tags else bundle.manifest["base"]["image_id"][:19]
    new = printable(refs[0])
    return [f"find the workloads on the old image: kubectl get deployments,daemonsets,statefulsets -A -o wide | grep -F '{old.split('@')[0]}'",
            f"roll each onto the new one: kubectl set image deployment/NAME CONTAINER={new} -n NAMESPACE "
            "(then kubectl rollout status deployment/NAME -n NAMESPACE)",
            "with imagePullPolicy Always, set it to IfNotPresent first: no registry can serve this image"]


def _delta_references(bundle: Bundle, plan):
    for layer in plan.layers:
        if layer["method"] == "delta":
            with bundle.open_payload(layer["payload"]) as payload:
                yield from base_references(payload)


def _stream_layer(opener):
    def fill(write) -> None:
        with opener() as stream:
            while block := stream.read(COPY_CHUNK):
                write(block)
    return fill
