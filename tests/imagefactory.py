"""Build container image archives for tests, without a Docker engine.

Layers are tars written byte for byte the way Go's archive/tar writes them for Docker (USTAR
when it can, PAX otherwise, exactly two zero blocks at the end), or, as variants, the way
Python's tarfile writes GNU and PAX tars (padded to a 10 KiB record, like GNU tar).
Their content comes from real files on this machine: ELF binaries, the stdlib's Python
sources, real directory trees. Everything is deterministic on a given machine: fixed mtimes,
sorted walks, no randomness, so golden files can be made from the output.

The archive writers produce what ``docker save`` (Docker <= 24 and Docker >= 25) and
skopeo/podman (``oci:`` and ``oci-archive:``) produce, and return a ``WrittenImage`` per image.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import stat
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Literal, Mapping, Sequence

import zstandard

FIXED_MTIME = 1_700_000_000  # 2023-11-14T22:13:20Z: when the "v1" content was built
UPGRADE_MTIME = FIXED_MTIME + 30 * 86_400  # a month later: when "v2" was built
CREATED = "2023-11-14T22:13:20Z"
UPGRADE_CREATED = "2023-12-14T22:13:20Z"
EMPTY_LAYER_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
ELF_MAGIC = b"\x7fELF"
STDLIB = Path(os.path.dirname(os.__file__))

MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"

Kind = Literal["file", "dir", "symlink", "hardlink", "chardev", "blockdev", "fifo"]
TarStyle = Literal["go", "gnu", "python-pax"]
Compression = Literal["none", "gzip", "zstd"]

BLOCK = 512
_CHUNK = 1 << 20
_TYPEFLAGS: dict[str, bytes] = {
    "file": b"0",
    "hardlink": b"1",
    "symlink": b"2",
    "chardev": b"3",
    "blockdev": b"4",
    "dir": b"5",
    "fifo": b"6",
}
_PYTHON_FORMATS = {"gnu": tarfile.GNU_FORMAT, "python-pax": tarfile.PAX_FORMAT}
LAYER_MEDIA_TYPES: dict[str, str] = {
    "none": MEDIA_TYPE_LAYER,
    "gzip": MEDIA_TYPE_LAYER + "+gzip",
    "zstd": MEDIA_TYPE_LAYER + "+zstd",
}


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class Entry:
    """One tar member.

    ``name`` has no leading "./" and no trailing slash (directories get theirs when written).
    ``content`` is the bytes of a regular file, or the path of a real file that is streamed
    when the tar is written, so layers of tens of MB never sit in memory.
    """

    name: str
    kind: Kind = "file"
    content: bytes | Path = b""
    mode: int = 0o644
    mtime: int = FIXED_MTIME
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def tar_name(self) -> str:
        return self.name + "/" if self.kind == "dir" else self.name

    @property
    def size(self) -> int:
        if self.kind != "file":
            return 0
        if isinstance(self.content, bytes):
            return len(self.content)
        return self.content.stat().st_size

    def open(self) -> BinaryIO:
        if isinstance(self.content, bytes):
            return io.BytesIO(self.content)
        return open(self.content, "rb")

    def read(self) -> bytes:
        with self.open() as stream:
            return stream.read()


def file(
    name: str,
    content: bytes | Path = b"",
    *,
    mode: int = 0o644,
    mtime: int = FIXED_MTIME,
    uid: int = 0,
    gid: int = 0,
    xattrs: Mapping[str, bytes] | None = None,
) -> Entry:
    """A regular file; an empty one when ``content`` is left out."""
    return Entry(name, "file", content, mode, mtime, uid, gid, xattrs=dict(xattrs or {}))


def directory(name: str, *, mode: int = 0o755, mtime: int = FIXED_MTIME, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(name, "dir", mode=mode, mtime=mtime, uid=uid, gid=gid)


def symlink(name: str, target: str, *, mtime: int = FIXED_MTIME) -> Entry:
    return Entry(name, "symlink", mode=0o777, mtime=mtime, linkname=target)


def hardlink(name: str, target: str, *, mode: int = 0o644, mtime: int = FIXED_MTIME) -> Entry:
    """A hard link to ``target``, an earlier member of the same layer (Docker writes size 0)."""
    return Entry(name, "hardlink", mode=mode, mtime=mtime, linkname=target)


def char_device(name: str, major: int, minor: int, *, mode: int = 0o666) -> Entry:
    return Entry(name, "chardev", mode=mode, devmajor=major, devminor=minor)


def block_device(name: str, major: int, minor: int, *, mode: int = 0o660) -> Entry:
    return Entry(name, "blockdev", mode=mode, devmajor=major, devminor=minor)


def fifo(name: str, *, mode: int = 0o644) -> Entry:
    return Entry(name, "fifo", mode=mode)


def whiteout(path: str, *, mtime: int = FIXED_MTIME) -> Entry:
    """The ``.wh.<name>`` file that deletes ``path`` from lower layers.

    Docker's overlay2 differ turns the 0/0 character device into an empty regular file, mode 0600.
    """
    parent, base = posixpath.split(path)
    return file(posixpath.join(parent, ".wh." + base), mode=0o600, mtime=mtime)


def opaque_whiteout(dirname: str, *, mode: int = 0o755) -> Entry:
    """The ``.wh..wh..opq`` marker hiding everything lower layers have in ``dirname``.

    Docker makes it from the directory's opaque xattr with the directory's permissions and a
    zero time, which Go writes as mtime 0.
    """
    return file(posixpath.join(dirname, ".wh..wh..opq"), mode=mode, mtime=0)


def walk_key(entry: Entry) -> tuple[str, ...]:
    """Sort key for the order Go's filepath.Walk visits a tree: names sorted per directory, depth first."""
    return tuple(entry.name.split("/"))


def complete_tree(entries: Iterable[Entry], *, mtime: int = FIXED_MTIME) -> list[Entry]:
    """Add the missing parent directories and sort into walk order, as a real layer has them."""
    by_name: dict[str, Entry] = {}
    for entry in entries:
        if entry.name in by_name:
            raise ValueError(f"duplicate tar member {entry.name!r}")
        by_name[entry.name] = entry
    for name in list(by_name):
        parent = posixpath.dirname(name)
        while parent and parent not in by_name:
            by_name[parent] = directory(parent, mtime=mtime)
            parent = posixpath.dirname(parent)
    ordered = sorted(by_name.values(), key=walk_key)
    _check_hardlinks(ordered)
    return ordered


def _check_hardlinks(ordered: Sequence[Entry]) -> None:
    seen_files: set[str] = set()
    for entry in ordered:
        if entry.kind == "hardlink" and entry.linkname not in seen_files:
            raise ValueError(f"hardlink {entry.name!r} comes before its target {entry.linkname!r}")
        if entry.kind == "file":
            seen_files.add(entry.name)


# --------------------------------------------------------------------------- real content


def _bin_dirs() -> list[str]:
    return ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]


def _lib_dirs() -> list[str]:
    multiarch = sysconfig.get_config_var("MULTIARCH")
    dirs = [f"/usr/lib/{multiarch}"] if multiarch else []
    return dirs + ["/usr/lib64", "/usr/lib", "/lib64", "/lib"]


def _is_elf(path: Path, min_bytes: int, max_bytes: int) -> bool:
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or not min_bytes <= st.st_size <= max_bytes:
            return False
        with open(path, "rb") as stream:
            return stream.read(4) == ELF_MAGIC
    except OSError:
        return False


