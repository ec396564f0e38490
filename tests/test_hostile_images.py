"""An image archive or layout handed to make may be malformed or malicious.

Whatever it holds (layers missing or not matching their diff_ids, names and links that lead out of
it, broken or absurd JSON, damaged or oversized compression), make ends with one line and exit
code 3, reads nothing outside the image, writes no bundle and leaves no temporary file.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable

import pytest

from deltaimg.errors import ImageReadError, OutputError
from tests import imagefactory as f
from tests.conftest import assert_same_image, run_cli
from tests.memory import MINUTE, measured

IMAGE_EXIT = ImageReadError.exit_code
BUDGET = 512 << 20  # the peak memory any command may reach on hostile input


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A good old image, a new one as a legacy archive tree and as an OCI layout directory."""
    tmp = tmp_path_factory.mktemp("hostile-images")
    v1 = f.write_layer(tmp / "v1.layer", f.complete_tree([f.file("etc/version", b"1\n"), f.file("srv/app", b"app " * 900)]))
    v2 = f.write_layer(tmp / "v2.layer", f.complete_tree([f.file("etc/version", b"2\n"), f.file("srv/app", b"app " * 901)]))
    old = f.write_docker_archive(tmp / "old.tar", [f.ImageSpec([v1], ["hostile/app:1"])])[0].path
    new = tmp / "new.tar"
    f.write_docker_archive(new, [f.ImageSpec([v2], ["hostile/app:2"])])
    tree = tmp / "new-tree"
    with tarfile.open(new) as tar:
        tar.extractall(tree, filter="tar")
    layout = tmp / "new-oci"
    f.write_oci_dir(layout, [f.ImageSpec([v2], ["2"])], compression="gzip")
    secret = tmp / "secret"
    secret.write_bytes(b"the build host's secret\n")
    return {"old": old, "new": new, "tree": tree, "layout": layout, "secret": secret}


def tar_tree(tree: Path, out: Path, extra: Callable[[tarfile.TarFile], None] | None = None) -> Path:
    """Tar a (possibly edited) archive tree back; ``extra`` may add members."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for item in sorted(tree.rglob("*")):
            tar.add(item, arcname=str(item.relative_to(tree)), recursive=False)
        if extra:
            extra(tar)
    return out


def edited_archive(images: dict[str, Path], tmp_path: Path, edit: Callable[[Path, dict], None],
                   extra: Callable[[tarfile.TarFile], None] | None = None) -> Path:
    """The new image's archive with its manifest.json edited by ``edit(tree, entry)``."""
    tree = tmp_path / "tree"
    shutil.copytree(images["tree"], tree, symlinks=True)
    manifest = json.loads((tree / "manifest.json").read_bytes())
    edit(tree, manifest[0])
    (tree / "manifest.json").write_text(json.dumps(manifest))
    return tar_tree(tree, tmp_path / "new-edited.tar", extra)


def symlink_member(name: str, target: str) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, target
        tar.addfile(info)
    return add


