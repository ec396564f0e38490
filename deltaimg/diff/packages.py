"""Package databases read from image files: what is installed, and what changed between two images.

Three databases are read, each from the file(s) its package manager keeps in the image:

* ``deb``: dpkg's ``var/lib/dpkg/status`` (only packages whose status is *installed*), and the
  one-stanza-per-package files of ``var/lib/dpkg/status.d/`` that distroless images carry;
* ``apk``: Alpine's ``lib/apk/db/installed``;
* ``python``: every ``*.dist-info/METADATA`` (its ``Name`` and ``Version`` headers).

Versions are ordered the way each ecosystem orders them (dpkg's algorithm, apk's suffix rules,
PEP 440), so a change is classed as an upgrade or a downgrade correctly, e.g. ``1.0~rc1`` before
``1.0`` for dpkg and ``1.0rc1`` before ``1.0`` for Python.
"""

from __future__ import annotations

import collections
import functools
import posixpath
import re
from dataclasses import dataclass
from typing import Iterable

ECOSYSTEMS = ("deb", "apk", "python")  # report order
MAX_DATABASE_BYTES = 64 << 20  # a package database larger than this is not read


@dataclass(frozen=True)
class Package:
    ecosystem: str
    name: str
    version: str


@dataclass(frozen=True)
class PackageChange:
    """One package that differs. ``old``/``new`` are None when it was added/removed; a name installed
    several times (Python distributions in several site directories) lists its versions, comma-separated."""

    ecosystem: str
    name: str
    old: str | None
    new: str | None
    change: str  # added, removed, upgraded, downgraded, changed (same version order, other text)

    def as_dict(self) -> dict:
        return {"ecosystem": self.ecosystem, "name": self.name, "old": self.old, "new": self.new, "change": self.change}


def database_kind(path: str) -> str | None:
    """The ecosystem whose database the image file ``path`` (no leading slash) is, or None."""
    if path == "var/lib/dpkg/status":
        return "deb"
    parent, base = posixpath.split(path)
    if parent == "var/lib/dpkg/status.d" and not base.endswith(".md5sums"):
        return "deb"
    if path == "lib/apk/db/installed":
        return "apk"
    if base == "METADATA" and parent.endswith(".dist-info"):
        return "python"
    return None


def parse_database(kind: str, data: bytes) -> tuple[Package, ...]:
    """The packages a database file lists."""
    text = data.decode("utf-8", "replace")
    if kind == "deb":
        return _parse_dpkg(text)
    if kind == "apk":
        return _parse_apk(text)
    return _parse_dist_metadata(text)


def _stanzas(text: str) -> Iterable[list[str]]:
    """Blank-line separated paragraphs, as lists of lines."""
    for paragraph in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        lines = [line for line in paragraph.split("\n") if line]
        if lines:
            yield lines


