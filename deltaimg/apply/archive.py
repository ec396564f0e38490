"""``deltaimg apply`` without an engine: verify a bundle, rebuild the target image into an archive.

Order matters: the signature and every payload hash are checked, and the base is checked against
the bundle, before anything is written; the archive is written to a temporary file that is
renamed into place only after every layer hashed to its diff_id.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field

from deltaimg.codec import zstd_ref

from deltaimg.tar import writer as archivewriter
from deltaimg.bundle.format import CONFIG_PAYLOAD, Bundle
from deltaimg.delta.decoder import rebuild_layer
from deltaimg.errors import WRITE_FAILURES, BaseMismatchError, BundleFormatError, ImageReadError, IntegrityError, OutputError
from deltaimg.images.model import Image, config_diff_ids, is_digest
from deltaimg.delta.base_content import BaseContent
from deltaimg.progress import Advance, metered

MAX_CONFIG = 16 * 1024 * 1024


@dataclass
class Plan:
    """What the signed manifest asks for, checked for consistency.

    The manifest names no diff_ids: the base's come from the base image (:func:`bind_base`, once
    its config is known by its digest), the target's from the target config, which
    :func:`load_target_config` decodes against the base's into ``target_config``. Until then
    ``base_diff_ids`` and ``target_diff_ids`` are empty and the layer records have no "diff_id".
    """

    base_id: str
    target_id: str
    target_tags: list[str]
    layers: list[dict]  # the manifest's records (a repeat's with its "size"); "diff_id" once bound
    base_diff_ids: list[str] = field(default_factory=list)
    target_diff_ids: list[str] = field(default_factory=list)
    target_config: bytes = b""


def read_plan(bundle: Bundle) -> Plan:
    m = bundle.manifest
    base, target, layers = m.get("base"), m.get("target"), m.get("layers")
    if not (isinstance(base, dict) and isinstance(target, dict) and isinstance(layers, list)
            and all(isinstance(layer, dict) for layer in layers)):
        raise BundleFormatError(f"{bundle.path}: the manifest lacks its base, target or layers")
    tags = target.get("tags") or []
    if not is_digest(base.get("image_id")):
        raise BundleFormatError(f"{bundle.path}: the manifest's record of the base image is malformed")
    if not is_digest(target.get("image_id")):
        raise BundleFormatError(f"{bundle.path}: the manifest's record of the target image is malformed")
    if not (isinstance(tags, list) and all(map(_is_tag, tags))):
        raise BundleFormatError(f"{bundle.path}: the manifest's target tags are malformed")
    plan = Plan(base["image_id"], target["image_id"], list(tags), [dict(layer) for layer in layers])
    for position, layer in enumerate(plan.layers):
        layer.pop("diff_id", None)  # only ever taken from the configs
        method = layer.get("method")
        if method == "repeat":  # of a layer rebuilt earlier: a base layer is named again as such
            ok = type(layer.get("of")) is int and 0 <= layer["of"] < position \
                and plan.layers[layer["of"]].get("method") == "delta"
            if ok:
                layer["size"] = plan.layers[layer["of"]]["size"]
        else:
            ok = type(layer.get("size")) is int and layer["size"] >= 0
        if method == "base":  # its index is checked against the base's layers in bind_base
            ok = ok and type(layer.get("base_layer")) is int and layer["base_layer"] >= 0
        elif method == "delta":
            ok = ok and isinstance(layer.get("payload"), str) and layer["payload"] != CONFIG_PAYLOAD
            bundle.payload(layer.get("payload"))
        elif method != "repeat":
            ok = False
        if not ok:
            raise BundleFormatError(f"{bundle.path}: the manifest's layer {position} is malformed")
    return plan


def bind_base(bundle: Bundle, plan: Plan, base_diff_ids: list[str]) -> None:
    """Take the base's diff_ids from the base image (whose ID matches the plan's, so they are its
    config's): every base layer the manifest names must exist; each gets its diff_id."""
    if plan.base_diff_ids and plan.base_diff_ids != base_diff_ids:
        raise IntegrityError(f"{bundle.path}: the base image's layers changed while the bundle was applied")
    if not all(map(is_digest, base_diff_ids)):
        raise BaseMismatchError(f"{bundle.path}: the base image's layer list is malformed")
    for position, layer in enumerate(plan.layers):
        if layer["method"] == "base":
            if layer["base_layer"] >= len(base_diff_ids):
                raise BundleFormatError(f"{bundle.path}: the manifest's layer {position} is malformed (it names base "
                                        f"layer {layer['base_layer']}, and the base has {len(base_diff_ids)})")
            layer["diff_id"] = base_diff_ids[layer["base_layer"]]
    plan.base_diff_ids = list(base_diff_ids)