def make_refused(images: dict[str, Path], new: str, keypair, tmp_path: Path, reason: str, old: str | None = None) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    result = run_cli("make", old or str(images["old"]), new, "-o", str(out_dir / "b.dimg"), "--key", keypair[0], "--quiet")
    assert result.returncode == IMAGE_EXIT, result.stderr
    assert result.stderr.startswith("deltaimg: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert reason in result.stderr, result.stderr
    assert os.listdir(out_dir) == [], "make left a bundle or a temporary file behind"
    assert "the build host's secret" not in result.stderr


def test_control_the_untouched_images_make_a_bundle(images, keypair, tmp_path):
    rebuilt = tar_tree(images["tree"], tmp_path / "same.tar")
    result = run_cli("make", str(images["old"]), str(rebuilt), "-o", str(tmp_path / "b.dimg"), "--key", keypair[0])
    assert result.returncode == 0, result.stderr
    result = run_cli("make", str(images["old"]), f"oci:{images['layout']}", "-o", str(tmp_path / "c.dimg"), "--key", keypair[0])
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- missing and mismatching layers


def test_a_layer_the_manifest_lists_but_the_archive_lacks(images, keypair, tmp_path):
    def drop_layer(tree: Path, entry: dict) -> None:
        (tree / entry["Layers"][0]).unlink()
    make_refused(images, str(edited_archive(images, tmp_path, drop_layer)), keypair, tmp_path, "missing from the archive")


def test_a_layer_whose_bytes_do_not_match_its_diff_id(images, keypair, tmp_path):
    def alter_layer(tree: Path, entry: dict) -> None:
        layer = tree / entry["Layers"][0]
        data = layer.read_bytes()
        at = data.index(b"app app")
        layer.write_bytes(data[:at] + b"APP" + data[at + 3:])
    make_refused(images, str(edited_archive(images, tmp_path, alter_layer)), keypair, tmp_path, "does not hash to its diff_id")


def test_an_old_layer_whose_bytes_do_not_match_its_diff_id(images, keypair, tmp_path):
    """The old image is what the bundle will be checked against on the edge host: make must not
    encode against bytes that are not the ones its diff_ids name."""
    tree = tmp_path / "old-tree"
    with tarfile.open(images["old"]) as tar:
        tar.extractall(tree, filter="tar")
    entry = json.loads((tree / "manifest.json").read_bytes())[0]
    layer = tree / entry["Layers"][0]
    data = layer.read_bytes()
    at = data.index(b"app app")
    layer.write_bytes(data[:at] + b"APP" + data[at + 3:])
    old = tar_tree(tree, tmp_path / "old-altered.tar")
    make_refused(images, str(images["new"]), keypair, tmp_path, "does not hash to its diff_id", old=str(old))


def test_more_layers_listed_than_the_config_has(images, keypair, tmp_path):
    def add_layer(tree: Path, entry: dict) -> None:
        entry["Layers"].append(entry["Layers"][0])
    make_refused(images, str(edited_archive(images, tmp_path, add_layer)), keypair, tmp_path, "lists 2 layers but the config has 1")


def test_a_truncated_layer_tar_is_a_damaged_image(images, keypair, tmp_path):
    def truncate(tree: Path, entry: dict) -> None:
        layer = tree / entry["Layers"][0]
        layer.write_bytes(layer.read_bytes()[:700])
    new = edited_archive(images, tmp_path, truncate)
    make_refused(images, str(new), keypair, tmp_path,
                 f"deltaimg: error: {new}: layer 0 does not hash to its diff_id sha256:")


def test_a_layer_that_is_a_truncated_tar_with_a_matching_diff_id_is_named_by_its_index_and_diff_id(images, keypair, tmp_path):
    base_layer = f.write_layer(tmp_path / "base.layer", f.complete_tree([f.file("etc/version", b"1\n")]))
    whole = f.write_layer(tmp_path / "whole.layer", f.complete_tree([f.file("srv/app", b"app " * 900)]))
    cut = tmp_path / "cut.layer"
    cut.write_bytes(whole.path.read_bytes()[:3000])  # inside srv/app's payload
    cut_layer = f.LayerFile(cut, f.sha256_file(cut), cut.stat().st_size)
    new = f.write_docker_archive(tmp_path / "new.tar", [f.ImageSpec([base_layer, cut_layer], ["hostile/app:2"])])[0].path
    make_refused(images, str(new), keypair, tmp_path,
                 f"layer 1 ({cut_layer.diff_id}) of the target image is a truncated tar; rebuild or re-export the image")


def test_a_base_layer_that_is_a_truncated_tar_with_a_matching_diff_id_is_named_as_the_base_s(images, keypair, tmp_path):
    whole = f.write_layer(tmp_path / "whole.layer", f.complete_tree([f.file("srv/app", b"app " * 900)]))
    cut = tmp_path / "cut.layer"
    cut.write_bytes(whole.path.read_bytes()[:3000])  # inside srv/app's payload
    cut_layer = f.LayerFile(cut, f.sha256_file(cut), cut.stat().st_size)
    old = f.write_docker_archive(tmp_path / "old.tar", [f.ImageSpec([cut_layer], ["hostile/app:1"])])[0].path
    new_layer = f.write_layer(tmp_path / "new.layer", f.complete_tree([f.file("srv/app", b"app " * 901)]))
    new = f.write_docker_archive(tmp_path / "new.tar", [f.ImageSpec([new_layer], ["hostile/app:2"])])[0].path
    make_refused(images, str(new), keypair, tmp_path,
                 f"{old}: layer 0 ({cut_layer.diff_id}) of the base image is a truncated tar; rebuild or re-export "
                 "the image", old=str(old))


# --------------------------------------------------------------------------- names that lead out of the image


@pytest.mark.parametrize("name", ["../secret", "../../../../../../etc/passwd", "/etc/passwd", "blobs/../../x"])
def test_a_manifest_naming_a_path_outside_the_archive(images, keypair, tmp_path, name):
    def point_out(tree: Path, entry: dict) -> None:
        entry["Config"] = name
    make_refused(images, str(edited_archive(images, tmp_path, point_out)), keypair, tmp_path, "points outside the image")


@pytest.mark.parametrize("target", ["../../secret", "/etc/passwd", "../../../../../../etc/passwd"])
def test_a_symlink_in_the_archive_leading_out_of_it(images, keypair, tmp_path, target):
    def name_link(tree: Path, entry: dict) -> None:
        entry["Layers"][0] = "sneaky/layer.tar"
    archive = edited_archive(images, tmp_path, name_link, extra=symlink_member("sneaky/layer.tar", target))
    make_refused(images, str(archive), keypair, tmp_path, "link pointing outside the archive")


def test_a_symlink_in_a_layout_directory_leading_out_of_it(images, keypair, tmp_path):
    layout = tmp_path / "layout"
    shutil.copytree(images["layout"], layout, symlinks=True)
    index = json.loads((layout / "index.json").read_bytes())
    manifest_blob = layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads(manifest_blob.read_bytes())
    config = layout / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]
    config.unlink()
    config.symlink_to(images["secret"])
    make_refused(images, f"oci:{layout}", keypair, tmp_path, "outside the image")


