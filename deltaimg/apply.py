"""``deltaimg apply`` without an engine: verify a bundle, rebuild the target image into an archive.

Order matters: the signature and every payload hash are checked, and the base is checked against
the bundle, before anything is written; the archive is written to a temporary file that is
renamed into place only after every layer hashed to its diff_id.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from typing import Callable

from deltaimg import archivewriter
from deltaimg.bundle import Bundle
from deltaimg.decoder import rebuild_layer
from deltaimg.errors import BaseMismatchError, BundleFormatError, IntegrityError, OutputError
from deltaimg.images.base import Image, config_diff_ids
from deltaimg.oldcontent import OldContent

MAX_CONFIG = 16 * 1024 * 1024


@dataclass
class Plan:
    """What the signed manifest asks for, checked for consistency."""

    base_id: str
    base_diff_ids: list[str]
    target_id: str
    target_config: bytes
    target_tags: list[str]
    layers: list[dict]


def read_plan(bundle: Bundle) -> Plan:
    m = bundle.manifest
    try:
        base, target, layers = m["base"], m["target"], m["layers"]
        config = bundle.read_payload(target["config_payload"], MAX_CONFIG)
        plan = Plan(base["image_id"], list(base["diff_ids"]), target["image_id"], config,
                    [t for t in target.get("tags") or [] if isinstance(t, str)], list(layers))
    except (KeyError, TypeError) as exc:
        raise BundleFormatError(f"{bundle.path}: the manifest lacks {exc}") from None
    if "sha256:" + hashlib.sha256(config).hexdigest() != plan.target_id:
        raise IntegrityError(f"{bundle.path}: the target config does not match the target image ID")
    diff_ids = config_diff_ids(config, bundle.path)
    if [layer.get("diff_id") for layer in plan.layers] != diff_ids:
        raise BundleFormatError(f"{bundle.path}: the manifest's layers do not match the target config")
    for position, layer in enumerate(plan.layers):
        method = layer.get("method")
        ok = isinstance(layer.get("size"), int) and layer["size"] >= 0
        if method == "base":
            ok = ok and isinstance(layer.get("base_layer"), int) and 0 <= layer["base_layer"] < len(plan.base_diff_ids) \
                and plan.base_diff_ids[layer["base_layer"]] == layer["diff_id"]
        elif method == "repeat":
            ok = ok and isinstance(layer.get("of"), int) and 0 <= layer["of"] < position
        elif method == "delta":
            ok = ok and isinstance(layer.get("payload"), str)
            bundle.payload(layer.get("payload", ""))
        else:
            ok = False
        if not ok:
            raise BundleFormatError(f"{bundle.path}: the manifest's layer {position} is malformed")
    return plan


def check_base(plan: Plan, base: Image, bundle_path: str) -> None:
    if base.config_digest != plan.base_id:
        raise BaseMismatchError(
            f"{bundle_path} updates image {plan.base_id[:19]}, but the base given is {base.config_digest[:19]} "
            f"({' '.join(base.tags) or base.source}); use the image the bundle was made from"
        )
    if base.diff_ids != plan.base_diff_ids:
        raise BaseMismatchError(f"{bundle_path}: the base image's layers differ from the bundle's record")


def layer_sources(bundle: Bundle, plan: Plan, content: OldContent, wanted: Callable[[str], bool] = lambda d: True):
    """(diff_id, size, fill) per target layer, for :func:`archivewriter.write_image`.

    ``fill`` is None for layers not ``wanted`` (an engine that already has them).
    """
    sources = []
    for layer in plan.layers:
        fill = None
        if wanted(layer["diff_id"]):
            if layer["method"] == "base":
                fill = _copy_base(content, layer["base_layer"])
            elif layer["method"] == "delta":
                fill = _rebuild(bundle, layer["payload"], content)
        sources.append((layer["diff_id"], layer["size"], fill))
    return sources


def _copy_base(content: OldContent, index: int):
    def fill(write) -> None:
        with content.open_layer(index) as f:
            while block := f.read(1 << 20):
                write(block)
    return fill


def _rebuild(bundle: Bundle, payload: str, content: OldContent):
    def fill(write) -> None:
        with bundle.open_payload(payload) as f:
            rebuild_layer(f, content, write)
    return fill


def apply_to_archive(bundle: Bundle, base: Image, output: str, force: bool = False) -> Plan:
    """Rebuild the bundle's target image as a ``docker save`` archive at ``output``."""
    plan = read_plan(bundle)
    check_base(plan, base, bundle.path)
    if os.path.exists(output) and not force:
        raise OutputError(f"{output} exists; choose another path or pass --force")
    directory = os.path.dirname(os.path.abspath(output))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".deltaimg-", suffix=".tar.tmp")
    except OSError as exc:
        raise OutputError(f"cannot write in {directory}: {exc.strerror}") from None
    try:
        with tempfile.TemporaryDirectory(prefix="deltaimg-apply-") as workdir, OldContent(base, workdir) as content:
            with os.fdopen(fd, "wb") as out:
                archivewriter.write_image(out, plan.target_config, plan.target_tags, layer_sources(bundle, plan, content))
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, output)
    except OSError as exc:
        raise OutputError(f"cannot write {output}: {exc.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return plan
