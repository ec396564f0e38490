"""The Docker engine side: import, build, save, load, remove; and reading ``docker save`` archives."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from benchlib.proc import Cost, StepFailed, measure, pipe, run

# every image the benchmark tags lives here; DELTAIMG_BENCH_REPOSITORY keeps two runs on one engine apart
REPOSITORY = os.environ.get("DELTAIMG_BENCH_REPOSITORY", "deltaimg-bench")
# The engine's own builder, one layer per COPY/RUN, as `docker build` made them for years.
BUILD_ENV = {**os.environ, "DOCKER_BUILDKIT": "0"}


def import_rootfs(rootfs: Path, tag: str) -> str:
    """``tar -C DIR -c . | docker import - TAG``."""
    pipe(["tar", "-C", rootfs, "--numeric-owner", "-c", "."], ["docker", "import", "-", tag])
    return tag


def build(tag: str, context: Path, dockerfile: str) -> str:
    """``docker build --no-cache`` of ``dockerfile`` in ``context``."""
    (context / "Dockerfile").write_text(dockerfile)
    run(["docker", "build", "--no-cache", "--force-rm", "-q", "-t", tag, context], env=BUILD_ENV)
    return tag


def save(tag: str, path: Path) -> Path:
    run(["docker", "save", "-o", path, tag])
    return path


def image_id(ref: str) -> str | None:
    try:
        return run(["docker", "image", "inspect", "-f", "{{.Id}}", ref]).strip()
    except StepFailed:
        return None


def remove(ref: str) -> None:
    if image_id(ref) is not None:
        run(["docker", "rmi", ref])


def remove_ours() -> None:
    """Remove every image the benchmark tagged (this run's or an earlier one's), children first."""
    listing = run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", REPOSITORY])
    tags = [line for line in listing.splitlines() if line.strip()]
    for tag in sorted(tags, key=lambda t: (t.endswith("-base"), t.endswith("debian-base"))):
        remove(tag)


def load(archive: Path) -> Cost:
    """``docker load`` (timed; its memory is spent in dockerd, so no peak is recorded)."""
    cost, _ = measure(["docker", "load", "-q", "-i", archive])
    return Cost(cost.seconds, None)


def expect_loaded(ref: str, wanted: str, how: str) -> None:
    found = image_id(ref)
    if found != wanted:
        raise StepFailed(f"after {how}, {ref} is {found or 'missing'}, not {wanted[:19]}")


@dataclass(frozen=True)
class Saved:
    """A ``docker save`` archive: its config, image ID and layers (diff_id, member name), in order."""

    path: Path
    config: bytes
    image_id: str
    layers: list[tuple[str, str]]

    @property
    def diff_ids(self) -> list[str]:
        return [diff_id for diff_id, _ in self.layers]

    def extract(self, member: str, dest: Path) -> Path:
        with tarfile.open(self.path) as tar:
            source = tar.extractfile(member)
            if source is None:
                raise StepFailed(f"{self.path}: {member} is not a regular file")
            with source, open(dest, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        return dest


def read_saved(path: Path) -> Saved:
    with tarfile.open(path) as tar:
        manifest = _read_member(tar, "manifest.json", path)
        entry = json.loads(manifest)[0]
        config = _read_member(tar, entry["Config"], path)
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    if len(diff_ids) != len(entry["Layers"]):
        raise StepFailed(f"{path}: the config lists {len(diff_ids)} layers, the manifest {len(entry['Layers'])}")
    return Saved(path, config, "sha256:" + hashlib.sha256(config).hexdigest(), list(zip(diff_ids, entry["Layers"])))


def _read_member(tar: tarfile.TarFile, name: str, path: Path) -> bytes:
    try:
        member = tar.extractfile(name)
    except KeyError:
        member = None
    if member is None:
        raise StepFailed(f"{path}: {name} is missing; not a docker save archive")
    return member.read()