def test_a_symlink_inside_a_layout_directory_that_stays_inside_is_followed(images, keypair, tmp_path):
    layout = tmp_path / "layout"
    shutil.copytree(images["layout"], layout, symlinks=True)
    index = json.loads((layout / "index.json").read_bytes())
    (layout / "index.real.json").write_bytes((layout / "index.json").read_bytes())
    (layout / "index.json").unlink()
    (layout / "index.json").symlink_to("index.real.json")
    assert index["manifests"]
    result = run_cli("make", str(images["old"]), f"oci:{layout}", "-o", str(tmp_path / "b.dimg"), "--key", keypair[0])
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- broken JSON


@pytest.mark.parametrize("content", [b"", b"{not json", b"[" * 100_000 + b"]" * 100_000, b'"a string"', b"[1, 2]",
                                     b'[{"Config": 5, "Layers": "x"}]', b'[{"Config": "c", "Layers": [], "RepoTags": 7}]',
                                     b"\xff\xfe"],
                         ids=["empty", "cut", "nested deep", "a string", "numbers", "wrong types", "tags not a list", "not utf-8"])
def test_a_broken_manifest_json(images, keypair, tmp_path, content):
    tree = tmp_path / "tree"
    shutil.copytree(images["tree"], tree, symlinks=True)
    (tree / "manifest.json").write_bytes(content)
    make_refused(images, str(tar_tree(tree, tmp_path / "broken.tar")), keypair, tmp_path, "")


def test_a_manifest_json_of_millions_of_values_is_refused_before_parsing(images, keypair, tmp_path):
    """16 MiB (the metadata limit) of ``{},`` would take Python some 400 MB to parse."""
    tree = tmp_path / "tree"
    shutil.copytree(images["tree"], tree, symlinks=True)
    (tree / "manifest.json").write_bytes(b"[" + b"{}," * (5 << 20) + b"{}]")
    make_refused(images, str(tar_tree(tree, tmp_path / "wide.tar")), keypair, tmp_path, "holds more values")


@pytest.mark.parametrize("content", [b"{", b"[" * 100_000, b'{"rootfs": {"diff_ids": ["sha256:../../etc/passwd"]}}', b"null"],
                         ids=["cut", "nested deep", "diff_id a path", "null"])
