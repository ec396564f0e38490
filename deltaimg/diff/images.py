"""What differs between two images: layers, files, packages and config.

Each image is read as the filesystem a container sees: its layers applied in order, a
``.wh.NAME`` entry deleting ``NAME`` (and everything under it) from the layers below, a
``.wh..wh..opq`` entry hiding everything the layers below have in its directory. Layers are
streamed: a file's payload is hashed as it passes and then dropped; only its metadata (kind,
size, sha256, mode, owner, link target, xattrs) is kept, plus the parsed package list of the few files
that are package databases (see :mod:`deltaimg.diff.packages`). A layer two images share, or one
image holds twice, is read once.

Files are compared by content hash, link target, permission bits, owner and extended attributes;
timestamps are ignored (a rebuild changes every one of them and nothing else).
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable

from deltaimg.diff import packages
from deltaimg.errors import ImageReadError
from deltaimg.streams import HashingReader
from deltaimg.images.model import Image
from deltaimg.tar.split import BLOCK, EXTENSION_TYPES, TRAILER, TarSplitter, parse_pax, pax_number

Progress = Callable[[int], None]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
XATTR = "SCHILY.xattr."  # the PAX records holding extended attributes
KINDS = {"0": "file", "\x00": "file", "7": "file", "1": "hardlink", "2": "symlink", "3": "chardev",
         "4": "blockdev", "5": "dir", "6": "fifo"}
# Container config keys compared; Env and Labels entry by entry, the others as whole values.
CONFIG_MAPS = ("Env", "Labels")
CONFIG_VALUES = ("Entrypoint", "Cmd", "WorkingDir", "User", "ExposedPorts", "Volumes", "Healthcheck", "StopSignal")


@dataclass(frozen=True, slots=True)
class Node:
    """One path of an image's filesystem, without its content."""

    kind: str
    size: int = 0
    digest: str = ""  # sha256 of a regular file's content, when read
    mode: int = 0
    uid: int = 0
    gid: int = 0
    target: str = ""  # a link's target; "major,minor" of a device
    xattrs: tuple[tuple[str, str], ...] = ()  # extended attributes (file capabilities, SELinux labels)
    packages: tuple[packages.Package, ...] = ()  # when the file is a package database


@dataclass
class LayerScan:
    """A layer read once: what it deletes from the layers below, and what it puts on top."""

    size: int = 0
    digest: str = ""  # "sha256:..." of the whole tar: what the config's diff_id must say
    whiteouts: list[str] = field(default_factory=list)
    opaque_dirs: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # what it puts on top: paths[i] is nodes[i]
    nodes: list[Node] = field(default_factory=list)  # (two lists: a tuple per entry costs 64 bytes more)


class Filesystem:
    """The merged view of an image's layers: path (no leading slash) -> :class:`Node`."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self._children: dict[str, set[str]] = {}

    def apply(self, layer: LayerScan) -> None:
        """Put ``layer`` on top, the way overlayfs and ``docker load`` do."""
        for path in layer.whiteouts:
            self._remove(path)
        for directory in layer.opaque_dirs:
            for child in list(self._children.get(directory, ())):
                self._remove(child)
        for path, node in zip(layer.paths, layer.nodes):
            if node.kind == "hardlink":  # the same inode: the target's content and metadata
                node = self.nodes.get(node.target, node)
            replaced = self.nodes.get(path)
            if replaced is not None and replaced.kind == "dir" and node.kind != "dir":
                self._remove(path)
            self.nodes[path] = node
            self._children.setdefault(posixpath.dirname(path), set()).add(path)

    def _remove(self, path: str) -> None:
        self.nodes.pop(path, None)
        self._children.get(posixpath.dirname(path), set()).discard(path)
        stack = [path]
        while stack:
            for child in self._children.pop(stack.pop(), ()):
                self.nodes.pop(child, None)
                stack.append(child)

    def packages(self) -> tuple[set[str], list[packages.Package]]:
        """(ecosystems whose database is present, every package they list)."""
        databases: set[str] = set()
        found: list[packages.Package] = []
        for path, node in self.nodes.items():
            kind = packages.database_kind(path) if node.kind == "file" else None
            if kind is not None:
                databases.add(kind)
                found.extend(node.packages)
        return databases, found


def _clean(name: str) -> str:
    path = posixpath.normpath("/" + name).lstrip("/")
    return "" if path == "." else path


def _number(field_bytes: bytes) -> int:
    """A numeric header field (octal, or GNU base-256); 0 when it holds neither."""
    if field_bytes[:1] and field_bytes[0] & 0x80:
        return int.from_bytes(field_bytes[1:], "big")
    try:
        return int(field_bytes.replace(b"\0", b" ").strip() or b"0", 8)
    except ValueError:
        return 0


def _header(pre: bytes) -> tuple[bytes, dict[str, str]]:
    """The entry's own header block (the one after any PAX or GNU long-name headers) and its PAX records."""
    position = 0
    records: dict[str, str] = {}
    while position + BLOCK < len(pre) and pre[position + 156:position + 157] in EXTENSION_TYPES:
        size = _number(pre[position + 124:position + 136])
        if pre[position + 156:position + 157] == b"x":
            records.update(parse_pax(pre[position + BLOCK:position + BLOCK + size]))
        position += BLOCK + size + (-size) % BLOCK
    return pre[position:position + BLOCK], records


