"""Fuzzing the image readers make uses: whatever an archive or layout holds, opening it and reading
every layer either works or fails with ImageReadError, the error of a malformed image (never a
crash, never a hang): each case under a time and a memory cap.

Inputs are small real images in every form deltaimg reads, mutated two ways: a JSON document
(manifest.json, index.json, a manifest, a config) has one value replaced by arbitrary JSON, or the
bytes of the archive or of one blob are flipped, overwritten or cut.
"""

from __future__ import annotations

import datetime
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from deltaimg.errors import DeltaimgError, ImageReadError
from deltaimg.images import open_image
from tests import imagefactory as f
from tests.memory import MINUTE, capped

# deadline: each case's time cap as hypothesis checks it (a case takes some 100 ms); capped() also
# interrupts one that hangs, and caps its memory.
FUZZ = settings(max_examples=200, deadline=datetime.timedelta(seconds=30),
                suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON_NAMES = ("manifest.json", "index.json")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12)
    | st.sampled_from(["../x", "/etc/passwd", "sha256:../../x", "blobs/sha256/", "sha256:" + "0" * 64, "@0"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@dataclass(frozen=True)
class Layout:
    """A pristine image as a directory tree; ``archive`` says whether it is read as a tar of that tree."""

    root: Path
    reference_prefix: str
    archive: bool

    def json_files(self) -> list[Path]:
        """Every JSON document of the image: the top-level ones and every blob that parses as JSON."""
        found = [self.root / name for name in JSON_NAMES if (self.root / name).exists()]
        for blob in sorted(self.root.rglob("*")):
            if blob.is_file() and blob.name not in JSON_NAMES and blob.stat().st_size < 1 << 16:
                try:
                    json.loads(blob.read_bytes())
                except ValueError:
                    continue
                found.append(blob)
        return found

    def blob_files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())


def _image_specs(tmp: Path) -> list[f.ImageSpec]:
    base = f.write_layer(tmp / "base.layer", f.complete_tree([
        f.file("etc/os-release", b"NAME=fuzz\n"), f.symlink("bin/sh", "busybox"),
        f.file("bin/busybox", bytes(range(256)) * 20, mode=0o755)]))
    app = f.write_layer(tmp / "app.layer", f.complete_tree([f.file("srv/app.py", b"print('hi')\n" * 30)]))
    return [f.ImageSpec([base, app], ["fuzz/app:1"])]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> list[Layout]:
    tmp = tmp_path_factory.mktemp("fuzz-images")
    specs = _image_specs(tmp)
    found = []
    for form in ("legacy", "oci"):
        archive = tmp / f"{form}.tar"
        f.write_docker_archive(archive, specs, form=form)
        tree = tmp / f"{form}-tree"
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="tar")
        found.append(Layout(tree, "docker-archive:", archive=True))
    for compression in ("gzip", "zstd"):
        tree = tmp / f"oci-{compression}"
        f.write_oci_dir(tree, specs, compression=compression)
        found.append(Layout(tree, "oci:", archive=False))
        found.append(Layout(tree, "oci-archive:", archive=True))
    return found


def materialize(layout: Layout, workdir: Path) -> str:
    """A fresh copy of the (already mutated) tree at ``workdir/tree``, tarred when it is an archive;
    returns the reference to open."""
    if layout.archive:
        path = workdir / "image.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for item in sorted(p for p in (workdir / "tree").rglob("*")):
                tar.add(item, arcname=str(item.relative_to(workdir / "tree")), recursive=False)
        return layout.reference_prefix + str(path)
    return layout.reference_prefix + str(workdir / "tree")


def open_and_read_everything(reference: str) -> None:
    """What make does with an input before encoding: open it, read its config and every layer."""
    image = open_image(reference)
    assert image.config_digest.startswith("sha256:")
    image.config  # noqa: B018  (parses and checks the config)
    for layer in image.layers:
        with layer.open() as stream:
            while stream.read(1 << 16):
                pass


def replace_one_value(document: Any, index: int, value: Any) -> Any:
    """``document`` with its ``index``-th node (in pre-order, modulo the node count) replaced by ``value``."""
    nodes: list[tuple[Any, Any]] = []  # (container, key); (None, None) is the root

    def walk(node: Any, parent: Any, key: Any) -> None:
        nodes.append((parent, key))
        if isinstance(node, dict):
            for k in list(node):
                walk(node[k], node, k)
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, node, i)

    walk(document, None, None)
    parent, key = nodes[index % len(nodes)]
    if parent is None:
        return value
    parent[key] = value
    return document


def expect_only_own_errors(reference: str) -> None:
    try:
        with capped(MINUTE):
            open_and_read_everything(reference)
    except DeltaimgError as exc:
        assert isinstance(exc, ImageReadError), f"refused with {type(exc).__name__}, not ImageReadError: {exc}"
        assert "\n" not in str(exc)
        event(f"refused: {type(exc).__name__}")
    else:
        event("opened and read")


@FUZZ
@given(data=st.data())
def test_any_json_value_anywhere_in_an_image_gives_a_deltaimg_error_at_worst(layouts, data):
    layout = data.draw(st.sampled_from(layouts), label="layout")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        shutil.copytree(layout.root, workdir / "tree", symlinks=True)
        copy = Layout(workdir / "tree", layout.reference_prefix, layout.archive)
        target = data.draw(st.sampled_from(copy.json_files()), label="document")
        document = json.loads(target.read_bytes())
        mutated = replace_one_value(document, data.draw(st.integers(0, 10_000)), data.draw(json_values, label="value"))
        target.write_text(json.dumps(mutated))
        expect_only_own_errors(materialize(layout, workdir))


@FUZZ
@given(data=st.data())
def test_any_damage_to_an_archive_or_a_blob_gives_a_deltaimg_error_at_worst(layouts, data):
    layout = data.draw(st.sampled_from(layouts), label="layout")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        shutil.copytree(layout.root, workdir / "tree", symlinks=True)
        damage_archive = layout.archive and data.draw(st.booleans(), label="damage the archive itself")
        if not damage_archive:
            blob = data.draw(st.sampled_from(Layout(workdir / "tree", "", False).blob_files()), label="blob")
            blob.write_bytes(damage(blob.read_bytes(), data))
        reference = materialize(layout, workdir)
        if damage_archive:
            path = Path(reference.split(":", 1)[1])
            path.write_bytes(damage(path.read_bytes(), data))
        expect_only_own_errors(reference)


def damage(content: bytes, data: st.DataObject) -> bytes:
    """Flip, overwrite or cut bytes somewhere in ``content``."""
    if not content:
        return data.draw(st.binary(max_size=64))
    kind = data.draw(st.sampled_from(["flip", "overwrite", "truncate", "insert"]), label="damage")
    at = data.draw(st.integers(0, len(content) - 1), label="at")
    if kind == "flip":
        return content[:at] + bytes([content[at] ^ data.draw(st.integers(1, 255))]) + content[at + 1:]
    if kind == "overwrite":
        junk = data.draw(st.binary(min_size=1, max_size=600))
        return content[:at] + junk + content[at + len(junk):]
    if kind == "truncate":
        return content[:at]
    return content[:at] + data.draw(st.binary(min_size=1, max_size=600)) + content[at:]