def test_a_broken_image_config(images, keypair, tmp_path, content):
    def replace_config(tree: Path, entry: dict) -> None:
        (tree / entry["Config"]).write_bytes(content)
    make_refused(images, str(edited_archive(images, tmp_path, replace_config)), keypair, tmp_path, "config")


# --------------------------------------------------------------------------- damaged and oversized compression


def _layout_with_layer_blob(images: dict[str, Path], tmp_path: Path, blob: bytes) -> Path:
    """The OCI layout with its (gzip) layer blob's bytes replaced."""
    layout = tmp_path / "layout"
    shutil.copytree(images["layout"], layout, symlinks=True)
    index = json.loads((layout / "index.json").read_bytes())
    manifest = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    (layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]).write_bytes(blob)
    return layout


@pytest.mark.parametrize("damage", ["flipped byte", "cut short", "crc"])
def test_a_damaged_gzip_layer(images, keypair, tmp_path, damage):
    good = gzip.compress(b"x" * 100_000)
    blob = {"flipped byte": good[:40] + bytes([good[40] ^ 0xFF]) + good[41:], "cut short": good[: len(good) // 2],
            "crc": good[:-8] + bytes(8)}[damage]
    make_refused(images, f"oci:{_layout_with_layer_blob(images, tmp_path, blob)}", keypair, tmp_path, "")


def test_a_zstd_layer_that_asks_for_a_window_beyond_what_zstd_accepts_by_default(images, keypair, tmp_path):
    # Frame header by hand: no content size, window 2^31, then one raw block: a 2 GiB window.
    blob = b"\x28\xb5\x2f\xfd" + bytes([0x00, 21 << 3]) + bytes([0x09, 0, 0]) + b"x"
    launcher = ("import os, subprocess, sys\nchild = subprocess.Popen(sys.argv[1:], stderr=subprocess.PIPE)\n"
                "err = child.stderr.read()\n_, status, usage = os.wait4(child.pid, 0)\n"
                "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, err.decode().strip())\n")
    layout = _layout_with_layer_blob(images, tmp_path, blob)
    command = [sys.executable, "-m", "deltaimg", "make", str(images["old"]), f"oci:{layout}", "-o",
               str(tmp_path / "b.dimg"), "--key", keypair[0], "--quiet"]
    returncode, peak_kib, message = subprocess.run([sys.executable, "-c", launcher, *command], capture_output=True,
                                                   text=True, timeout=600).stdout.split(" ", 2)
    assert int(returncode) == IMAGE_EXIT and "does not decompress" in message, message
    assert int(peak_kib) < 256 * 1024
    assert not (tmp_path / "b.dimg").exists()


def test_an_archive_that_is_itself_compressed(images, keypair, tmp_path):
    packed = tmp_path / "new.tar.gz"
    packed.write_bytes(gzip.compress(images["new"].read_bytes()))
    make_refused(images, str(packed), keypair, tmp_path, "decompress it first")


def test_a_layer_tar_with_absurd_sizes(images, keypair, tmp_path):
    """A PAX header that says its file is a petabyte: the tar ends long before."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("huge")
        info.size = 10
        info.pax_headers = {"size": str(1 << 50)}
        tar.addfile(info, io.BytesIO(b"0123456789"))
    def replace_layer(tree: Path, entry: dict) -> None:
        (tree / entry["Layers"][0]).write_bytes(buffer.getvalue())
    make_refused(images, str(edited_archive(images, tmp_path, replace_layer)), keypair, tmp_path, "")


# --------------------------------------------------------------------------- the outer archive's own headers


def _negative_size_header(name: str, size: int) -> bytes:
    """A ustar header whose size field holds ``size`` in base-256, which can say a negative number."""
    block = bytearray(tarfile.TarInfo(name).tobuf(format=tarfile.USTAR_FORMAT))
    field = bytearray(size.to_bytes(12, "big", signed=True))
    field[0] = 0xFF  # the base-256 marker of a negative number
    block[124:136] = field
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


@pytest.fixture
def negative_size_archive(images, tmp_path) -> Path:
    """The new image's archive with, after its first member, a member of size -512: tarfile,
    believing it, reads that same header again forever."""
    data = images["new"].read_bytes()
    with tarfile.open(images["new"]) as tar:
        second = tar.getmembers()[1].offset
    path = tmp_path / "negative.tar"
    path.write_bytes(data[:second] + _negative_size_header("b", -512) + bytes(1024))
    return path


def test_a_member_of_negative_size_in_the_outer_archive_is_refused_by_make_diff_and_apply(
        images, negative_size_archive, example_bundle, keypair, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    before = negative_size_archive.read_bytes()
    commands = {
        "make": ["make", str(images["old"]), str(negative_size_archive), "-o", str(out / "b.dimg"), "--key", keypair[0]],
        "diff": ["diff", str(images["old"]), str(negative_size_archive)],
        "apply": ["apply", example_bundle, "--trust", keypair[1], "--base", str(negative_size_archive), "-o", str(out / "n.tar")],
    }
    for command, args in commands.items():
        outcome = measured(*args, timeout=MINUTE)
        assert outcome.returncode == IMAGE_EXIT, (command, outcome.stderr)
        assert outcome.stderr == (f"deltaimg: error: {negative_size_archive}: not a readable tar archive (member 'b' at offset "
                                  f"{len(before) - 1536} declares -512 bytes, outside the file); the archive is damaged "
                                  "or was not written by a tar tool\n"), command
        assert outcome.peak_rss < BUDGET, f"{command} peaked at {outcome.peak_rss >> 20} MiB"
        assert os.listdir(out) == [], f"{command} left a file behind"
    assert negative_size_archive.read_bytes() == before


# --------------------------------------------------------------------------- numbers int() refuses

HUGE = "9" * 10_000  # int() refuses more than 4,300 digits


def _pax_layer(path: Path, records: dict[str, str], owner: tuple[int, int]) -> f.LayerFile:
    """A layer of one file, its ustar header naming ``owner``, its PAX header ``records`` as given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("srv/data")
        info.size, info.mtime, (info.uid, info.gid) = 5, 1_700_000_000, owner
        info.pax_headers = records
        tar.addfile(info, io.BytesIO(b"hello"))
    path.write_bytes(buffer.getvalue())
    return f.LayerFile(path, f.sha256_file(path), path.stat().st_size)


def test_pax_numbers_that_are_not_ascii_digits_or_too_long_are_read_as_absent(images, keypair, tmp_path):
    """A PAX size of '²' (str.isdigit() says yes, int() says no), a uid of 10,000 digits and a gid
    of '٣' (an Arabic-Indic 3, which int() would take): the ustar fields hold instead, in diff
    and in a bundle that applies byte-exactly."""
    v1 = _pax_layer(tmp_path / "v1.layer", {"comment": "v1"}, (0, 0))
    v2 = _pax_layer(tmp_path / "v2.layer", {"size": "\u00b2", "uid": HUGE, "gid": "\u0663"}, (7, 8))
    base = f.write_docker_archive(tmp_path / "base.tar", [f.ImageSpec([v1], ["odd/app:1"])])[0].path
    target = f.write_docker_archive(tmp_path / "target.tar", [f.ImageSpec([v2], ["odd/app:2"])])[0]
    diff = measured("diff", str(base), str(target.path), "--json", timeout=MINUTE)
    assert diff.returncode == 0, diff.stderr
    assert diff.stderr == "" and diff.peak_rss < BUDGET
    files = json.loads(diff.stdout)["files"]
    assert [(r["path"], r["new_size"], r["changes"]) for r in files["modified"]] == [("/srv/data", 5, ["owner"])], files
    bundle = tmp_path / "b.dimg"
    made = measured("make", str(base), str(target.path), "-o", str(bundle), "--key", keypair[0], "--quiet", timeout=MINUTE)
    assert made.returncode == 0 and made.stderr == "", made.stderr
    out = tmp_path / "rebuilt.tar"
    applied = measured("apply", str(bundle), "--trust", keypair[1], "--base", str(base), "-o", str(out), "--quiet",
                       timeout=MINUTE)
    assert applied.returncode == 0, applied.stderr
    assert_same_image(str(out), target.config_bytes)


def test_package_versions_int_refuses_are_ordered_without_it(keypair, tmp_path):
    """dpkg versions with a '²' epoch, and with 10,000 digits: diff orders them as dpkg does
    (ASCII digits only), no traceback."""
    def image(name: str, versions: list[tuple[str, str]]) -> Path:
        layer = f.write_layer(tmp_path / f"{name}.layer", f.complete_tree([f.dpkg_status(versions)]))
        return f.write_docker_archive(tmp_path / f"{name}.tar", [f.ImageSpec([layer], [f"pkgs/{name}:1"])])[0].path
    base = image("base", [("libc", "1"), ("odd", "\u00b2:1.0"), ("big", "1." + HUGE)])
    target = image("target", [("libc", "1" + HUGE), ("odd", "\u00b2:1.1"), ("big", "1.1" + HUGE)])
    outcome = measured("diff", str(base), str(target), "--json", timeout=MINUTE)
    assert outcome.returncode == 0 and outcome.stderr == "", outcome.stderr
    assert outcome.peak_rss < BUDGET
    changes = {c["name"]: c["change"] for c in json.loads(outcome.stdout)["packages"]}
    assert changes == {"libc": "upgraded", "odd": "upgraded", "big": "upgraded"}


@pytest.mark.parametrize("labels, config", [([1, 2], None), ({"a": 1}, None), (None, "text")])
def test_a_config_whose_labels_or_container_config_is_not_an_object_is_refused(images, keypair, tmp_path, labels, config):
    def edit(tree: Path, entry: dict) -> None:
        path = tree / entry["Config"]
        document = json.loads(path.read_bytes())
        if config is not None:
            document["config"] = config
        else:
            document["config"]["Labels"] = labels
        path.write_text(json.dumps(document))
        entry["Config"] = entry["Config"]  # the archive's own name stays; make reads it by that name
    archive = edited_archive(images, tmp_path, edit)
    what = "config is not a JSON object" if config is not None else "config.Labels is not an object of strings"
    for args in (["diff", str(images["old"]), str(archive)],
                 ["make", str(images["old"]), str(archive), "-o", str(tmp_path / "out.dimg"), "--key", keypair[0]]):
        outcome = measured(*args, timeout=MINUTE)
        assert outcome.returncode == IMAGE_EXIT, outcome.stderr
        assert outcome.stderr.startswith("deltaimg: error: ") and outcome.stderr.count("\n") == 1, outcome.stderr
        assert f"image config's {what}; the image is malformed\n" in outcome.stderr
        assert outcome.peak_rss < BUDGET
    assert not (tmp_path / "out.dimg").exists()


def test_a_dpkg_status_of_a_hundred_thousand_packages_is_read_within_the_caps(tmp_path):
    """Naming each package name:arch only when it is installed twice once counted the whole list per
    package: 100,000 packages took past 120 s."""
    def image(name: str, minor: int) -> Path:
        status = f.dpkg_status([(f"pkg{i}", f"1.{minor}") for i in range(100_000)])
        layer = f.write_layer(tmp_path / f"{name}.layer", f.complete_tree([status]))
        return f.write_docker_archive(tmp_path / f"{name}.tar", [f.ImageSpec([layer], [f"many/{name}:1"])])[0].path
    outcome = measured("diff", str(image("base", 0)), str(image("target", 1)), "--json", timeout=MINUTE)
    assert outcome.returncode == 0 and outcome.stderr == "", outcome.stderr
    assert outcome.peak_rss < BUDGET, f"diff peaked at {outcome.peak_rss >> 20} MiB"
    changes = json.loads(outcome.stdout)["packages"]
    assert len(changes) == 100_000 and {c["change"] for c in changes} == {"upgraded"}


# --------------------------------------------------------------------------- what reaches the terminal


def test_an_error_quoting_a_15_mib_name_is_one_line_of_2000_characters_that_still_says_what_is_wrong(images, tmp_path):
    from tests.memory import measured

    def long_layer_name(tree: Path, entry: dict) -> None:
        entry["Layers"][0] = "A" * (15 << 20)
    result = measured("diff", str(images["old"]), str(edited_archive(images, tmp_path, long_layer_name)))
    assert result.returncode == IMAGE_EXIT
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("A is missing from the archive\n")
    assert len(result.stderr) < 2100 and re.search(r"A \.\.\. \(157\d{5} characters left out\) \.\.\. A", result.stderr)
    assert result.peak_rss < 512 << 20


def test_file_names_with_terminal_escapes_are_shown_escaped_by_diff(images, tmp_path):
    name = "srv/\x1b[2J\x1b[1;32mverified\r"
    layer = f.write_layer(tmp_path / "l.tar", f.complete_tree([f.file("etc/version", b"2\n"), f.file(name, b"x")]))
    new = f.write_docker_archive(tmp_path / "new.tar", [f.ImageSpec([layer], ["hostile/app:2"])])[0].path
    result = run_cli("diff", str(images["old"]), str(new))
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\r" not in result.stdout
    assert "+ /srv/\\x1b[2J\\x1b[1;32mverified\\r" in result.stdout, result.stdout


def test_a_base_layer_that_decompresses_past_the_free_space_blames_the_work_directory(keypair, tmp_path):
    """A gzip layer of 4 MiB of zeros (a few KiB compressed) against a 1 MiB TMPDIR: the error says
    where the space ran out and what to do, not that the output cannot be written."""
    tmpfs = tmp_path / "small-tmp"
    tmpfs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tmpfs)], check=True)
    try:
        big = f.write_layer(tmp_path / "big.layer", f.complete_tree([f.file("var/zeros", bytes(4 << 20))]))
        app1 = f.write_layer(tmp_path / "app1.layer", f.complete_tree([f.file("app", b"1\n")]))
        app2 = f.write_layer(tmp_path / "app2.layer", f.complete_tree([f.file("app", b"2\n")]))
        f.write_oci_dir(tmp_path / "base", [f.ImageSpec([big, app1], ["1"])], compression="gzip")
        target = f.write_docker_archive(tmp_path / "target.tar", [f.ImageSpec([big, app2], ["bomb/app:2"])])[0].path
        bundle = tmp_path / "b.dimg"
        made = run_cli("make", f"oci:{tmp_path / 'base'}", str(target), "-o", str(bundle), "--key", keypair[0])
        assert made.returncode == 0, made.stderr
        out = tmp_path / "out"
        out.mkdir()
        result = run_cli("apply", str(bundle), "--trust", keypair[1], "--base", f"oci:{tmp_path / 'base'}",
                         "-o", str(out / "app.tar"), env={"TMPDIR": str(tmpfs)})
        assert result.returncode == OutputError.exit_code
        assert re.fullmatch(rf"deltaimg: error: cannot decompress base layer 0 into {tmpfs}/deltaimg-apply-\w+: No space "
                            r"left on device; free space there or point TMPDIR at a larger disk, and run again\n",
                            result.stderr), result.stderr
        assert os.listdir(out) == [] and os.listdir(tmpfs) == []
    finally:
        subprocess.run(["umount", str(tmpfs)], check=True)