def scan_layer(stream: BinaryIO, hash_files: bool, progress: Progress | None = None,
               shared: dict[Node, Node] | None = None) -> LayerScan:
    """Read one layer tar, all of it (its sha256 is :attr:`LayerScan.digest`). Regular files are
    hashed when ``hash_files``; package databases are always parsed. Equal nodes are one object,
    kept in ``shared`` (a million empty files are one node, not a million)."""
    shared = {} if shared is None else shared
    counting = HashingReader(stream, progress)  # not seekable: every byte passes, to be checked against the diff_id
    splitter = TarSplitter(counting)  # type: ignore[arg-type]
    scan = LayerScan()
    for entry in splitter:
        path = _clean(entry.name)
        kind = KINDS.get(entry.typeflag)
        if entry.typeflag == TRAILER or kind is None or not path:
            continue
        parent, base = posixpath.split(path)
        if base == OPAQUE_MARKER:
            scan.opaque_dirs.append(parent)
            continue
        if base.startswith(WHITEOUT_PREFIX):
            scan.whiteouts.append(posixpath.join(parent, base[len(WHITEOUT_PREFIX):]))
            continue
        header, pax = _header(entry.pre)
        mode = _number(header[100:108])
        uid = pax_number(pax.get("uid"))
        uid = _number(header[108:116]) if uid is None else uid
        gid = pax_number(pax.get("gid"))
        gid = _number(header[116:124]) if gid is None else gid
        xattrs = tuple(sorted((k[len(XATTR):], v) for k, v in pax.items() if k.startswith(XATTR)))
        digest, found, target = "", (), ""
        if kind == "file":
            digest, found = _read_file(splitter, path, entry.size, hash_files)
        elif kind in ("chardev", "blockdev"):
            target = f"{_number(header[329:337])},{_number(header[337:345])}"
        elif kind == "symlink":
            target = entry.linkname
        elif kind == "hardlink":
            target = _clean(entry.linkname)
        size = entry.size if kind == "file" else 0
        node = Node(kind, size, digest, mode, uid, gid, target, xattrs, found)
        scan.paths.append(path)
        scan.nodes.append(shared.setdefault(node, node) if not found else node)
    counting.drain()  # the zero blocks after the trailer are in the diff_id too
    scan.size, scan.digest = counting.size, "sha256:" + counting.digest.hexdigest()
    return scan


def _read_file(splitter: TarSplitter, path: str, size: int, hash_files: bool) -> tuple[str, tuple[packages.Package, ...]]:
    """(sha256 when ``hash_files`` else "", the packages it lists when it is a package database)."""
    database = packages.database_kind(path) if size <= packages.MAX_DATABASE_BYTES else None
    if database is None and not hash_files:
        return "", ()
    digest = hashlib.sha256()
    held: list[bytes] = []
    for chunk in splitter.payload_chunks():
        digest.update(chunk)
        if database is not None:
            held.append(chunk)
    found = packages.parse_database(database, b"".join(held)) if database is not None else ()
    return ("sha256:" + digest.hexdigest() if hash_files else ""), found