def _fields(lines: list[str]) -> dict[str, str]:
    """RFC 822 style ``Field: value`` lines; continuation lines (leading space) are skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if line[0] in " \t" or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _parse_dpkg(text: str) -> tuple[Package, ...]:
    found: list[tuple[str, str, str]] = []
    for lines in _stanzas(text):
        fields = _fields(lines)
        status = fields.get("status", "install ok installed").split()
        if "package" in fields and "version" in fields and status[-1:] == ["installed"]:
            found.append((fields["package"], fields.get("architecture", ""), fields["version"]))
    installed = collections.Counter(name for name, _, _ in found)
    # A Multi-Arch: same package installed for two architectures is two packages: name:arch.
    return tuple(
        Package("deb", f"{name}:{arch}" if installed[name] > 1 else name, version) for name, arch, version in found
    )


def _parse_apk(text: str) -> tuple[Package, ...]:
    packages = []
    for lines in _stanzas(text):
        fields = {line[:2]: line[2:] for line in lines if len(line) > 2 and line[1] == ":"}
        if "P:" in fields and "V:" in fields:
            packages.append(Package("apk", fields["P:"], fields["V:"]))
    return tuple(packages)


def _parse_dist_metadata(text: str) -> tuple[Package, ...]:
    headers = next(iter(_stanzas(text)), [])
    fields = _fields(headers)
    if fields.get("name") and fields.get("version"):
        return (Package("python", fields["name"], fields["version"]),)
    return ()


def _key(package: Package) -> tuple[str, str]:
    if package.ecosystem == "python":  # PEP 503: Foo_Bar, foo-bar and foo.bar are one project
        return package.ecosystem, re.sub(r"[-_.]+", "-", package.name).lower()
    return package.ecosystem, package.name


def changes(old: Iterable[Package], new: Iterable[Package]) -> list[PackageChange]:
    """What changed from the packages ``old`` to ``new``, by ecosystem then name."""
    before, after = _index(old), _index(new)
    result = []
    for key in before.keys() | after.keys():
        was, now = before.get(key), after.get(key)
        if was is not None and now is not None and was[1] == now[1]:
            continue
        name = now[0] if now else before[key][0]
        old_text = ", ".join(was[1]) if was else None
        new_text = ", ".join(now[1]) if now else None
        result.append(PackageChange(key[0], name, old_text, new_text, _classify(key[0], was, now)))
    return sorted(result, key=lambda c: (ECOSYSTEMS.index(c.ecosystem), c.name.lower(), c.name))


def _index(packages: Iterable[Package]) -> dict[tuple[str, str], tuple[str, tuple[str, ...]]]:
    """key -> (display name, versions in ascending order)."""
    names: dict[tuple[str, str], str] = {}
    versions: dict[tuple[str, str], set[str]] = {}
    for package in packages:
        key = _key(package)
        names.setdefault(key, package.name)
        versions.setdefault(key, set()).add(package.version)
    return {
        key: (names[key], tuple(sorted(found, key=functools.cmp_to_key(_comparer(key[0])))))
        for key, found in versions.items()
    }


def _classify(ecosystem: str, was: tuple[str, tuple[str, ...]] | None, now: tuple[str, tuple[str, ...]] | None) -> str:
    if was is None:
        return "added"
    if now is None:
        return "removed"
    order = _comparer(ecosystem)(was[1][-1], now[1][-1])
    return "upgraded" if order < 0 else "downgraded" if order > 0 else "changed"


def compare_versions(ecosystem: str, a: str, b: str) -> int:
    """Negative when ``a`` is older than ``b``, zero when they rank the same, positive when newer."""
    return _comparer(ecosystem)(a, b)


def _comparer(ecosystem: str):
    return {"deb": compare_dpkg, "apk": compare_apk, "python": compare_pep440}[ecosystem]


def _number(digits: str) -> tuple[int, str]:
    """A run of ASCII digits as a key that orders as its number does, however long: versions come
    from the image, and int() refuses more than 4,300 digits."""
    significant = digits.lstrip("0")
    return len(significant), significant


ZERO = _number("")


def _is_digit(char: str) -> bool:
    """dpkg's isdigit() in the C locale; str.isdigit() also takes '²' and other digits int() refuses."""
    return "0" <= char <= "9"


# --------------------------------------------------------------------------- dpkg