def find_elf_files(
    total_bytes: int,
    *,
    libraries: bool = False,
    dirs: Sequence[str | Path] | None = None,
    min_file_bytes: int = 16 << 10,
    max_file_bytes: int = 1 << 20,
) -> list[Path]:
    """Real ELF files on this machine, in sorted order, until they add up to ``total_bytes``.

    Searches the executable directories, the library directories when ``libraries``, or ``dirs``.
    Basenames are unique in the result, so the files can share one directory in a layer;
    ``total_bytes=0`` gives just the first file that fits the size bounds.
    """
    search = dirs if dirs is not None else (_lib_dirs() if libraries else _bin_dirs())
    found: list[Path] = []
    seen_dirs: set[str] = set()
    seen_names: set[str] = set()
    total = 0
    for folder in search:
        real = os.path.realpath(folder)
        if real in seen_dirs or not os.path.isdir(real):
            continue
        seen_dirs.add(real)
        for name in sorted(os.listdir(real)):
            path = Path(real, name)
            if name in seen_names or not _is_elf(path, min_file_bytes, max_file_bytes):
                continue
            found.append(path)
            seen_names.add(name)
            total += path.stat().st_size
            if total >= total_bytes:
                return found
    raise RuntimeError(f"only {total} bytes of ELF files found in {search}")


def elf_entries(prefix: str, paths: Iterable[Path], *, mode: int = 0o755) -> list[Entry]:
    """Copies of real binaries, all in directory ``prefix``."""
    return [file(f"{prefix}/{path.name}", path, mode=mode) for path in paths]


def stdlib_modules(prefix: str, total_bytes: int) -> list[Entry]:
    """The stdlib's top-level ``.py`` modules, in sorted order, until ``total_bytes``, under ``prefix``."""
    entries: list[Entry] = []
    total = 0
    for path in sorted(STDLIB.glob("*.py")):
        entries.append(file(f"{prefix}/{path.name}", path))
        total += path.stat().st_size
        if total >= total_bytes:
            break
    return entries


def tree_entries(
    root: Path,
    prefix: str,
    *,
    mtime: int = FIXED_MTIME,
    skip: frozenset[str] = frozenset({"__pycache__"}),
) -> list[Entry]:
    """Entries for a real directory tree (not its root) named ``prefix/<relative path>``, in walk order.

    Modes come from disk, owners become root, and a file seen again by inode becomes a hardlink
    to its first name, as Docker's archive writer does. Sockets and devices are skipped.
    """
    entries: list[Entry] = []
    first_names: dict[tuple[int, int], str] = {}

    def visit(folder: Path, rel: str) -> None:
        for name in sorted(os.listdir(folder)):
            if name in skip:
                continue
            path = folder / name
            member = f"{rel}/{name}" if rel else name
            st = path.lstat()
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                entries.append(directory(member, mode=perm, mtime=mtime))
                visit(path, member)
            elif stat.S_ISLNK(st.st_mode):
                entries.append(symlink(member, os.readlink(path), mtime=mtime))
            elif stat.S_ISREG(st.st_mode):
                inode = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and inode in first_names:
                    entries.append(hardlink(member, first_names[inode], mode=perm, mtime=mtime))
                else:
                    first_names[inode] = member
                    entries.append(file(member, path, mode=perm, mtime=mtime))

    visit(root, prefix)
    return entries


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def python_package(
    site: str, project: str, version: str, modules: Mapping[str, bytes], *, mtime: int = FIXED_MTIME
) -> list[Entry]:
    """A wheel as pip installs it in ``site``: the package's modules and ``<project>-<version>.dist-info``."""
    dist = f"{project}-{version}.dist-info"
    files = {f"{project}/{rel}": data for rel, data in modules.items()}
    files[f"{dist}/INSTALLER"] = b"pip\n"
    files[f"{dist}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\nSummary: {project} for deltaimg tests\n"
    ).encode()
    files[f"{dist}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: bdist_wheel (0.42.0)\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{dist}/top_level.txt"] = f"{project}\n".encode()
    record = "".join(f"{name},sha256={_record_hash(data)},{len(data)}\n" for name, data in sorted(files.items()))
    files[f"{dist}/RECORD"] = (record + f"{dist}/RECORD,,\n").encode()
    return [file(f"{site}/{name}", data, mtime=mtime) for name, data in sorted(files.items())]


def _dpkg_stanza(name: str, version: str, status: str) -> str:
    return (
        f"Package: {name}\nStatus: {status}\nPriority: optional\nSection: libs\n"
        f"Installed-Size: {100 + 7 * len(name)}\nMaintainer: Debian Maintainers <debian-devel@lists.debian.org>\n"
        f"Architecture: amd64\nMulti-Arch: same\nSource: {name}\nVersion: {version}\n"
        f"Depends: libc6 (>= 2.34)\nConffiles:\n /etc/{name}/{name}.conf 6b4bf8d4d4d6b1b4d0e0e1c1f1a1b1c1\n"
        f"Description: {name} for deltaimg tests\n Built the way dpkg writes its status file:\n .\n"
        f" a folded description with an empty line in it.\n"
    )


def dpkg_status(
    installed: Sequence[tuple[str, str]], *, config_files: Sequence[tuple[str, str]] = (), mtime: int = FIXED_MTIME
) -> Entry:
    """``var/lib/dpkg/status`` as dpkg writes it: one stanza per (name, version) in ``installed``,
    and one per package in ``config_files``, removed but with its conffiles left (not installed)."""
    stanzas = [_dpkg_stanza(name, version, "install ok installed") for name, version in installed]
    stanzas += [_dpkg_stanza(name, version, "deinstall ok config-files") for name, version in config_files]
    stanzas.sort()
    return file("var/lib/dpkg/status", "\n".join(stanzas).encode(), mtime=mtime)


def apk_installed(installed: Sequence[tuple[str, str]], *, mtime: int = FIXED_MTIME) -> Entry:
    """``lib/apk/db/installed`` as apk writes it: one stanza per (name, version), with its files."""
    stanzas = [
        f"C:Q1{_record_hash(name.encode())[:26]}=\nP:{name}\nV:{version}\nA:x86_64\nS:{4096 + len(name)}\n"
        f"I:{16384 + len(name)}\nT:{name} for deltaimg tests\nU:https://alpinelinux.org\nL:MIT\no:{name}\n"
        f"m:Alpine Maintainers <alpine-devel@lists.alpinelinux.org>\nt:1700000000\nD:so:libc.musl-x86_64.so.1\n"
        f"F:usr/bin\nR:{name}\na:0:0:755\nZ:Q1{_record_hash(version.encode())[:26]}=\n"
        for name, version in installed
    ]
    return file("lib/apk/db/installed", "\n".join(stanzas).encode() + b"\n", mtime=mtime)


# --------------------------------------------------------------------------- upgrades


@dataclass(frozen=True)
class UpgradePlan:
    """What a package upgrade changes in a layer; every ``*.dist-info`` directory gets a version bump.

    ``moves`` maps old paths to new ones, ``deletes`` lists removed paths (a directory takes its
    contents along), ``additions`` are new entries. The first ``elf_patches`` ELF files are patched
    and every ``python_edit_every``-th ``.py`` file is edited (0: none).
    """

    mtime: int = UPGRADE_MTIME
    moves: Mapping[str, str] = field(default_factory=dict)
    deletes: Sequence[str] = ()
    additions: Sequence[Entry] = ()
    elf_patches: int = 2
    python_edit_every: int = 3


