"""The five image pairs, built locally with ``docker build`` from content no one here wrote."""

from __future__ import annotations

import functools
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchlib import images, inputs
from benchlib.proc import StepFailed, log

SITE_PACKAGES = f"/usr/local/lib/python{inputs.PYTHON}/dist-packages/"
DEB_LAYERS = "COPY *.deb /tmp/\nRUN dpkg -i /tmp/*.deb && rm /tmp/*.deb\n"  # how many real updates look
# many .debs with pre-dependencies: apt orders them (offline: every dependency is among the files)
APT_LAYERS = "COPY *.deb /tmp/\nRUN apt-get install -y -q --no-install-recommends /tmp/*.deb && rm /tmp/*.deb\n"
APP_LAYERS = "COPY app/ /opt/app/\nRUN python3 -m compileall -q /opt/app\n"

APP_MAIN = '''"""Prints the status of a web page: the application the app-change image ships."""
import sys

sys.path.insert(0, "/opt/app/vendor")
import requests


def main() -> None:
    response = requests.get(sys.argv[1], timeout=10)
    print(response.status_code, response.headers.get("content-type"))


if __name__ == "__main__":
    main()
'''
# app-change v2: a small release of the application (file, text in v1, text in v2)
APP_EDITS = [
    ("main.py", '''    response = requests.get(sys.argv[1], timeout=10)
    print(response.status_code, response.headers.get("content-type"))
''', '''    session = requests.Session()
    session.headers["User-Agent"] = "status-check/1.1"
    for url in sys.argv[1:]:
        response = session.get(url, timeout=5)
        print(url, response.status_code, response.headers.get("content-type"), response.elapsed)
'''),
    ("vendor/requests/__version__.py", '__version__ = "2.31.0"', '__version__ = "2.31.0+app.1"'),
    ("vendor/requests/adapters.py", "DEFAULT_POOLSIZE = 10", "DEFAULT_POOLSIZE = 32"),
    ("vendor/urllib3/util/retry.py", "DEFAULT_BACKOFF_MAX = 120", "DEFAULT_BACKOFF_MAX = 60"),
]


class Workshop:
    """Fetches the inputs and builds the images; shared bases are built once per run."""

    def __init__(self, cache: Path, workdir: Path) -> None:
        self.cache = cache
        self.workdir = workdir
        self.notes: dict[str, str] = {}  # scenario -> what exactly it used, for the report

    @functools.cached_property
    def rootfs(self) -> Path:
        return inputs.rootfs(self.cache)

    @functools.cached_property
    def debian(self) -> str:
        log("docker import of the root filesystem as the base image")
        return images.import_rootfs(self.rootfs, f"{images.REPOSITORY}:debian-base")

    @functools.cached_property
    def python_debs(self) -> Path:
        return inputs.python_debs(self.cache, self.rootfs)

    @functools.cached_property
    def python(self) -> str:
        base, debs = self.debian, self.python_debs
        log("docker build: base + python3 from .debs")
        context = self.context("python-base")
        _copy_files(debs.glob("*.deb"), context)
        return images.build(f"{images.REPOSITORY}:python-base", context, f"FROM {base}\n{APT_LAYERS}")

    def context(self, name: str) -> Path:
        path = self.workdir / "contexts" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def site_packages(self, context: Path, name: str, requirements: list[str]) -> None:
        inputs.pip_install(inputs.wheels(self.cache, name, requirements), context / "site", compile_pyc=True)

    def app(self, context: Path) -> None:
        inputs.pip_install(inputs.wheels(self.cache, "app", inputs.APP_PACKAGES), context / "app" / "vendor",
                           compile_pyc=False)
        (context / "app" / "main.py").write_text(APP_MAIN)


def _copy_files(files, dest: Path) -> None:
    for path in files:
        shutil.copy2(path, dest)


def _tags(name: str) -> tuple[str, str]:
    return f"{images.REPOSITORY}:{name}-v1", f"{images.REPOSITORY}:{name}-v2"


def debian_security(shop: Workshop) -> tuple[str, str]:
    older, newer = inputs.openssl_releases(shop.cache)
    shop.notes["debian-security"] = (f"libssl3+openssl {older.version} ({older.suite}) -> "
                                     f"{newer.version} ({newer.suite})")
    base, built = shop.debian, []
    for tag, release in zip(_tags("debian-security"), (older, newer)):
        log(f"docker build {tag}: base + dpkg -i libssl3/openssl {release.version}")
        context = shop.context(tag.split(":")[1])
        _copy_files(release.directory.glob("*.deb"), context)
        built.append(images.build(tag, context, f"FROM {base}\n{DEB_LAYERS}"))
    return built[0], built[1]


def python_bump(shop: Workshop) -> tuple[str, str]:
    shop.notes["python-bump"] = f"{', '.join(inputs.NUMPY_OLD)} -> {', '.join(inputs.NUMPY_NEW)}"
    base, built = shop.python, []
    for tag, requirements in zip(_tags("python-bump"), (inputs.NUMPY_OLD, inputs.NUMPY_NEW)):
        log(f"docker build {tag}: python base + pip install --target {' '.join(requirements)}")
        context = shop.context(tag.split(":")[1])
        shop.site_packages(context, requirements[0].replace("==", "-"), requirements)
        built.append(images.build(tag, context, f"FROM {base}\nCOPY site/ {SITE_PACKAGES}\n"))
    return built[0], built[1]