class _Reader:
    """Reads layers for one or two images; a layer needed again is kept (as metadata) until its last use."""

    def __init__(self, images: Iterable[Image], hash_files: bool, progress: Progress | None) -> None:
        self._uses = Counter(diff_id for image in images for diff_id in image.diff_ids)
        self._kept: dict[str, LayerScan] = {}
        self._nodes: dict[Node, Node] = {}
        self._hash_files = hash_files
        self._progress = progress

    def filesystem(self, image: Image) -> tuple[Filesystem, list[int]]:
        """The image's merged filesystem and the size of each of its layers."""
        self._read(image, set(image.diff_ids) - self._kept.keys())
        merged = Filesystem()
        sizes = []
        for layer in image.layers:
            scan = self._kept[layer.diff_id]
            self._uses[layer.diff_id] -= 1
            if not self._uses[layer.diff_id]:
                del self._kept[layer.diff_id]
            merged.apply(scan)
            sizes.append(scan.size)
        return merged, sizes

    def _read(self, image: Image, diff_ids: set[str]) -> None:
        """Scan these layers (in one pass, for an engine's image)."""
        try:
            for diff_id, stream in image.layer_streams(diff_ids):
                scan = scan_layer(stream, self._hash_files, self._progress, self._nodes)
                if scan.digest != diff_id:  # else the diff would report on files the image does not hold
                    raise ImageReadError(f"{image.source}: layer {image.diff_ids.index(diff_id)} does not hash to its "
                                         f"diff_id {diff_id[:19]}; the image is damaged")
                self._kept[diff_id] = scan
        except (OSError, EOFError) as exc:
            unread = [p for p, d in enumerate(image.diff_ids) if d in diff_ids and d not in self._kept]
            raise ImageReadError(f"{image.source}: cannot read layer {unread[0] if unread else '?'} ({exc})") from None


# --------------------------------------------------------------------------- comparing


def _differences(base: Node, target: Node) -> list[str]:
    if base.kind != target.kind:
        return ["type"]
    found = []
    if (base.size, base.digest) != (target.size, target.digest):
        found.append("content")
    if base.target != target.target:
        found.append("target")
    if base.mode & 0o7777 != target.mode & 0o7777:
        found.append("mode")
    if (base.uid, base.gid) != (target.uid, target.gid):
        found.append("owner")
    if base.xattrs != target.xattrs:
        found.append("xattrs")
    return found


def file_changes(base: Filesystem, target: Filesystem) -> tuple[dict, dict]:
    """(files, directories): what was added, removed and modified, files largest first.

    Links and devices carry their ``target`` (``old_target``/``new_target`` when it changed). An
    added file with the same content as a removed one names it in ``moved_from``.
    """
    added, removed, modified = [], [], []
    dirs: dict[str, list] = {"added": [], "removed": [], "modified": []}
    for path in sorted(base.nodes.keys() | target.nodes.keys()):
        was, now = base.nodes.get(path), target.nodes.get(path)
        shown = "/" + path
        if was is None or now is None:
            node, side, files = (now, "added", added) if was is None else (was, "removed", removed)
            if node.kind == "dir":
                dirs[side].append(shown)
            else:
                record = {"path": shown, "kind": node.kind, "size": node.size}
                files.append(({**record, "target": node.target} if node.target else record, node.digest))
            continue
        changes = _differences(was, now)
        if not changes:
            continue
        if was.kind == now.kind == "dir":
            dirs["modified"].append({"path": shown, "changes": changes})
        else:
            record = {"path": shown, "kind": now.kind, "old_size": was.size, "new_size": now.size, "changes": changes}
            if "target" in changes:
                record.update(old_target=was.target, new_target=now.target)
            modified.append(record)
    _mark_moves(added, removed)
    files = {
        "added": sorted((record for record, _ in added), key=lambda r: (-r["size"], r["path"])),
        "removed": sorted((record for record, _ in removed), key=lambda r: (-r["size"], r["path"])),
        "modified": sorted(modified, key=lambda r: (-r["new_size"], r["path"])),
    }
    return files, dirs


def _mark_moves(added: list[tuple[dict, str]], removed: list[tuple[dict, str]]) -> None:
    sources: dict[str, list[str]] = {}
    for record, digest in removed:
        if record["kind"] == "file" and record["size"] > 0:
            sources.setdefault(digest, []).append(record["path"])
    for record, digest in added:
        if record["kind"] == "file" and sources.get(digest):
            record["moved_from"] = sources[digest].pop(0)


def _env(values: object) -> dict[str, str]:
    pairs = (item.partition("=") for item in values if isinstance(item, str)) if isinstance(values, list) else ()
    return {name: value for name, _, value in pairs}