@dataclass(frozen=True)
class Upgrade:
    """``full``: the layer rebuilt with the new content. ``diff``: an upper layer that, applied on the
    old layer, gives the new one (changed and new files, ``.wh.`` whiteouts for what went away)."""

    full: list[Entry]
    diff: list[Entry]


@dataclass(frozen=True)
class _Rename:
    src: str
    dst: str
    rewrite: tuple[bytes, bytes] | None  # (old, new) bytes replaced in the moved files


_DIST_INFO = re.compile(r"(?P<project>.+)-(?P<version>\d+(?:\.\d+)*)\.dist-info")
_VERSION_STRING = re.compile(rb"(?<![0-9.])[0-9]+\.[0-9]+\.[0-9]+(?![0-9.])")


def bump_version(version: str) -> str:
    """``1.26.3`` -> ``1.26.4``."""
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last) + 1}" if head else str(int(last) + 1)


def _noise(seed: str, size: int) -> bytes:
    blocks = (hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(-(-size // 32)))
    return b"".join(blocks)[:size]


def patch_elf(data: bytes, *, seed: str, insert_size: int = 384) -> bytes:
    """Change a binary the way a new upstream patch release does.

    The first ``x.y.z`` version string gets its last digit bumped, four 8-byte words spread
    over the file move by 0x40 (relocated pointers), and ``insert_size`` bytes of new code land
    in the middle, shifting everything after them. The ELF header is left intact.
    """
    out = bytearray(data)
    match = _VERSION_STRING.search(out)
    if match:
        pos = match.end() - 1
        out[pos] = ord("0") + (out[pos] - ord("0") + 1) % 10
    for k in range(1, 5):
        pos = (len(out) * k // 5) & ~7
        word = (int.from_bytes(out[pos : pos + 8], "little") + 0x40) % (1 << 64)
        out[pos : pos + 8] = word.to_bytes(8, "little")
    middle = len(out) // 2
    out[middle:middle] = _noise(seed, insert_size)
    return bytes(out)


def edit_python(source: bytes) -> bytes:
    """Edit a module the way a patch release does: one line changed, one added, one removed."""
    lines = source.splitlines(keepends=True)
    if len(lines) < 4:
        return source + b"# patched\n"
    n = len(lines)
    lines[n // 2] = lines[n // 2].rstrip(b"\r\n") + b"  # patched\n"
    del lines[3 * n // 4]
    lines.insert(n // 3, b"_PATCHED = True  # added by the upgrade\n")
    return b"".join(lines)


def rebuild(entries: Iterable[Entry], mtime: int = UPGRADE_MTIME) -> list[Entry]:
    """The same layer built again: identical content, every member with a new mtime."""
    return [dataclasses.replace(entry, mtime=mtime) for entry in entries]


def _is_under(name: str, path: str) -> bool:
    return name == path or name.startswith(path + "/")


def _head(entry: Entry) -> bytes:
    with entry.open() as stream:
        return stream.read(len(ELF_MAGIC))


def _renames(entries: Sequence[Entry], plan: UpgradePlan) -> list[_Rename]:
    renames = [_Rename(src, dst, None) for src, dst in plan.moves.items()]
    for entry in entries:
        match = _DIST_INFO.fullmatch(posixpath.basename(entry.name))
        if entry.kind == "dir" and match:
            old, new = match["version"], bump_version(match["version"])
            dst = posixpath.join(posixpath.dirname(entry.name), f"{match['project']}-{new}.dist-info")
            renames.append(_Rename(entry.name, dst, (old.encode(), new.encode())))
    return renames


def _moved(entries: Sequence[Entry], rename: _Rename, mtime: int) -> list[Entry]:
    moved = []
    for entry in entries:
        if not _is_under(entry.name, rename.src):
            continue
        content = entry.content
        if rename.rewrite and entry.kind == "file":
            content = entry.read().replace(*rename.rewrite)
        name = rename.dst + entry.name[len(rename.src) :]
        moved.append(dataclasses.replace(entry, name=name, content=content, mtime=mtime))
    return moved


def _patched(entries: Sequence[Entry], plan: UpgradePlan) -> list[Entry]:
    files = [entry for entry in entries if entry.kind == "file"]
    elves = [entry for entry in files if _head(entry) == ELF_MAGIC][: plan.elf_patches]
    sources = [entry for entry in files if entry.name.endswith(".py")]
    edited = sources[:: plan.python_edit_every] if plan.python_edit_every else []
    return [
        dataclasses.replace(e, content=patch_elf(e.read(), seed=e.name), mtime=plan.mtime) for e in elves
    ] + [dataclasses.replace(e, content=edit_python(e.read()), mtime=plan.mtime) for e in edited]


def _ancestors(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def upgrade(entries: Sequence[Entry], plan: UpgradePlan = UpgradePlan()) -> Upgrade:
    """Apply ``plan`` to a layer's entries; see ``Upgrade`` for what comes back.

    Unchanged files keep their mtime (dpkg and pip keep the packaged ones); changed, moved and
    new files, and the directories holding them, get ``plan.mtime``.
    """
    names = {entry.name for entry in entries}
    missing = [path for path in [*plan.moves, *plan.deletes] if path not in names]
    if missing:
        raise KeyError(f"not in the layer: {missing}")
    renames = _renames(entries, plan)
    removed = [rename.src for rename in renames] + list(plan.deletes)
    kept = [entry for entry in entries if not any(_is_under(entry.name, path) for path in removed)]
    changed = _patched(kept, plan) + [e for r in renames for e in _moved(entries, r, plan.mtime)]
    changed += plan.additions
    new = {entry.name: entry for entry in kept} | {entry.name: entry for entry in changed}
    touched = [entry.name for entry in changed] + removed
    for parent in {parent for name in touched for parent in _ancestors(name)}:
        if parent in new and new[parent].kind == "dir":
            new[parent] = dataclasses.replace(new[parent], mtime=plan.mtime)
    full = complete_tree(new.values(), mtime=plan.mtime)
    diff_members = {entry.name: new[entry.name] for entry in changed}
    diff_members |= {w.name: w for w in (whiteout(path, mtime=plan.mtime) for path in removed)}
    diff_members |= {p: new[p] for name in list(diff_members) for p in _ancestors(name) if p in new}
    return Upgrade(full=full, diff=complete_tree(diff_members.values(), mtime=plan.mtime))


# --------------------------------------------------------------------------- tar writing


def _octal(value: int, width: int) -> bytes:
    """Go's formatOctal: zero-padded octal digits and a NUL, filling ``width`` bytes."""
    digits = format(value, "o").encode()
    if value < 0 or len(digits) >= width:
        raise ValueError(f"{value} does not fit a {width}-byte tar field")
    return digits.rjust(width - 1, b"0") + b"\0"


def _text(value: bytes, width: int) -> bytes:
    """Go's formatString: copy, NUL-terminate if room; never end a truncated name with '/'."""
    out = bytearray(width)
    out[: min(len(value), width)] = value[:width]
    if len(value) > width and out[width - 1] == ord("/"):
        out[len(value[: width - 1].rstrip(b"/"))] = 0
    return bytes(out)


def _to_ascii(value: bytes) -> bytes:
    return bytes(b for b in value if 0 < b < 0x80)


def _header_block(
    *,
    name: bytes,
    mode: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    uid: int = 0,
    gid: int = 0,
    linkname: bytes = b"",
    devices: tuple[int, int] | None = None,
    prefix: bytes = b"",
) -> bytes:
    """One USTAR header block, field by field as Go writes it (magic "ustar\\0", version "00")."""
    block = bytearray(BLOCK)
    block[0:100] = _text(name, 100)
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(uid, 8)
    block[116:124] = _octal(gid, 8)
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(mtime, 12)
    block[156:157] = typeflag
    block[157:257] = _text(linkname, 100)
    block[257:265] = b"ustar\x0000"
    if devices is not None:
        block[329:337] = _octal(devices[0], 8)
        block[337:345] = _octal(devices[1], 8)
    block[345:500] = _text(prefix, 155)
    block[148:156] = b" " * 8
    block[148:156] = _octal(sum(block), 7) + b" "
    return bytes(block)


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """Go's splitUSTARPath: a long ASCII name split into a 155-byte prefix and a 100-byte name."""
    length = len(name)
    if length <= 100 or not name.isascii():
        return None
    if length > 156:
        length = 156
    elif name[length - 1] == ord("/"):
        length -= 1
    i = name.rfind(b"/", 0, length)
    if i <= 0 or len(name) - i - 1 > 100 or len(name) - i - 1 == 0 or i > 155:
        return None
    return name[:i], name[i + 1 :]


def _pax_record(key: bytes, value: bytes) -> bytes:
    size = len(key) + len(value) + 3
    size += len(str(size))
    record = b"%d %s=%s\n" % (size, key, value)
    if len(record) != size:
        record = b"%d %s=%s\n" % (len(record), key, value)
    return record


def _pad(size: int) -> bytes:
    return bytes(-size % BLOCK)


def _pax_header(real_name: str, records: Mapping[str, bytes]) -> bytes:
    """The 'x' member Go writes before a header that USTAR cannot hold, named dir/PaxHeaders.0/file."""
    data = b"".join(_pax_record(key.encode(), value) for key, value in sorted(records.items()))
    parent, base = posixpath.split(real_name)
    name = _to_ascii(posixpath.normpath(posixpath.join(parent, "PaxHeaders.0", base)).encode())
    header = _header_block(name=name[:100].rstrip(b"/"), mode=0, size=len(data), mtime=0, typeflag=b"x")
    return header + data + _pad(len(data))


def _go_headers(entry: Entry) -> bytes:
    """The header block(s) Go's tar.Writer emits for ``entry`` with Format = FormatPAX, as Docker sets it."""
    name, link = entry.tar_name.encode(), entry.linkname.encode()
    records: dict[str, bytes] = {}
    if len(name) > 100 or not name.isascii():
        records["path"] = name
    if len(link) > 100 or not link.isascii():
        records["linkpath"] = link
    records |= {f"SCHILY.xattr.{key}": value for key, value in entry.xattrs.items()}
    fields: dict[str, Any] = dict(
        mode=entry.mode & 0o7777,
        uid=entry.uid,
        gid=entry.gid,
        size=entry.size,
        mtime=entry.mtime,
        typeflag=_TYPEFLAGS[entry.kind],
        devices=(entry.devmajor, entry.devminor),
    )
    split = _split_ustar(name)
    if records.keys() <= {"path"} and ("path" not in records or split):
        prefix, short = split if split else (b"", name)
        return _header_block(name=short, prefix=prefix, linkname=link, **fields)
    return _pax_header(entry.tar_name, records) + _header_block(
        name=_to_ascii(name), linkname=_to_ascii(link), **fields
    )


def _copy_content(entry: Entry, out: BinaryIO) -> None:
    expected = entry.size
    copied = 0
    with entry.open() as src:
        while chunk := src.read(_CHUNK):
            out.write(chunk)
            copied += len(chunk)
    if copied != expected:
        raise RuntimeError(f"{entry.name}: read {copied} bytes, expected {expected}")
    out.write(_pad(copied))


def _write_python_tar(out: BinaryIO, entries: Iterable[Entry], style: TarStyle) -> None:
    fmt = _PYTHON_FORMATS[style]
    with tarfile.open(fileobj=out, mode="w", format=fmt, encoding="utf-8") as tar:
        for entry in entries:
            if entry.xattrs and fmt != tarfile.PAX_FORMAT:
                raise ValueError(f"{entry.name}: {style} tars cannot hold xattrs")
            info = tarfile.TarInfo(entry.tar_name)
            info.type = _TYPEFLAGS[entry.kind]
            info.mode, info.uid, info.gid, info.mtime = entry.mode & 0o7777, entry.uid, entry.gid, entry.mtime
            info.linkname, info.devmajor, info.devminor = entry.linkname, entry.devmajor, entry.devminor
            info.size = entry.size
            info.pax_headers = {
                f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
                for key, value in entry.xattrs.items()
            }
            if entry.kind == "file":
                with entry.open() as src:
                    tar.addfile(info, src)
            else:
                tar.addfile(info)


def write_tar(
    path: Path, entries: Iterable[Entry], *, style: TarStyle = "go", trailing_zero_blocks: int = 0
) -> None:
    """Stream ``entries``, in the given order, into a tar at ``path``.

    ``style``: "go" is Go's archive/tar as Docker, BuildKit and containers/image use it;
    "gnu" and "python-pax" are Python's tarfile formats (GNU ././@LongLink names, or PAX with
    ././@PaxHeader members and hdrcharset=BINARY for binary xattrs), both padded to 10 KiB.
    ``trailing_zero_blocks`` extra zero blocks follow the end of the archive.
    """
    with open(path, "wb") as out:
        if style == "go":
            for entry in entries:
                out.write(_go_headers(entry))
                if entry.kind == "file":
                    _copy_content(entry, out)
            out.write(bytes(2 * BLOCK))
        else:
            _write_python_tar(out, entries, style)
        out.write(bytes(trailing_zero_blocks * BLOCK))


def sha256_file(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class LayerFile:
    """An uncompressed layer tar on disk; ``diff_id`` is the sha256 of its bytes."""

    path: Path
    diff_id: str
    size: int


def write_layer(
    path: Path, entries: Iterable[Entry], *, style: TarStyle = "go", trailing_zero_blocks: int = 0
) -> LayerFile:
    """Write a layer tar (see ``write_tar``) and return it with its diff_id."""
    path = Path(path)
    write_tar(path, entries, style=style, trailing_zero_blocks=trailing_zero_blocks)
    return LayerFile(path, sha256_file(path), path.stat().st_size)


# --------------------------------------------------------------------------- image configs


@dataclass(frozen=True)
class ImageSpec:
    """An image to write: its layers in order, its tags ("name:tag"), and config fields.

    ``config`` overrides the defaults of ``image_config`` key by key (a given "config" replaces
    the default one whole); ``rootfs`` always comes from ``layers``.
    """

    layers: Sequence[LayerFile]
    tags: Sequence[str] = ()
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WrittenImage:
    """What a writer wrote for one image.

    ``path`` is the archive file or the layout directory. ``manifest_digest`` is that of the OCI
    manifest blob (None for legacy ``docker save`` archives, which have none).
    """

    path: Path
    config_digest: str
    config_bytes: bytes
    diff_ids: list[str]
    tags: list[str]
    platform: str
    manifest_digest: str | None = None


def go_json(value: Any) -> bytes:
    """Encode like Go's json.Marshal: compact, UTF-8, with <, >, & and U+2028/9 escaped; dicts keep their order."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text.encode()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(spec: ImageSpec) -> bytes:
    """The exact config bytes for ``spec``: amd64/linux, Env/Cmd/Labels, one history entry per
    layer plus an empty_layer one, rootfs from the layers; top-level keys sorted, as Docker has them."""
    config: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"org.opencontainers.image.title": "deltaimg-test"},
        },
    }
    config.update(spec.config)
    if "history" not in config:
        created = config["created"]
        config["history"] = [
            {"created": created, "created_by": f"COPY layer{i}/ / # buildkit", "comment": "buildkit.dockerfile.v0"}
            for i in range(len(spec.layers))
        ] + [{"created": created, "created_by": 'CMD ["/bin/sh"]', "empty_layer": True}]
    config["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in spec.layers]}
    return go_json({key: config[key] for key in sorted(config)})


def _platform(config: Mapping[str, Any]) -> dict[str, str]:
    platform = {"architecture": config["architecture"], "os": config["os"]}
    if "variant" in config:
        platform["variant"] = config["variant"]
    return platform


def _written(path: Path, spec: ImageSpec, config_bytes: bytes, manifest_digest: str | None = None) -> WrittenImage:
    config = json.loads(config_bytes)
    return WrittenImage(
        path=Path(path),
        config_digest=_sha256(config_bytes),
        config_bytes=config_bytes,
        diff_ids=list(config["rootfs"]["diff_ids"]),
        tags=list(spec.tags),
        platform="/".join(_platform(config)[key] for key in ("os", "architecture", "variant") if key in config),
        manifest_digest=manifest_digest,
    )


def _epoch(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp())


def _split_tag(ref: str) -> tuple[str, str]:
    """``name:tag`` -> (name, tag), "latest" when there is none (a registry port is no tag)."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return name, tag


def _qualified(name: str) -> str:
    """docker.io-normalised name, as ``reference.ParseNormalizedNamed`` prints it."""
    first, sep, _ = name.partition("/")
    if not sep:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


# --------------------------------------------------------------------------- docker save


_EMPTY_CONTAINER_CONFIG: dict[str, Any] = {
    "Hostname": "",
    "Domainname": "",
    "User": "",
    "AttachStdin": False,
    "AttachStdout": False,
    "AttachStderr": False,
    "Tty": False,
    "OpenStdin": False,
    "StdinOnce": False,
    "Env": None,
    "Cmd": None,
    "Image": "",
    "Volumes": None,
    "WorkingDir": "",
    "Entrypoint": None,
    "OnBuild": None,
    "Labels": None,
}
_V1_FIELDS = (
    "id", "parent", "comment", "created", "container", "container_config",
    "docker_version", "author", "config", "architecture", "variant", "os",
)  # fmt: skip


@dataclass(frozen=True)
class _V1Layer:
    id: str
    json: bytes
    diff_id: str


def _ordered_v1(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {key: fields[key] for key in _V1_FIELDS if key in fields}


def _v1_layers(config: Mapping[str, Any]) -> list[_V1Layer]:
    """The legacy v1 image IDs and ``json`` files Docker derives per layer (image/v1.CreateID)."""
    diff_ids = config["rootfs"]["diff_ids"]
    layers: list[_V1Layer] = []
    chain = parent = ""
    for i, diff_id in enumerate(diff_ids):
        chain = diff_id if i == 0 else _sha256(f"{chain} {diff_id}".encode())
        if i == len(diff_ids) - 1:
            fields = {key: config[key] for key in _V1_FIELDS if key in config}
            fields.setdefault("container_config", _EMPTY_CONTAINER_CONFIG)
        else:
            fields = {"created": "1970-01-01T00:00:00Z", "container_config": _EMPTY_CONTAINER_CONFIG}
        identity = dict(fields, layer_id=chain) | ({"parent": parent} if parent else {})
        v1_id = hashlib.sha256(go_json({key: identity[key] for key in sorted(identity)})).hexdigest()
        full = dict(fields, id=v1_id, os=config["os"])
        if parent:
            full["parent"] = parent.removeprefix("sha256:")
        layers.append(_V1Layer(v1_id, go_json(_ordered_v1(full)), diff_id))
        parent = "sha256:" + v1_id
    return layers


def _json_file(data: Any) -> bytes:
    """What Go's json.Encoder.Encode writes: compact JSON and a newline."""
    return go_json(data) + b"\n"


def _sorted_repositories(repos: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    return {name: dict(sorted(tags.items())) for name, tags in sorted(repos.items())}


def _legacy_members(images: Sequence[ImageSpec], path: Path) -> tuple[list[Entry], list[WrittenImage]]:
    members: dict[str, Entry] = {}
    first_tar: dict[str, str] = {}  # diff_id -> "<v1id>/layer.tar" holding its bytes
    manifest, written = [], []
    repos: dict[str, dict[str, str]] = {}
    for spec in images:
        config_bytes = image_config(spec)
        config = json.loads(config_bytes)
        created = _epoch(config["created"])
        config_name = _sha256(config_bytes).removeprefix("sha256:") + ".json"
        members[config_name] = file(config_name, config_bytes, mtime=created)
        sources = {layer.diff_id: layer.path for layer in spec.layers}
        v1_layers = _v1_layers(config)
        for v1 in v1_layers:
            if v1.id in members:
                continue
            tar_name = f"{v1.id}/layer.tar"
            first = first_tar.setdefault(v1.diff_id, tar_name)
            members[v1.id] = directory(v1.id, mtime=created)
            members[f"{v1.id}/VERSION"] = file(f"{v1.id}/VERSION", b"1.0", mtime=created)
            members[f"{v1.id}/json"] = file(f"{v1.id}/json", v1.json, mtime=created)
            members[tar_name] = (
                file(tar_name, sources[v1.diff_id], mtime=created)
                if first == tar_name
                else symlink(tar_name, f"../{first}", mtime=created)
            )
        for tag in spec.tags:
            name, version = _split_tag(tag)
            repos.setdefault(name, {})[version] = v1_layers[-1].id
        layer_names = [f"{v1.id}/layer.tar" for v1 in v1_layers]
        manifest.append({"Config": config_name, "RepoTags": list(spec.tags) or None, "Layers": layer_names})
        written.append(_written(path, spec, config_bytes))
    members["manifest.json"] = file("manifest.json", _json_file(manifest), mtime=0)
    if repos:
        members["repositories"] = file("repositories", _json_file(_sorted_repositories(repos)), mtime=0)
    return list(members.values()), written


def _descriptor(media_type: str, data_digest: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": data_digest, "size": size, **extra}


def _oci_manifest(config_bytes: bytes, layers: Sequence[dict[str, Any]]) -> bytes:
    return go_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": _descriptor(MEDIA_TYPE_CONFIG, _sha256(config_bytes), len(config_bytes)),
            "layers": list(layers),
        }
    )


def _docker25_members(images: Sequence[ImageSpec], path: Path) -> tuple[list[Entry], list[WrittenImage]]:
    members = {name: directory(name, mtime=0) for name in ("blobs", "blobs/sha256")}
    manifest, index, written = [], [], []
    repos: dict[str, dict[str, str]] = {}

    def blob(digest: str, content: bytes | Path, mtime: int) -> str:
        name = "blobs/sha256/" + digest.removeprefix("sha256:")
        members.setdefault(name, file(name, content, mtime=mtime))
        return name

    for spec in images:
        config_bytes = image_config(spec)
        config = json.loads(config_bytes)
        created = _epoch(config["created"])
        for v1 in _v1_layers(config):
            blob(_sha256(v1.json), v1.json, created)
        layer_names = [blob(layer.diff_id, layer.path, created) for layer in spec.layers]
        config_name = blob(_sha256(config_bytes), config_bytes, created)
        layer_descriptors = [_descriptor(MEDIA_TYPE_LAYER, layer.diff_id, layer.size) for layer in spec.layers]
        manifest_bytes = _oci_manifest(config_bytes, layer_descriptors)
        manifest_digest = _sha256(manifest_bytes)
        blob(manifest_digest, manifest_bytes, 0)
        untagged = _descriptor(MEDIA_TYPE_MANIFEST, manifest_digest, len(manifest_bytes))
        for tag in spec.tags:
            name, version = _split_tag(tag)
            repos.setdefault(name, {})[version] = spec.layers[-1].diff_id.removeprefix("sha256:")
            names = {ANNOTATION_IMAGE_NAME: f"{_qualified(name)}:{version}", ANNOTATION_REF_NAME: version}
            index.append(dict(untagged, annotations=names))
        if not spec.tags:
            index.append(untagged)
        manifest.append({"Config": config_name, "RepoTags": list(spec.tags) or None, "Layers": layer_names})
        written.append(_written(path, spec, config_bytes, manifest_digest))
    index_bytes = go_json({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": index})
    members["index.json"] = file("index.json", index_bytes)
    members["manifest.json"] = file("manifest.json", _json_file(manifest), mtime=0)
    members["oci-layout"] = file("oci-layout", b'{"imageLayoutVersion": "1.0.0"}', mtime=0)
    if repos:
        members["repositories"] = file("repositories", _json_file(_sorted_repositories(repos)), mtime=0)
    return list(members.values()), written


def write_docker_archive(
    path: Path, images: Sequence[ImageSpec], *, form: Literal["legacy", "oci"] = "legacy"
) -> list[WrittenImage]:
    """Write what ``docker save`` writes for ``images``.

    "legacy" (Docker <= 24): ``<config hex>.json``, ``<v1 id>/{VERSION,json,layer.tar}`` per
    layer, ``manifest.json`` and ``repositories``. A layer whose bytes were already saved under
    another v1 ID (the same layer twice, or shared between images at different depths) has a
    ``layer.tar`` symlink to ``../<first id>/layer.tar``, as Docker makes it.
    "oci" (Docker >= 25): an OCI layout with uncompressed layer blobs, the legacy v1 JSON files
    as unreferenced blobs, ``index.json`` annotated per tag, plus ``manifest.json`` and
    ``repositories`` pointing into ``blobs/sha256``.
    """
    path = Path(path)
    members, written = (_legacy_members if form == "legacy" else _docker25_members)(images, path)
    write_tar(path, complete_tree(members))
    return written


# --------------------------------------------------------------------------- OCI layouts


def _compress(src: Path, dst: Path, compression: Compression) -> None:
    with open(src, "rb") as source, open(dst, "wb") as out:
        if compression == "gzip":
            with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as packed:
                shutil.copyfileobj(source, packed, _CHUNK)
        elif compression == "zstd":
            zstandard.ZstdCompressor(level=3, write_checksum=True).copy_stream(source, out)
        else:
            shutil.copyfileobj(source, out, _CHUNK)


class _BlobDir:
    """``blobs/sha256`` of an OCI layout being written."""

    def __init__(self, layout: Path) -> None:
        self.dir = layout / "blobs" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.layers: dict[tuple[str, str], dict[str, Any]] = {}

    def put(self, media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
        digest = _sha256(data)
        (self.dir / digest.removeprefix("sha256:")).write_bytes(data)
        return _descriptor(media_type, digest, len(data), **extra)

    def put_layer(self, layer: LayerFile, compression: Compression) -> dict[str, Any]:
        key = (layer.diff_id, compression)
        if key not in self.layers:
            tmp = self.dir / f".tmp-{layer.diff_id.removeprefix('sha256:')}"
            _compress(layer.path, tmp, compression)
            digest = sha256_file(tmp)
            size = tmp.stat().st_size
            tmp.replace(self.dir / digest.removeprefix("sha256:"))
            self.layers[key] = _descriptor(LAYER_MEDIA_TYPES[compression], digest, size)
        return self.layers[key]


def write_oci_dir(
    dest: Path,
    images: Sequence[ImageSpec],
    *,
    compression: Compression = "none",
    nested_index_ref: str | None = None,
) -> list[WrittenImage]:
    """Write an ``oci:`` layout directory as skopeo/podman do.

    Each tag of an image becomes an index entry annotated with ``org.opencontainers.image.ref.name``
    (an untagged image gets an entry without annotations). With ``nested_index_ref``, index.json
    instead holds one entry, named so, for a nested image index listing every image with its
    platform (give the images distinct architectures), as ``skopeo copy --all`` writes it.
    """
    dest = Path(dest)
    blobs = _BlobDir(dest)
    entries: list[dict[str, Any]] = []
    platform_entries: list[dict[str, Any]] = []
    written = []
    for spec in images:
        config_bytes = image_config(spec)
        blobs.put(MEDIA_TYPE_CONFIG, config_bytes)
        layers = [blobs.put_layer(layer, compression) for layer in spec.layers]
        manifest = blobs.put(MEDIA_TYPE_MANIFEST, _oci_manifest(config_bytes, layers))
        entries += [dict(manifest, annotations={ANNOTATION_REF_NAME: tag}) for tag in spec.tags] or [manifest]
        platform_entries.append(dict(manifest, platform=_platform(json.loads(config_bytes))))
        written.append(_written(dest, spec, config_bytes, manifest["digest"]))
    if nested_index_ref is not None:
        nested = go_json({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": platform_entries})
        entries = [blobs.put(MEDIA_TYPE_INDEX, nested, annotations={ANNOTATION_REF_NAME: nested_index_ref})]
    (dest / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": entries}
    (dest / "index.json").write_bytes(go_json(index))
    return written


def _normalised_modes(entries: Iterable[Entry]) -> list[Entry]:
    return [dataclasses.replace(e, mode=0o755 if e.kind == "dir" else 0o644) for e in entries]


def write_oci_archive(
    path: Path,
    images: Sequence[ImageSpec],
    *,
    compression: Compression = "none",
    nested_index_ref: str | None = None,
) -> list[WrittenImage]:
    """Write an ``oci-archive:``: the ``write_oci_dir`` layout in a tar, as containers/image tars it."""
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        written = write_oci_dir(Path(tmp), images, compression=compression, nested_index_ref=nested_index_ref)
        write_tar(path, _normalised_modes(tree_entries(Path(tmp), "")))
    return [dataclasses.replace(image, path=path) for image in written]


# --------------------------------------------------------------------------- example data


@dataclass(frozen=True)
class ExamplePair:
    """A realistic v1 -> v2 update.

    v1: os, python, app. v2: os (the same layer file: identical), python rebuilt (same content,
    new mtimes), app upgraded (``Upgrade.full``), and a patch layer holding the python layer's
    upgrade as an upper layer (``Upgrade.diff``: whiteouts, renamed dist-info, patched ELF).
    ``layers`` names them: os, python-v1, app-v1, python-v2, app-v2, patch.
    """

    v1: ImageSpec
    v2: ImageSpec
    layers: dict[str, LayerFile]

    @property
    def shared(self) -> LayerFile:
        return self.layers["os"]


def _python_prefix() -> str:
    return f"usr/lib/{STDLIB.name}"


def _os_entries() -> list[Entry]:
    os_release = b'PRETTY_NAME="deltaimg test OS 1"\nNAME="deltaimg"\nID=deltaimg\nVERSION_ID="1"\n'
    multiarch = sysconfig.get_config_var("MULTIARCH")
    lib_dir = f"usr/lib/{multiarch}" if multiarch else "usr/lib"
    entries = elf_entries("usr/bin", find_elf_files(1536 << 10, max_file_bytes=512 << 10))
    entries += elf_entries(lib_dir, find_elf_files(512 << 10, libraries=True), mode=0o644)
    entries += [symlink("bin", "usr/bin"), file("etc/os-release", os_release), file("etc/hostname", b"deltaimg\n")]
    return complete_tree(entries)


def _python_entries() -> list[Entry]:
    prefix = _python_prefix()
    site = f"{prefix}/site-packages"
    numpy_modules = {
        "__init__.py": b'__version__ = "1.26.3"\n' + (STDLIB / "fractions.py").read_bytes(),
        "linalg.py": (STDLIB / "statistics.py").read_bytes(),
    }
    entries = stdlib_modules(prefix, 1 << 20)
    entries += tree_entries(STDLIB / "email", f"{prefix}/email")
    entries += elf_entries(f"{prefix}/lib-dynload", find_elf_files(512 << 10, dirs=[STDLIB / "lib-dynload"]))
    entries += python_package(site, "numpy", "1.26.3", numpy_modules)
    return complete_tree(entries)


def _python_plan() -> UpgradePlan:
    prefix = _python_prefix()
    return UpgradePlan(
        deletes=[f"{prefix}/email/mime/audio.py"],
        additions=[file(f"{prefix}/site-packages/numpy/_distributor_init.py", b"HOOK = None\n", mtime=UPGRADE_MTIME)],
        elf_patches=1,
        python_edit_every=10,
    )


def _app_entries() -> list[Entry]:
    defaults = go_json({"listen": ":8080", "workers": 4, "log_level": "info"}) + b"\n"
    requests_modules = {
        "__init__.py": b'__version__ = "2.31.0"\n',
        "client.py": (STDLIB / "http" / "client.py").read_bytes(),
    }
    server = find_elf_files(0, min_file_bytes=200 << 10)[0]
    entries = [file("app/bin/server", server, mode=0o755)]
    entries += tree_entries(STDLIB / "json", "app/service/json")
    entries += [
        file("app/service/legacy.py", (STDLIB / "textwrap.py").read_bytes()),
        file("app/service/main.py", (STDLIB / "sched.py").read_bytes()),
        file("app/service/defaults.json", defaults),
        file("app/requirements.txt", b"requests==2.31.0\n"),
    ]
    entries += python_package("app/vendor", "requests", "2.31.0", requests_modules)
    return complete_tree(entries)


def _app_plan() -> UpgradePlan:
    return UpgradePlan(
        moves={"app/service/defaults.json": "app/config/defaults.json"},
        deletes=["app/service/legacy.py"],
        additions=[
            file("app/service/feature_flags.py", b"FLAGS = {'new_ui': True}\n", mtime=UPGRADE_MTIME),
            file("app/static/app.css", b"body { margin: 0 }\n", mtime=UPGRADE_MTIME),
        ],
        elf_patches=1,
        python_edit_every=3,
    )


def _example_config(version: str, created: str) -> dict[str, Any]:
    return {
        "created": created,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", f"APP_VERSION={version}"],
            "Cmd": ["python3", "-m", "service.main"],
            "WorkingDir": "/app",
            "Labels": {"org.opencontainers.image.version": version},
        },
    }


def build_example_pair(workdir: Path) -> ExamplePair:
    """Write the layers of a realistic v1/v2 pair (about 7 MB of real content) into ``workdir``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os_entries, python_entries, app_entries = _os_entries(), _python_entries(), _app_entries()
    layers = {
        "os": write_layer(workdir / "os.tar", os_entries),
        "python-v1": write_layer(workdir / "python-v1.tar", python_entries),
        "app-v1": write_layer(workdir / "app-v1.tar", app_entries),
        "python-v2": write_layer(workdir / "python-v2.tar", rebuild(python_entries)),
        "app-v2": write_layer(workdir / "app-v2.tar", upgrade(app_entries, _app_plan()).full),
        "patch": write_layer(workdir / "patch.tar", upgrade(python_entries, _python_plan()).diff),
    }
    v1 = ImageSpec(
        layers=[layers["os"], layers["python-v1"], layers["app-v1"]],
        tags=["deltaimg/example:1.0"],
        config=_example_config("1.0", CREATED),
    )
    v2 = ImageSpec(
        layers=[layers["os"], layers["python-v2"], layers["app-v2"], layers["patch"]],
        tags=["deltaimg/example:2.0"],
        config=_example_config("2.0", UPGRADE_CREATED),
    )
    return ExamplePair(v1, v2, layers)


# Capability sets cap_setuid (bit 7) and cap_net_bind_service (bit 10), effective: a
# vfs_cap_data v2 with bytes >= 0x80 and NULs, so it is not valid UTF-8.
SECURITY_CAPABILITY = bytes.fromhex("0100000280040000000000000000000000000000")
LONG_SPLIT_NAME = "usr/share/doc/" + "d" * 80 + "/" + "f" * 90  # > 100: USTAR prefix + name
LONG_PAX_NAME = "opt/" + "/".join(["deep" * 12] * 5) + "/" + "n" * 60  # > 255: PAX path
LONG_COMPONENT_NAME = "var/" + "x" * 120  # one component > 100: PAX path
UNICODE_NAME = "usr/share/i18n/Grüße-日本語.txt"


def edge_case_entries() -> list[Entry]:
    """One of every kind of member a lower layer can hold; see the module constants for the names."""
    binary = find_elf_files(0, min_file_bytes=16 << 10)[0]
    return complete_tree(
        [
            directory("tmp", mode=0o1777),
            file("etc/empty.conf"),
            file("etc/motd", b"welcome\n"),
            file("etc/owned-by-user", b"uid 1000\n", uid=1000, gid=1000),
            symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
            symlink("usr/bin/long-target", "../" + LONG_PAX_NAME),
            file("usr/bin/ping", binary, mode=0o755, xattrs={"security.capability": SECURITY_CAPABILITY}),
            file("usr/bin/su", binary, mode=0o4755),
            file("usr/bin/wall", b"#!/bin/sh\n", mode=0o2755),
            hardlink("usr/bin/z-hardlink-to-motd", "etc/motd"),
            file(LONG_SPLIT_NAME, b"split\n"),
            file(LONG_PAX_NAME, b"pax path\n"),
            hardlink("usr/bin/z-hardlink-long", LONG_PAX_NAME),
            file(LONG_COMPONENT_NAME, b"long component\n"),
            file(UNICODE_NAME, "grüße\n".encode()),
            char_device("dev/null", 1, 3),
            block_device("dev/sda", 8, 0),
            fifo("run/initctl", mode=0o600),
        ]
    )


def edge_case_upper_entries() -> list[Entry]:
    """An upper layer: whiteouts of a file and of a directory, an opaque directory refilled."""
    return complete_tree(
        [
            whiteout("etc/motd"),
            whiteout("run"),
            opaque_whiteout("usr/share/i18n"),
            file("usr/share/i18n/replacement.txt", b"only me\n"),
        ]
    )


def build_edge_image(workdir: Path) -> ImageSpec:
    """An image whose layers cover the edge cases, tagged ``deltaimg/edge:1``.

    Layers: edge kinds (go), upper with whiteouts (go), empty, edge kinds as a GNU tar (no
    xattrs), edge kinds as a Python PAX tar, a small layer with 4 extra trailing zero blocks,
    and the empty layer again (the same layer twice in one image).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    edge = edge_case_entries()
    empty = write_layer(workdir / "empty.tar", [])
    layers = [
        write_layer(workdir / "edge.tar", edge),
        write_layer(workdir / "upper.tar", edge_case_upper_entries()),
        empty,
        write_layer(workdir / "edge-gnu.tar", [e for e in edge if not e.xattrs], style="gnu"),
        write_layer(workdir / "edge-python-pax.tar", edge, style="python-pax"),
        write_layer(workdir / "padded.tar", [file("padded.txt", b"padded\n")], trailing_zero_blocks=4),
        empty,
    ]
    return ImageSpec(layers=layers, tags=["deltaimg/edge:1"])


# --------------------------------------------------------------------------- package upgrade pair

SITE_PACKAGES = "usr/lib/python3/dist-packages"
RUN_SH = b"#!/bin/sh\nexec python3 -m app \"$@\"\n"
DEFAULTS_JSON = go_json({"listen": ":8080", "workers": 4}) + b"\n"


@dataclass(frozen=True)
class PackageUpgradePair:
    """An OS and application update as an operator carries it to a site.

    v1: os, app-v1. v2: os (the same layer), app-v2 (app-v1 with ``app/main.py`` edited) and
    upgrade, an upper layer that upgrades packages and changes files:

    * dpkg: openssl 3.0.20-1 -> 3.0.22-1, libc6 2.36-9+deb12u7 -> 2.36-9+deb12u4 (a downgrade),
      curl removed, libzstd1 added; exim4 stays removed with its conffiles left (never installed);
    * apk: busybox 1.36.1-r15 -> 1.36.1-r16, musl unchanged;
    * Python: requests 2.31.0 -> 2.32.0 (the old dist-info whited out, the new one added);
    * files: ``app/legacy.py`` and the directory ``app/docs`` whited out, ``app/cache`` made opaque
      and refilled with ``fresh.bin``, ``app/settings/defaults.json`` moved to ``app/config/``,
      ``app/run.sh`` made executable, the ``etc/alternatives/editor`` symlink retargeted.

    The configs differ in Env, Entrypoint, Cmd, WorkingDir, User, ExposedPorts, Volumes, Labels and
    Healthcheck. ``entries`` holds each layer's entries by name: os, app-v1, app-v2, upgrade.
    """

    v1: ImageSpec
    v2: ImageSpec
    entries: dict[str, list[Entry]]


def _requests_modules(version: str) -> dict[str, bytes]:
    return {"__init__.py": f'__version__ = "{version}"\n'.encode(), "client.py": (STDLIB / "http" / "client.py").read_bytes()}


def _upgrade_pair_os() -> list[Entry]:
    os_release = b'PRETTY_NAME="deltaimg test OS 12"\nNAME="deltaimg"\nID=deltaimg\nVERSION_ID="12"\n'
    return complete_tree(
        [
            *elf_entries("usr/bin", find_elf_files(0, min_file_bytes=64 << 10)),
            symlink("bin", "usr/bin"),
            symlink("etc/alternatives/editor", "/usr/bin/vi"),
            file("etc/os-release", os_release),
            dpkg_status([("curl", "7.88.1-10+deb12u5"), ("libc6", "2.36-9+deb12u7"), ("openssl", "3.0.20-1")],
                        config_files=[("exim4", "4.96-15+deb12u2")]),
            apk_installed([("busybox", "1.36.1-r15"), ("musl", "1.2.4-r2")]),
        ]
    )


def _upgrade_pair_app(main: bytes) -> list[Entry]:
    return complete_tree(
        [
            file("app/main.py", main),
            file("app/legacy.py", (STDLIB / "textwrap.py").read_bytes()),
            file("app/settings/defaults.json", DEFAULTS_JSON),
            file("app/run.sh", RUN_SH),
            file("app/cache/index.bin", (STDLIB / "colorsys.py").read_bytes()),
            file("app/cache/objects.bin", (STDLIB / "bisect.py").read_bytes()),
            file("app/docs/README", b"See guide.txt.\n"),
            file("app/docs/guide.txt", (STDLIB / "this.py").read_bytes()),
            *python_package(SITE_PACKAGES, "requests", "2.31.0", _requests_modules("2.31.0")),
        ]
    )


def _upgrade_pair_upper() -> list[Entry]:
    at = UPGRADE_MTIME
    return complete_tree(
        [
            dpkg_status([("libc6", "2.36-9+deb12u4"), ("libzstd1", "1.5.4+dfsg2-5"), ("openssl", "3.0.22-1")],
                        config_files=[("exim4", "4.96-15+deb12u2")], mtime=at),
            apk_installed([("busybox", "1.36.1-r16"), ("musl", "1.2.4-r2")], mtime=at),
            whiteout(f"{SITE_PACKAGES}/requests-2.31.0.dist-info", mtime=at),
            *python_package(SITE_PACKAGES, "requests", "2.32.0", _requests_modules("2.32.0"), mtime=at),
            whiteout("app/legacy.py", mtime=at),
            whiteout("app/docs", mtime=at),
            opaque_whiteout("app/cache"),
            file("app/cache/fresh.bin", b"rebuilt at start-up\n", mtime=at),
            whiteout("app/settings/defaults.json", mtime=at),
            file("app/config/defaults.json", DEFAULTS_JSON, mtime=at),
            file("app/run.sh", RUN_SH, mode=0o755, mtime=at),
            symlink("etc/alternatives/editor", "/usr/bin/nano", mtime=at),
        ],
        mtime=at,
    )


def _upgrade_pair_config(version: str) -> dict[str, Any]:
    if version == "1.0":
        config: dict[str, Any] = {
            "Env": ["PATH=/usr/bin:/bin", "APP_VERSION=1.0", "DEBUG=1"],
            "Cmd": ["python3", "app/main.py"],
            "WorkingDir": "/app",
            "User": "app",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {"maintainer": "ops@example.com", "org.opencontainers.image.version": "1.0"},
        }
    else:
        config = {
            "Env": ["PATH=/usr/bin:/bin", "APP_VERSION=1.1", "LOG_LEVEL=info"],
            "Entrypoint": ["/usr/bin/tini", "--"],
            "Cmd": ["python3", "-m", "app"],
            "WorkingDir": "/srv/app",
            "User": "1000:1000",
            "ExposedPorts": {"8080/tcp": {}, "8443/tcp": {}},
            "Volumes": {"/data": {}},
            "Labels": {"maintainer": "ops@example.com", "org.opencontainers.image.version": "1.1"},
            "Healthcheck": {"Test": ["CMD", "/usr/bin/curl", "-f", "http://localhost:8080/health"], "Interval": 30000000000},
        }
    return {"created": CREATED if version == "1.0" else UPGRADE_CREATED, "config": config}


def build_package_upgrade_pair(workdir: Path) -> PackageUpgradePair:
    """Write the layers of the :class:`PackageUpgradePair` (about 200 KB of real content) into ``workdir``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    main = (STDLIB / "sched.py").read_bytes()
    entries = {
        "os": _upgrade_pair_os(),
        "app-v1": _upgrade_pair_app(main),
        "app-v2": _upgrade_pair_app(edit_python(main)),
        "upgrade": _upgrade_pair_upper(),
    }
    layers = {name: write_layer(workdir / f"{name}.tar", members) for name, members in entries.items()}
    v1 = ImageSpec([layers["os"], layers["app-v1"]], ["deltaimg/shop:1.0"], _upgrade_pair_config("1.0"))
    v2 = ImageSpec([layers["os"], layers["app-v2"], layers["upgrade"]], ["deltaimg/shop:1.1"], _upgrade_pair_config("1.1"))
    return PackageUpgradePair(v1, v2, entries)