def app_change(shop: Workshop) -> tuple[str, str]:
    shop.notes["app-change"] = (f"vendored {', '.join(inputs.APP_PACKAGES)}; v2 edits "
                                f"{len(APP_EDITS)} files: {', '.join(path for path, _, _ in APP_EDITS)}")
    old_tag, new_tag = _tags("app-change")
    dockerfile = f"FROM {shop.python}\n{APP_LAYERS}"
    log(f"docker build {old_tag}: python base + vendored requests, compileall")
    old = shop.context("app-change-v1")
    shop.app(old)
    images.build(old_tag, old, dockerfile)
    log(f"docker build {new_tag}: the same with {len(APP_EDITS)} source files edited")
    new = shop.context("app-change-v2")
    shutil.copytree(old / "app", new / "app")  # unchanged files keep their times, as in a checkout
    for relative, before, after in APP_EDITS:
        _edit(new / "app" / relative, before, after)
    images.build(new_tag, new, dockerfile)
    return old_tag, new_tag


def _edit(path: Path, before: str, after: str) -> None:
    text = path.read_text()
    if text.count(before) != 1:
        raise StepFailed(f"{path}: expected the text to edit exactly once, found it {text.count(before)} times")
    path.write_text(text.replace(before, after))


def rebuild(shop: Workshop) -> tuple[str, str]:
    shop.notes["rebuild"] = ("FROM the base: python3 .debs, numpy site-packages, the app, compileall; "
                             "built twice with --no-cache, every context file touched in between")
    base, context = shop.debian, shop.context("rebuild")
    _copy_files(shop.python_debs.glob("*.deb"), context)
    shop.site_packages(context, inputs.NUMPY_OLD[0].replace("==", "-"), inputs.NUMPY_OLD)
    shop.app(context)
    dockerfile = f"FROM {base}\n{APT_LAYERS}COPY site/ {SITE_PACKAGES}\n{APP_LAYERS}"
    old_tag, new_tag = _tags("rebuild")
    log(f"docker build --no-cache {old_tag}")
    images.build(old_tag, context, dockerfile)
    _touch_tree(context)
    log(f"docker build --no-cache {new_tag} (same Dockerfile, same files, later times)")
    images.build(new_tag, context, dockerfile)
    return old_tag, new_tag


def _touch_tree(root: Path) -> None:
    time.sleep(1.1)  # tar headers keep whole seconds: make sure the new times differ
    for directory, _, files in os.walk(root):
        for name in [*files, "."]:
            os.utime(os.path.join(directory, name))


DISK_SIZE = 256 << 20
DISK_BLOCKS = 24  # 64 KiB blocks of data in the zeros, like a new filesystem's metadata
DISK_EDITS = 8  # 1 KiB written in v2 at each of these many places, half in the data, half in the zeros


def sparse_disk(shop: Workshop) -> tuple[str, str]:
    shop.notes["sparse-disk"] = (f"one {DISK_SIZE >> 20} MiB file of zeros holding {DISK_BLOCKS} random 64 KiB "
                                 f"blocks; v2 writes 1 KiB of random bytes at {DISK_EDITS} places")
    rnd = random.Random(19)
    blocks = sorted(rnd.sample(range(DISK_SIZE >> 16), DISK_BLOCKS))
    edits = [(block << 16) + rnd.randrange(63 << 10) for block in blocks[:DISK_EDITS // 2]]
    edits += [rnd.randrange(DISK_SIZE - 1024) for _ in range(DISK_EDITS - len(edits))]
    built = []
    for tag, writes in zip(_tags("sparse-disk"), ([], edits)):
        log(f"docker build {tag}: base + a {DISK_SIZE >> 20} MiB disk image, mostly zeros")
        context = shop.context(tag.split(":")[1])
        data = random.Random(20)
        with open(context / "disk.img", "wb") as disk:
            disk.truncate(DISK_SIZE)
            for block in blocks:
                disk.seek(block << 16)
                disk.write(data.randbytes(64 << 10))
            edit = random.Random(21)
            for at in writes:
                disk.seek(at)
                disk.write(edit.randbytes(1024))
        built.append(images.build(tag, context, f"FROM {shop.debian}\nCOPY disk.img /var/lib/disk.img\n"))
    return built[0], built[1]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    build: Callable[[Workshop], tuple[str, str]] = field(repr=False)
    quick: bool


SCENARIOS = [
    Scenario("debian-security", "Debian minbase + a libssl3/openssl security update installed with dpkg -i",
             debian_security, quick=True),
    Scenario("python-bump", "Debian + python3 + pip-installed numpy/PyYAML/MarkupSafe, each bumped one "
             "patch release", python_bump, quick=False),
    Scenario("app-change", "Debian + python3 + a vendored requests app; v2 edits 4 source files",
             app_change, quick=True),
    Scenario("rebuild", "The same Dockerfile built twice with --no-cache: only times differ",
             rebuild, quick=False),
    Scenario("sparse-disk", f"Debian + a {DISK_SIZE >> 20} MiB disk image of mostly zeros; v2 writes "
             f"{DISK_EDITS} KiB in {DISK_EDITS} places", sparse_disk, quick=False),
]