def load_target_config(bundle: Bundle, plan: Plan, base_config: bytes) -> None:
    """Decode the target config against ``base_config`` (the base's, checked by its digest) into
    ``plan.target_config``; it must hash to the target image ID and its diff_ids must fit the
    manifest's layers (a base layer's is the base's, a repeat's that of the layer it repeats).
    Every layer gets its diff_id from it; a rebuilt layer is checked against it as it is written."""
    if "sha256:" + hashlib.sha256(base_config).hexdigest() != plan.base_id:
        raise BaseMismatchError(f"{bundle.path}: the base image's config is not that of {plan.base_id[:19]}")
    try:
        base_diff_ids = config_diff_ids(base_config, f"base image {plan.base_id[:19]}")
    except ImageReadError as exc:
        raise BaseMismatchError(str(exc)) from None
    bind_base(bundle, plan, base_diff_ids)
    frame = bundle.read_payload(CONFIG_PAYLOAD, MAX_CONFIG)
    try:
        config = bytes(zstd_ref.decompress_at_most(frame, MAX_CONFIG, base_config))
    except IntegrityError as exc:
        raise IntegrityError(f"{bundle.path}: the target config does not decode: {exc}") from None
    if "sha256:" + hashlib.sha256(config).hexdigest() != plan.target_id:
        raise IntegrityError(f"{bundle.path}: the target config does not match the target image ID")
    try:
        diff_ids = config_diff_ids(config, bundle.path)
    except ImageReadError as exc:  # the config came in the bundle: the bundle is at fault
        raise BundleFormatError(str(exc)) from None
    ok = len(diff_ids) == len(plan.layers)
    for position, layer in enumerate(plan.layers if ok else []):
        if layer["method"] == "base":
            ok = ok and diff_ids[position] == layer["diff_id"]
        elif layer["method"] == "repeat":
            ok = ok and diff_ids[position] == diff_ids[layer["of"]]
    if not ok:
        raise BundleFormatError(f"{bundle.path}: the manifest's layers do not match the target config")
    for layer, diff_id in zip(plan.layers, diff_ids):
        layer["diff_id"] = diff_id
    plan.target_diff_ids = diff_ids
    plan.target_config = config


def _is_tag(tag: object) -> bool:
    """A name a bundle may tag its image with: one printable word (it is shown and passed on)."""
    return isinstance(tag, str) and 0 < len(tag) <= 256 and tag.isprintable() and not any(c.isspace() for c in tag)


def check_base(plan: Plan, base: Image, bundle_path: str) -> None:
    if base.config_digest != plan.base_id:
        raise BaseMismatchError(
            f"{bundle_path} updates image {plan.base_id[:19]}, but the base given is {base.config_digest[:19]} "
            f"({' '.join(base.tags) or base.source}); use the image the bundle was made from"
        )


def layer_key(position: int, layer: dict) -> tuple:
    """What tells a target layer apart without its diff_id: a base layer by its index in the base,
    a rebuilt one by its position (a repeat is of a rebuilt one, so no key of its own)."""
    if layer["method"] == "base":
        return ("base", layer["base_layer"])
    return ("delta", layer["of"] if layer["method"] == "repeat" else position)


def rebuild_size(plan: Plan, keep: int = 0) -> int:
    """Bytes of layers the rebuild writes past the first ``keep`` (each distinct layer once)."""
    return sum({layer_key(position, layer): layer["size"]
                for position, layer in enumerate(plan.layers) if position >= keep}.values())


def layer_sources(bundle: Bundle, plan: Plan, content: BaseContent, advance: Advance | None = None):
    """(diff_id, size, fill) per target layer, for :func:`archivewriter.write_image`.

    ``fill`` is None for a layer that repeats an earlier one; each fill tells ``advance`` the
    number of bytes of every block it writes.
    """
    sources = []
    for layer in plan.layers:
        fill = None
        if layer["method"] == "base":
            fill = _copy_base(content, layer["base_layer"], advance)
        elif layer["method"] == "delta":
            fill = _rebuild(bundle, layer["payload"], content, advance)
        sources.append((layer["diff_id"], layer["size"], fill))
    return sources


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


def apply_to_archive(bundle: Bundle, base: Image, output: str, force: bool = False,
                     advance: Advance | None = None) -> Plan:
    """Rebuild the bundle's target image as a ``docker save`` archive at ``output``; ``advance`` is
    told the bytes of every layer written (:func:`rebuild_size` in all)."""
    plan = read_plan(bundle)
    check_base(plan, base, bundle.path)
    load_target_config(bundle, plan, base.config_bytes)
    if base.diff_ids != plan.base_diff_ids:
        raise BaseMismatchError(f"{bundle.path}: the base image's layers differ from its config's")
    if os.path.lexists(output) and not force:  # lexists: a dangling symlink is there too
        raise OutputError(f"{output} exists; choose another path or pass --force")
    directory = os.path.dirname(os.path.abspath(output))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".deltaimg-", suffix=".tar.tmp")
    except OSError as exc:
        raise OutputError(f"cannot write in {directory}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            with tempfile.TemporaryDirectory(prefix="deltaimg-apply-") as workdir, BaseContent(base, workdir) as content:
                archivewriter.write_image(out, plan.target_config, plan.target_tags, layer_sources(bundle, plan, content, advance))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, output)
    except OSError as exc:
        if exc.errno not in WRITE_FAILURES and exc.filename != tmp:
            raise ImageReadError(f"cannot rebuild {output} from the base image {base.source}: {exc.strerror}") from None
        raise OutputError(f"cannot write {output}: {exc.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return plan
