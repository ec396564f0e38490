"""Content no one here wrote, fetched once into the cache: a Debian root filesystem
(debootstrap), .debs from the Debian archive (apt-get) and wheels from PyPI (pip download)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchlib.prereqs import APT_LOCK_WAIT
from benchlib.proc import StepFailed, log, run

MIRROR = "http://deb.debian.org/debian"  # the default mirror of this host's apt sources
SUITE = "bookworm"
PYTHON = "3.11"  # bookworm's python3; the wheels below are for it
WHEEL_PLATFORM = ["--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp",
                  "--abi", "cp311", "--platform", "manylinux2014_x86_64"]
# python-bump: a numpy patch release plus two other compiled packages, old -> new
NUMPY_OLD = ["numpy==1.26.3", "pyyaml==6.0.1", "markupsafe==2.1.4"]
NUMPY_NEW = ["numpy==1.26.4", "pyyaml==6.0.2", "markupsafe==2.1.5"]
# app-change: a vendored HTTP client and its dependencies
APP_PACKAGES = ["requests==2.31.0", "urllib3==2.1.0", "idna==3.6", "certifi==2023.11.17",
                "charset-normalizer==3.3.2"]


@dataclass(frozen=True)
class DebRelease:
    """The .debs of one version of libssl3 and openssl."""

    version: str
    suite: str
    directory: Path


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def rootfs(cache: Path) -> Path:
    """``debootstrap --variant=minbase bookworm``, built once and cached."""
    target = cache / f"rootfs-{SUITE}-minbase"
    if target.is_dir():
        log(f"root filesystem: cached {target}")
        return target
    building = cache / f"rootfs-{SUITE}-minbase.tmp"
    shutil.rmtree(building, ignore_errors=True)
    log(f"debootstrap --variant=minbase {SUITE} from {MIRROR} (first run only, about a minute)")
    run(["debootstrap", "--variant=minbase", SUITE, building, MIRROR])
    # like Debian's official images: no downloaded .debs, no package lists
    for leftovers in (building / "var/cache/apt/archives", building / "var/lib/apt/lists"):
        for item in leftovers.glob("*"):
            if item.is_file():
                item.unlink()
    building.rename(target)
    return target


def _dpkg_older(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0


def _archive_versions(package: str) -> dict[str, str]:
    """version -> suite, for every binary version the apt sources offer."""
    versions: dict[str, str] = {}
    for line in run(["apt-cache", "madison", package]).splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) == 3 and fields[2].endswith("Packages"):
            versions[fields[1]] = fields[2].split()[1].split("/")[0]
    return versions


def openssl_releases(cache: Path) -> tuple[DebRelease, DebRelease]:
    """The two newest versions of libssl3+openssl the archive serves (older, newer)."""
    libssl, openssl = _archive_versions("libssl3"), _archive_versions("openssl")
    common = sorted(set(libssl) & set(openssl), key=functools.cmp_to_key(
        lambda a, b: -1 if _dpkg_older(a, b) else (0 if a == b else 1)))
    if len(common) < 2:
        raise StepFailed(f"the apt sources offer {len(common)} version(s) of libssl3+openssl; the "
                         "debian-security scenario needs two (add bookworm-security or bookworm-updates)")
    return tuple(_openssl_debs(cache, version, libssl[version]) for version in common[-2:])  # type: ignore[return-value]


def _openssl_debs(cache: Path, version: str, suite: str) -> DebRelease:
    directory = cache / "debs" / f"openssl-{version.replace('~', '_')}"
    if len(list(directory.glob("*.deb"))) != 2:
        log(f"apt-get download libssl3={version} openssl={version} ({suite})")
        run(["apt-get", "download", f"libssl3={version}", f"openssl={version}"], cwd=_fresh(directory))
    return DebRelease(version, suite, directory)


def python_debs(cache: Path, root: Path) -> Path:
    """python3 and every package it needs that the root filesystem lacks (apt's own answer,
    computed against the root filesystem's dpkg status), downloaded once."""
    directory = cache / "debs" / "python3"
    if any(directory.glob("python3_*.deb")):
        return directory
    log("apt-get --download-only python3 (against the root filesystem's dpkg status)")
    building = _fresh(cache / "debs" / "python3.tmp")
    (building / "partial").mkdir()
    run(["apt-get", *APT_LOCK_WAIT, "-o", f"Dir::State::status={root}/var/lib/dpkg/status",
         "-o", f"Dir::Cache::archives={building}", "install", "--download-only", "-y", "-q",
         "--no-install-recommends", "python3"])
    for item in building.iterdir():
        if item.suffix != ".deb":
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    shutil.rmtree(directory, ignore_errors=True)
    building.rename(directory)
    return directory


def wheels(cache: Path, name: str, requirements: list[str], platform: list[str] = WHEEL_PLATFORM) -> Path:
    """``pip download`` of pinned wheels for bookworm's Python, once."""
    directory = cache / "wheels" / name
    if len(list(directory.glob("*.whl"))) == len(requirements):
        return directory
    log(f"pip download {' '.join(requirements)}")
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *platform,
         "-d", _fresh(directory), *requirements])
    return directory


def pip_install(wheel_dir: Path | list[Path], target: Path, compile_pyc: bool) -> None:
    """Install the wheels of one or more folders into ``target`` the way an image build would
    (no index, no network), in one pip run."""
    folders = wheel_dir if isinstance(wheel_dir, list) else [wheel_dir]
    run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
         *([] if compile_pyc else ["--no-compile"]), "--target", target,
         *sorted(wheel for folder in folders for wheel in folder.glob("*.whl"))])