def _dpkg_order(char: str) -> int:
    """dpkg's lexical weight: the end of a part and digits 0, '~' below everything, letters before other signs."""
    if not char or _is_digit(char):
        return 0
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _dpkg_part(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternate non-digit runs (by weight) and digit runs (numerically)."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not _is_digit(a[i])) or (j < len(b) and not _is_digit(b[j])):
            ac = _dpkg_order(a[i] if i < len(a) else "")
            bc = _dpkg_order(b[j] if j < len(b) else "")
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        start_a, start_b = i, j
        while i < len(a) and _is_digit(a[i]):
            i += 1
        while j < len(b) and _is_digit(b[j]):
            j += 1
        number_a, number_b = _number(a[start_a:i]), _number(b[start_b:j])
        if number_a != number_b:
            return -1 if number_a < number_b else 1
    return 0


def _dpkg_split(version: str) -> tuple[tuple[int, str], str, str]:
    epoch, sep, rest = version.partition(":")
    if not sep or not epoch or not all(map(_is_digit, epoch)):
        epoch, rest = "0", version
    upstream, sep, revision = rest.rpartition("-")
    if not sep:
        upstream, revision = rest, ""
    return _number(epoch), upstream, revision


def compare_dpkg(a: str, b: str) -> int:
    """Debian version order (deb-version(7)): epoch, then upstream version, then Debian revision."""
    epoch_a, upstream_a, revision_a = _dpkg_split(a)
    epoch_b, upstream_b, revision_b = _dpkg_split(b)
    if epoch_a != epoch_b:
        return -1 if epoch_a < epoch_b else 1
    return _dpkg_part(upstream_a, upstream_b) or _dpkg_part(revision_a, revision_b)


# --------------------------------------------------------------------------- apk

_APK_VERSION = re.compile(
    r"(?P<numbers>\d+(?:\.\d+)*)(?P<letter>[a-z]?)(?P<suffixes>(?:_(?:alpha|beta|pre|rc|cvs|svn|git|hg|p)\d*)*)"
    r"(?:~[0-9a-f]+)?(?:-r(?P<release>\d+))?",
    re.ASCII,
)
_APK_SUFFIX = re.compile(r"_(alpha|beta|pre|rc|cvs|svn|git|hg|p)(\d*)", re.ASCII)
_APK_SUFFIX_RANK = {"alpha": -4, "beta": -3, "pre": -2, "rc": -1, "cvs": 1, "svn": 2, "git": 3, "hg": 4, "p": 5}


def _apk_key(version: str) -> tuple | None:
    match = _APK_VERSION.fullmatch(version)
    if match is None:
        return None
    suffixes = [(_APK_SUFFIX_RANK[name], _number(number)) for name, number in _APK_SUFFIX.findall(match["suffixes"])]
    return (
        tuple(_number(n) for n in match["numbers"].split(".")),
        match["letter"],
        tuple(suffixes),
        _number(match["release"] or ""),
    )


def compare_apk(a: str, b: str) -> int:
    """apk-tools' order: numbers, a letter, suffixes (``_rc1`` before the release, ``_p1`` after), ``-rN``."""
    key_a, key_b = _apk_key(a), _apk_key(b)
    if key_a is None or key_b is None:
        return compare_dpkg(a, b)
    numbers_a, letter_a, suffixes_a, release_a = key_a
    numbers_b, letter_b, suffixes_b, release_b = key_b
    width = max(len(suffixes_a), len(suffixes_b))
    padded_a = suffixes_a + ((0, ZERO),) * (width - len(suffixes_a))
    padded_b = suffixes_b + ((0, ZERO),) * (width - len(suffixes_b))
    left, right = (numbers_a, letter_a, padded_a, release_a), (numbers_b, letter_b, padded_b, release_b)
    return (left > right) - (left < right)


# --------------------------------------------------------------------------- PEP 440

_PEP440 = re.compile(
    r"v?(?:(?P<epoch>\d+)!)?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre_label>alpha|beta|preview|pre|rc|a|b|c)[-_.]?(?P<pre>\d*))?"
    r"(?:-(?P<post_implicit>\d+)|[-_.]?(?:post|rev|r)[-_.]?(?P<post>\d*))?"
    r"(?:[-_.]?dev[-_.]?(?P<dev>\d*))?"
    r"(?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?",
    re.IGNORECASE | re.ASCII,
)
_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}


def _pep440_key(version: str) -> tuple | None:
    match = _PEP440.fullmatch(version.strip())
    if match is None:
        return None
    release = [_number(n) for n in match["release"].split(".")]
    while len(release) > 1 and release[-1] == ZERO:
        release.pop()
    has_post = match["post_implicit"] is not None or match.group("post") is not None
    post = (0, _number(match["post_implicit"] or match["post"] or "")) if has_post else (-1, ZERO)
    has_dev = match["dev"] is not None
    if match["pre_label"]:
        pre = (0, _PRE_RANK[match["pre_label"].lower()], _number(match["pre"] or ""))
    else:  # 1.0.dev1 < 1.0a1 < 1.0; a final release sorts after its pre-releases
        pre = (-1, 0, ZERO) if has_dev and not has_post else (1, 0, ZERO)
    dev = (0, _number(match["dev"] or "")) if has_dev else (1, ZERO)
    # local labels: compared segment by segment, a number above any letters
    local = tuple((1, _number(part), "") if part and all(map(_is_digit, part)) else (0, ZERO, part.lower())
                  for part in re.split(r"[-_.]", match["local"] or ""))
    return _number(match["epoch"] or ""), tuple(release), pre, post, dev, local


def compare_pep440(a: str, b: str) -> int:
    """PEP 440 order: epoch, release, pre-release, post-release, development release, local label."""
    key_a, key_b = _pep440_key(a), _pep440_key(b)
    if key_a is None or key_b is None:
        return compare_dpkg(a, b)
    return (key_a > key_b) - (key_a < key_b)