def _whole(value: object) -> object:
    """A config value as compared and shown: sets of ports and volumes as sorted lists, empty as None."""
    if isinstance(value, dict) and all(v in ({}, None) for v in value.values()):
        value = sorted(value)
    return value if value not in (None, "", [], {}) else None


def config_changes(base: dict, target: dict) -> list[dict]:
    """Changes between two container configs (an image config's ``config`` object)."""
    found = []
    for key in CONFIG_MAPS:
        was = _env(base.get(key)) if key == "Env" else base.get(key) or {}
        now = _env(target.get(key)) if key == "Env" else target.get(key) or {}
        for name in sorted(was.keys() | now.keys()):
            if was.get(name) != now.get(name):
                found.append({"key": key, "name": name, "old": was.get(name), "new": now.get(name)})
    for key in CONFIG_VALUES:
        was, now = _whole(base.get(key)), _whole(target.get(key))
        if was != now:
            found.append({"key": key, "name": None, "old": was, "new": now})
    return found


def _package_report(base: Filesystem, target: Filesystem) -> dict:
    base_databases, base_packages = base.packages()
    target_databases, target_packages = target.packages()
    return {
        "package_databases": [kind for kind in packages.ECOSYSTEMS if kind in base_databases | target_databases],
        "packages": [change.as_dict() for change in packages.changes(base_packages, target_packages)],
    }


def _container_config(image: Image) -> dict:
    config = image.config.get("config")
    return config if isinstance(config, dict) else {}


def change_summary(base: Image, target: Image) -> dict:
    """Package and config changes only; reads just the package databases' payloads (for make's manifest)."""
    reader = _Reader([base, target], hash_files=False, progress=None)
    base_fs, _ = reader.filesystem(base)
    target_fs, _ = reader.filesystem(target)
    return {**_package_report(base_fs, target_fs), "config": config_changes(_container_config(base), _container_config(target))}


def _image_record(image: Image, sizes: list[int]) -> dict:
    return {"source": image.source, "image_id": image.config_digest, "tags": image.tags,
            "created": image.config.get("created"), "layers": len(sizes), "size": sum(sizes)}


def _layer_changes(base: Image, target: Image, base_sizes: list[int], target_sizes: list[int]) -> tuple[list[dict], list[dict]]:
    """Each target layer: reused (the base has it), changed (it replaces the base layer at its
    position, which the target does not reuse) or new; and the base layers dropped outright.
    (The JSON keeps its ``old``/``new`` names: the diff output does not change.)"""
    layers = []
    for position, (diff_id, size) in enumerate(zip(target.diff_ids, target_sizes)):
        if diff_id in base.diff_ids:
            status, base_index = "reused", base.diff_ids.index(diff_id)
        elif position < len(base.diff_ids) and base.diff_ids[position] not in target.diff_ids:
            status, base_index = "changed", position
        else:
            status, base_index = "new", None
        layers.append({"index": position, "diff_id": diff_id, "size": size, "status": status, "old_index": base_index})
    accounted = {layer["old_index"] for layer in layers}
    dropped = [{"index": position, "diff_id": diff_id, "size": size}
               for position, (diff_id, size) in enumerate(zip(base.diff_ids, base_sizes))
               if position not in accounted and diff_id not in target.diff_ids]
    return layers, dropped


def diff_images(base: Image, target: Image, progress: Progress | None = None) -> dict:
    """The whole report ``deltaimg diff`` prints; ``progress`` gets the number of layer bytes read."""
    reader = _Reader([base, target], hash_files=True, progress=progress)
    base_fs, base_sizes = reader.filesystem(base)
    target_fs, target_sizes = reader.filesystem(target)
    layers, dropped = _layer_changes(base, target, base_sizes, target_sizes)
    files, directories = file_changes(base_fs, target_fs)
    return {
        "old": _image_record(base, base_sizes),
        "new": _image_record(target, target_sizes),
        "layers": layers,
        "dropped_layers": dropped,
        "files": files,
        "directories": directories,
        "summary": {
            "added": len(files["added"]),
            "added_bytes": sum(r["size"] for r in files["added"]),
            "removed": len(files["removed"]),
            "removed_bytes": sum(r["size"] for r in files["removed"]),
            "modified": len(files["modified"]),
            "modified_bytes": sum(r["new_size"] - r["old_size"] for r in files["modified"]),
        },
        **_package_report(base_fs, target_fs),
        "config": config_changes(_container_config(base), _container_config(target)),
    }