# --------------------------------------------------------------------------- layers that are not what the config says


def test_diff_refuses_a_layer_that_does_not_hash_to_its_diff_id(images, tmp_path):
    """A layer tar swapped for another valid one: diff would report files the image does not hold."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("srv/planted")
        info.size = 7
        tar.addfile(info, io.BytesIO(b"planted"))
    layers: list[str] = []

    def swap_last_layer(tree: Path, entry: dict) -> None:
        layers.extend(entry["Layers"])
        (tree / entry["Layers"][-1]).write_bytes(buffer.getvalue())
    archive = edited_archive(images, tmp_path, swap_last_layer)
    before = archive.read_bytes()
    with tarfile.open(archive) as tar:
        [entry] = json.loads(tar.extractfile("manifest.json").read())
        diff_id = json.loads(tar.extractfile(entry["Config"]).read())["rootfs"]["diff_ids"][-1]
    outcome = measured("diff", str(images["old"]), str(archive), timeout=MINUTE)
    assert (outcome.returncode, outcome.stdout) == (ImageReadError.exit_code, "")
    assert outcome.stderr == (f"deltaimg: error: {archive}: layer {len(layers) - 1} does not hash to its diff_id "
                              f"{diff_id[:19]}; the image is damaged\n")
    assert outcome.peak_rss < 512 << 20
    assert archive.read_bytes() == before
